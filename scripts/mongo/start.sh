#!/usr/bin/env bash
# Start a local MongoDB stand-in for almat's tests: mongoeco (Apache-2.0) serving the MongoDB wire
# protocol from a SQLite file, on 127.0.0.1 only.
#
#   export ALMAT_TEST_MONGO_URI="$(bash scripts/mongo/start.sh | tail -n1)"   # the URI is the last line
#   .venv/bin/python -m pytest -m mongo tests
#   bash scripts/mongo/stop.sh            # --purge also deletes the data
#
# mongoeco needs Python >= 3.13: the script takes $ALMAT_MONGO_PYTHON, else the first python3.13+ on
# PATH, else the newest one under pyenv, and makes its own venv with `mongoeco[wire]==4.11.0` under
# the state folder (first run: ~20 s). Everything lives in the state folder, $ALMAT_MONGO_DIR (default
# <repo>/.mongo, git-ignored): venv/, data.sqlite, server.pid, server.log, port, uri, password.
#
# By default the server requires authentication (SCRAM, user `almat`, a random password kept in
# password, chmod 600), as a real deployment does: the URI carries user:password, so the tests also
# check that the password never leaks. ALMAT_MONGO_AUTH=0 serves without users. ALMAT_MONGO_PORT picks
# the port (default: a free one chosen by the OS; give the old one to start a stopped server again on the
# same URI: its data and password stay in the state folder). ALMAT_MONGO_VENV: the venv to use (default
# <state>/venv), e.g. to share one venv between several state folders (its creation is locked).
# Idempotent: while the server from an earlier call is alive and answers a ping, it prints the same URI.
# Exits non-zero, with the reason and the tail of the log, when the server cannot start.
#
# It is a stand-in, not MongoDB: it rejects the lowercase `buildinfo` command, so
# `MongoClient.server_info()` and maggma's `JointStore` fail against it. The same tests run unchanged
# against a real MongoDB: set ALMAT_TEST_MONGO_URI to it instead.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STATE="${ALMAT_MONGO_DIR:-$ROOT/.mongo}"
SPEC="mongoeco[wire]==4.11.0"
VENV="${ALMAT_MONGO_VENV:-$STATE/venv}"
VPY="$VENV/bin/python"
LOG="$STATE/server.log"
AUTH="${ALMAT_MONGO_AUTH:-1}"

say() { echo "[almat-mongo] $*" >&2; }
die() {
    say "ERROR: $*"
    [[ -s "$LOG" ]] && { say "--- tail of $LOG"; tail -n 20 "$LOG" >&2; }
    exit 1
}
alive() { [[ -s "$STATE/server.pid" ]] && kill -0 "$(cat "$STATE/server.pid")" 2>/dev/null; }
# the URI goes through the environment, never on a command line (it holds the password)
answers() {
    MONGO_URI="$1" timeout 20 "$VPY" -c 'import os, pymongo
c = pymongo.MongoClient(os.environ["MONGO_URI"], serverSelectionTimeoutMS=2000)
c.admin.command("ping"); c.close()' >/dev/null 2>&1
}
is_py313() { [[ -n "$1" ]] && "$1" -c 'import sys; sys.exit(sys.version_info < (3, 13))' >/dev/null 2>&1; }
find_python() {
    local c root
    for c in "${ALMAT_MONGO_PYTHON:-}" python3.14 python3.13 python3; do
        c="$(command -v "$c" 2>/dev/null || true)"
        is_py313 "$c" && { echo "$c"; return; }
    done
    root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
    for c in $(ls -d "$root"/versions/*/bin/python3 2>/dev/null | sort -rV); do
        is_py313 "$c" && { echo "$c"; return; }
    done
    return 1
}

mkdir -p "$STATE"
chmod 700 "$STATE"
exec 9>"$STATE/start.lock"
flock -w 600 9 || die "another start.sh holds $STATE/start.lock"

# ---------------------------------------------------------------- already running?
if alive && [[ -s "$STATE/uri" ]] && answers "$(cat "$STATE/uri")"; then
    say "already running (pid $(cat "$STATE/server.pid"), state in $STATE)"
    cat "$STATE/uri"
    exit 0
fi
if alive; then
    say "server alive but not answering; restarting it"
    bash "$(dirname "$0")/stop.sh" >&2
fi
rm -f "$STATE/server.pid" "$STATE/port" "$STATE/uri"

# ---------------------------------------------------------------- venv with mongoeco
t0=$(date +%s.%N)
STAMP="$VENV/.installed-$SPEC"
mkdir -p "$(dirname "$VENV")"
exec 8>"$VENV.lock"
flock -w 600 8 || die "another start.sh holds $VENV.lock"
if [[ ! -e "$STAMP" ]]; then
    PY="$(find_python)" || die "mongoeco needs Python >= 3.13 and none was found (tried \$ALMAT_MONGO_PYTHON, \
python3.14/python3.13/python3 on PATH and pyenv's versions); install one, e.g. 'pyenv install 3.13', \
or point ALMAT_MONGO_PYTHON at it"
    say "creating $VENV with $PY ($("$PY" -V 2>&1)) and installing $SPEC"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || die "could not create the venv $VENV"
    "$VPY" -m pip install -q --disable-pip-version-check "$SPEC" >>"$STATE/pip.log" 2>&1 \
        || { LOG="$STATE/pip.log"; die "pip could not install $SPEC"; }
    touch "$STAMP"
    say "venv ready in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s"
fi
exec 8>&-

# ---------------------------------------------------------------- server
args=(--db "$STATE/data.sqlite" --port "${ALMAT_MONGO_PORT:-0}" --port-file "$STATE/port")
if [[ "$AUTH" != 0 ]]; then
    if [[ ! -s "$STATE/password" ]]; then
        (umask 077; "$VPY" -c 'import secrets; print(secrets.token_hex(12))' > "$STATE/password")
    fi
    args+=(--user almat --password-file "$STATE/password")
fi
t1=$(date +%s.%N)
echo "--- $(date -Is) start.sh" >>"$LOG"
setsid nohup "$VPY" "$ROOT/scripts/mongo/server.py" "${args[@]}" >>"$LOG" 2>&1 </dev/null 9>&- 8>&- &
echo $! > "$STATE/server.pid"

for _ in $(seq 300); do
    alive || die "the server exited"
    [[ -s "$STATE/port" ]] && break
    sleep 0.1
done
[[ -s "$STATE/port" ]] || die "the server did not bind a port within 30 s"
PORT="$(cat "$STATE/port")"
if [[ "$AUTH" != 0 ]]; then
    URI="mongodb://almat:$(cat "$STATE/password")@127.0.0.1:$PORT/?authSource=admin"
else
    URI="mongodb://127.0.0.1:$PORT/"
fi
ok=0
for _ in $(seq 30); do
    alive || die "the server exited"
    answers "$URI" && { ok=1; break; }
    sleep 0.5
done
[[ $ok == 1 ]] || die "the server on 127.0.0.1:$PORT does not answer a ping"
(umask 077; echo "$URI" > "$STATE/uri")
say "up in $(awk -v a="$t1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s on 127.0.0.1:$PORT \
(pid $(cat "$STATE/server.pid"), $([[ "$AUTH" != 0 ]] && echo "user almat" || echo "no auth"), log $LOG)"
echo "$URI"
