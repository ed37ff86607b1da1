#!/usr/bin/env bash
# The Python tools the tests and benchmarks compare annotable with: pyiceberg (reads the
# tables annotable writes, through the same catalog; the ingest baseline), DuckDB (the
# query baseline), psycopg (a PostgreSQL driver, for sql-server's tests) and prometheus-client
# (its OpenMetrics parser reads serve's /metrics in the tests), in their own venv
# under the project's ignored .local/ folder.
#
#   scripts/py-tools.sh install     create/refresh the venv (idempotent, safe in parallel)
#   scripts/py-tools.sh python      print the venv's python (installing first if needed)
#
# ANNOTABLE_PY_TOOLS_DIR overrides where the venv lives (default: <repo>/.local/py-tools).
set -euo pipefail

# Pinned: the figures in the benchmarks' notes are against these versions.
PACKAGES=("pyiceberg[sql-sqlite,pyarrow,pyiceberg-core]==0.12.0" "duckdb==1.5.6" "psycopg[binary]==3.3.9" "prometheus-client==0.23.1")
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${ANNOTABLE_PY_TOOLS_DIR:-$root/.local/py-tools}
venv=$dir/venv
py=$venv/bin/python
stamp=$venv/.annotable-installed
want="${PACKAGES[*]}"

die() { echo "py-tools: $*" >&2; exit 1; }

install() {
    mkdir -p "$dir"
    exec 9>"$dir/.install.lock"
    flock 9
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$py" ]; then
        return 0
    fi
    command -v python3 >/dev/null || die "python3 is required for the interoperability tests and benchmarks"
    echo "py-tools: installing $want into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || die "could not create a venv at $venv (is python3-venv installed?)"
    "$py" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}" \
        || die "pip could not install $want (is PyPI reachable?)"
    echo "$want" > "$stamp"
}

case "${1:-}" in
    install) install ;;
    python) install; echo "$py" ;;
    *) echo "usage: $0 install|python" >&2; exit 2 ;;
esac
