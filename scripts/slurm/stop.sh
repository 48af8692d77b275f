#!/usr/bin/env bash
# Stop the private SLURM cluster started by scripts/slurm/start.sh: slurmd, slurmctld, munged, each by
# the PID in its pid file under $ALMAT_SLURM_DIR (default /tmp/almat-slurm). Running jobs are killed
# with their slurmd. Pass --purge to also delete the state folder.
set -uo pipefail

STATE="${ALMAT_SLURM_DIR:-/tmp/almat-slurm}"

stop_pid_file() {
    local name=$1 file="$STATE/run/$1.pid" pid
    [[ -s "$file" ]] || return 0
    pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null
        fi
        echo "[almat-slurm] stopped $name ($pid)" >&2
    fi
    rm -f "$file"
}

stop_pid_file slurmd
stop_pid_file slurmctld
stop_pid_file munged

if [[ "${1:-}" == "--purge" ]]; then
    if [[ -L /etc/slurm/slurm.conf && "$(readlink -f /etc/slurm/slurm.conf)" == "$(readlink -f "$STATE")/etc/slurm.conf" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
    rm -rf "$STATE"
    echo "[almat-slurm] removed $STATE" >&2
fi
exit 0
