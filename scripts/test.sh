#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (the pinned AWS emulator
# in .local/), checks formatting and lints, runs every test, and fails if any emulator process
# outlived the tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Reuse one build directory across clones on the same machine (CI builds incrementally); a fresh
# machine simply starts cold.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/annotable/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n==> %s\n' "$*"; }

step "installing the local AWS emulator"
scripts/local-stack.sh install
scripts/py-tools.sh install
scripts/node-tools.sh install

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests; run them first so nextest's summary closes the log.
    cargo test --workspace --locked --doc --quiet
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi

step "no emulator left running"
venv=$(scripts/local-stack.sh python)
if pgrep -f "$venv -m ministack" >/dev/null; then
    pgrep -af "$venv -m ministack" >&2
    echo "an emulator process outlived the tests" >&2
    exit 1
fi
echo "none"
