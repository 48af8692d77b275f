#!/usr/bin/env bash
# Stop the MongoDB stand-in started by scripts/mongo/start.sh, by the PID in its pid file under
# $ALMAT_MONGO_DIR (default <repo>/.mongo). --purge also deletes its data (data.sqlite) and password;
# the venv is kept.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STATE="${ALMAT_MONGO_DIR:-$ROOT/.mongo}"
PIDFILE="$STATE/server.pid"

if [[ -s "$PIDFILE" ]]; then
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        echo "[almat-mongo] stopped the server ($pid)" >&2
    fi
fi
rm -f "$PIDFILE" "$STATE/port" "$STATE/uri"
if [[ "${1:-}" == "--purge" ]]; then
    rm -f "$STATE"/data.sqlite* "$STATE/password"
    echo "[almat-mongo] removed the data in $STATE" >&2
fi
exit 0
