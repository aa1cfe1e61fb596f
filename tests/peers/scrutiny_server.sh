#!/usr/bin/env bash
# Start / stop a REAL Scrutiny server (PyPI scrutinydebugger 0.16.0) headless on loopback,
# with its built-in emulated "demo" device (5 vars, 6 aliases, 2 RPVs, datalogger), no hardware.
#
#   scrutiny_server.sh install        # create the venv only; prints the path of its python
#   scrutiny_server.sh start [port]   # default port 8765; prints "READY ..." when usable
#   scrutiny_server.sh stop [port]
#   scrutiny_server.sh status [port]
#
# Env: SCRUTINY_VENV (default: a venv under ~/.cache/katclient-peers), SCRUTINY_RUN_DIR (default: a
#      folder per port under $TMPDIR: pid file, log, isolated XDG_DATA_HOME).
# The venv is created on first use with `pip install --no-deps scrutinydebugger==0.16.0` + appdirs/pyelftools/pyserial
# (PySide6, pylink-square, python-can are NOT needed for the server, SDK or demo device).
# Copied from the project's shared peers folder, plus an 'install' command and no bc.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${SCRUTINY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/katclient-peers/venv-scrutiny}"
CMD="${1:-start}"
PORT="${2:-8765}"
RUN_DIR="${SCRUTINY_RUN_DIR:-${TMPDIR:-/tmp}/scrutiny-peer-$PORT}"
PIDFILE="$RUN_DIR/server.pid"
LOG="$RUN_DIR/server.log"

ensure_venv() {
    if [ ! -x "$VENV/bin/scrutiny" ]; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --no-deps scrutinydebugger==0.16.0
        "$VENV/bin/pip" install -q appdirs==1.4.4 pyelftools==0.33 pyserial==3.5
    fi
}

is_running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "$CMD" in
install)
    ensure_venv
    echo "$VENV/bin/python"
    ;;
start)
    if is_running; then echo "already running (pid $(cat "$PIDFILE"))"; exit 0; fi
    ensure_venv
    mkdir -p "$RUN_DIR/xdg"
    # Isolate the server's SFD + datalogging storage (appdirs user_data_dir honours XDG_DATA_HOME).
    export XDG_DATA_HOME="$RUN_DIR/xdg"
    t0=$(date +%s.%N)
    "$VENV/bin/scrutiny" server --config "$HERE/scrutiny_server.json" --port "$PORT" \
        --loglevel info >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
        sleep 0.05
    done
    t1=$(date +%s.%N)
    "$VENV/bin/python" "$HERE/scrutiny_demo_on.py" 127.0.0.1 "$PORT" 15
    t2=$(date +%s.%N)
    printf 'READY pid=%s port=%s listen=%.2fs demo_ready=%.2fs log=%s\n' \
        "$(cat "$PIDFILE")" "$PORT" "$("$VENV/bin/python" -c "print($t1 - $t0)")" \
        "$("$VENV/bin/python" -c "print($t2 - $t0)")" "$LOG"
    ;;
stop)
    if is_running; then kill -TERM "$(cat "$PIDFILE")"; sleep 0.5; fi
    rm -f "$PIDFILE"
    echo stopped
    ;;
status)
    if is_running; then echo "running (pid $(cat "$PIDFILE"))"; else echo "not running"; exit 1; fi
    ;;
*)
    echo "usage: $0 {start [port]|stop|status}" >&2; exit 2
    ;;
esac
