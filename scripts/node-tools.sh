#!/usr/bin/env bash
# The Node.js client the sql-server tests connect with: node-postgres (`pg`), pinned, under
# the project's ignored .local/ folder.
#
#   scripts/node-tools.sh install     install it (idempotent, safe in parallel)
#   scripts/node-tools.sh dir         print the folder whose node_modules holds it
set -euo pipefail

PACKAGES=("pg@8.23.1")
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${ANNOTABLE_NODE_TOOLS_DIR:-$root/.local/node-tools}
stamp=$dir/.annotable-installed
want="${PACKAGES[*]}"

die() { echo "node-tools: $*" >&2; exit 1; }

install() {
    mkdir -p "$dir"
    exec 9>"$dir/.install.lock"
    flock 9
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$dir/node_modules/pg" ]; then
        return 0
    fi
    command -v npm >/dev/null || die "node and npm are required for the sql-server client tests"
    echo "node-tools: installing $want into $dir" >&2
    rm -rf "$dir/node_modules" "$dir/package.json" "$dir/package-lock.json"
    (cd "$dir" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund "${PACKAGES[@]}") \
        || die "npm could not install $want (is the npm registry reachable?)"
    echo "$want" > "$stamp"
}

case "${1:-}" in
    install) install ;;
    dir) install; echo "$dir" ;;
    *) echo "usage: $0 install|dir" >&2; exit 2 ;;
esac
