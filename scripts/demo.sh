#!/usr/bin/env bash
# The main job end to end on the embedded defaults, in one command: a local AWS emulator, a
# bucket and a queue, `annotable setup notifications`, some annotation writes, `annotable serve`
# until the queue drains, a few `annotable query` results, and clean-up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/annotable/target}
scripts/local-stack.sh install
echo "building annotable (a first build takes ~10 minutes)..." >&2
cargo build --quiet --locked -p annotable --bin annotable -p annotable-demo --bin annotable-demo
ANNOTABLE_BIN="$CARGO_TARGET_DIR/debug/annotable" exec "$CARGO_TARGET_DIR/debug/annotable-demo"
