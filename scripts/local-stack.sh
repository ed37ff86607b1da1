#!/usr/bin/env bash
# The local AWS stand-in: ministack (a third-party AWS emulator from PyPI) in its own venv under
# the project's ignored .local/ folder, always bound to 127.0.0.1.
#
#   scripts/local-stack.sh install        create/refresh the venv (idempotent, safe in parallel)
#   scripts/local-stack.sh python         print the venv's python (installing first if needed)
#   scripts/local-stack.sh start          start one emulator on a free port; prints its endpoint
#   scripts/local-stack.sh stop           stop the emulator that `start` started (by PID)
#   scripts/local-stack.sh status         print the endpoint if it is running
#
# ANNOTABLE_STACK_DIR overrides where the venv and state live (default: <repo>/.local/stack).
# Rust tests do not use start/stop: the `local-stack` crate starts one emulator per test itself.
set -euo pipefail

MINISTACK_VERSION=1.5.33
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
stack_dir=${ANNOTABLE_STACK_DIR:-$root/.local/stack}
venv=$stack_dir/venv
py=$venv/bin/python
stamp=$venv/.annotable-installed

die() { echo "local-stack: $*" >&2; exit 1; }

install() {
    mkdir -p "$stack_dir"
    # Several test binaries may ask at once: one installs, the others wait for it.
    exec 9>"$stack_dir/.install.lock"
    flock 9
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "ministack==$MINISTACK_VERSION" ] && [ -x "$py" ]; then
        return 0
    fi
    command -v python3 >/dev/null || die "python3 is required to run the AWS emulator (ministack)"
    echo "local-stack: installing ministack==$MINISTACK_VERSION into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || die "could not create a venv at $venv (is python3-venv installed?)"
    "$py" -m pip install --quiet --disable-pip-version-check "ministack==$MINISTACK_VERSION" \
        || die "pip could not install ministack==$MINISTACK_VERSION (is PyPI reachable?)"
    echo "ministack==$MINISTACK_VERSION" > "$stamp"
}

free_port() {
    "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    install
    if status >/dev/null 2>&1; then status; return 0; fi
    local port log
    port=$(free_port)
    log=$stack_dir/ministack.log
    BIND_HOST=127.0.0.1 GATEWAY_PORT=$port LOG_LEVEL=${LOG_LEVEL:-WARNING} TMPDIR=$stack_dir \
        nohup "$py" -m ministack >"$log" 2>&1 &
    echo $! > "$stack_dir/ministack.pid"
    echo "$port" > "$stack_dir/ministack.port"
    for _ in $(seq 1 200); do
        if "$py" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/_ministack/health', timeout=1)" 2>/dev/null; then
            echo "http://127.0.0.1:$port"
            return 0
        fi
        kill -0 "$(cat "$stack_dir/ministack.pid")" 2>/dev/null || { tail -20 "$log" >&2; die "ministack exited during start-up"; }
        sleep 0.05
    done
    stop
    die "ministack did not answer on 127.0.0.1:$port within 10 s (log: $log)"
}

status() {
    local pid
    [ -f "$stack_dir/ministack.pid" ] || return 1
    pid=$(cat "$stack_dir/ministack.pid")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "http://127.0.0.1:$(cat "$stack_dir/ministack.port")"
}

stop() {
    [ -f "$stack_dir/ministack.pid" ] || return 0
    local pid
    pid=$(cat "$stack_dir/ministack.pid")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$stack_dir/ministack.pid" "$stack_dir/ministack.port"
}

case "${1:-}" in
    install) install ;;
    python) install; echo "$py" ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
