#!/usr/bin/env bash
# Start a private one-node SLURM cluster (partitions "cpu" and "gpu") for almat's integration tests.
#
#   bash scripts/slurm/start.sh          # installs slurm-wlm + munge if missing (root, Debian), then starts
#   eval "$(bash scripts/slurm/start.sh --env)"   # same, and exports SLURM_CONF for this shell
#   bash scripts/slurm/stop.sh           # stops what this script started (by PID)
#
# Everything lives under a state folder: $ALMAT_SLURM_DIR (default /tmp/almat-slurm): slurm.conf, a
# private munge key and socket, the daemons' pid files, logs, spool and the job-completion log that
# `sacct -c` reads. Idempotent: when the daemons from an earlier call are alive and answer, it only
# checks them. Exits non-zero, with the reason and the tail of the logs, when SLURM cannot start.
#
# Environment:
#   ALMAT_SLURM_DIR        state folder (default /tmp/almat-slurm)
#   ALMAT_SLURM_PORT       slurmctld port (default 6817; slurmd uses the next one)
#   ALMAT_SLURM_NO_INSTALL set to 1 to never call apt-get
#   ALMAT_SLURM_NO_ETC     set to 1 to leave /etc/slurm/slurm.conf alone (clients then need SLURM_CONF)
#
# The client commands (sbatch, squeue, sacct, qlaunch's sbatch) read the config from $SLURM_CONF or
# /etc/slurm/slurm.conf: as root, this script links /etc/slurm/slurm.conf to its config unless that
# file exists and was not written by this script.
set -euo pipefail

STATE="${ALMAT_SLURM_DIR:-/tmp/almat-slurm}"
PORT="${ALMAT_SLURM_PORT:-6817}"
PRINT_ENV=0
[[ "${1:-}" == "--env" ]] && PRINT_ENV=1
MARKER="# written by almat scripts/slurm/start.sh"

say() { echo "[almat-slurm] $*" >&2; }
die() {
    say "ERROR: $*"
    for f in "$STATE"/log/*.log; do
        [[ -s "$f" ]] && { say "--- tail of $f"; tail -n 15 "$f" >&2; }
    done
    exit 1
}

emit_env() {
    if [[ $PRINT_ENV == 1 ]]; then
        echo "export SLURM_CONF=$STATE/etc/slurm.conf"
        echo "export ALMAT_SLURM_DIR=$STATE"
    fi
}

alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---------------------------------------------------------------- install
need_install=0
for exe in slurmctld slurmd sbatch munged; do
    command -v "$exe" >/dev/null 2>&1 || [[ -x "/usr/sbin/$exe" ]] || need_install=1
done
if [[ $need_install == 1 ]]; then
    [[ "${ALMAT_SLURM_NO_INSTALL:-0}" == 1 ]] && die "slurm-wlm/munge are not installed and ALMAT_SLURM_NO_INSTALL=1"
    [[ $(id -u) == 0 ]] || die "slurm-wlm and munge are missing; install them as root (apt-get install slurm-wlm munge)"
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and there is no apt-get here"
    say "installing slurm-wlm and munge with apt-get (non-interactive)"
    t0=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    # keep the packages' maintainer scripts from starting system daemons: we start private ones
    policy_created=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_created=1
    fi
    apt_ok=1
    apt-get update -qq >&2 || apt_ok=0
    if [[ $apt_ok == 1 ]]; then
        apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
            -o Dpkg::Options::=--force-confold slurm-wlm munge >&2 || apt_ok=0
    fi
    [[ $policy_created == 1 ]] && rm -f /usr/sbin/policy-rc.d
    [[ $apt_ok == 1 ]] || die "apt-get could not install slurm-wlm and munge"
    say "installed in $(( $(date +%s) - t0 )) s"
fi
export PATH="$PATH:/usr/sbin:/sbin"
for exe in slurmctld slurmd sbatch munged; do
    command -v "$exe" >/dev/null || die "$exe not found after installation"
done

t_start=$(date +%s.%N)
mkdir -p "$STATE"/{etc,log,run,ctld,spool,munge}
chmod 700 "$STATE/munge"
CONF="$STATE/etc/slurm.conf"
export SLURM_CONF="$CONF"

# ---------------------------------------------------------------- already running?
if alive "$STATE/run/munged.pid" && alive "$STATE/run/slurmctld.pid" && alive "$STATE/run/slurmd.pid"; then
    if timeout 10 sinfo -h >/dev/null 2>&1; then
        say "already running (state in $STATE)"
        emit_env
        exit 0
    fi
    say "daemons alive but not answering; restarting them"
    bash "$(dirname "$0")/stop.sh" >&2 || true
fi

# ---------------------------------------------------------------- munge
KEY="$STATE/munge/munge.key"
SOCK="$STATE/munge/munge.socket"
if [[ ! -s "$KEY" ]]; then
    dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none
    chmod 400 "$KEY"
fi
if ! alive "$STATE/run/munged.pid"; then
    rm -f "$SOCK" "$SOCK.lock"
    munged --force --key-file="$KEY" --socket="$SOCK" --pid-file="$STATE/run/munged.pid" \
        --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed" \
        || die "munged did not start"
fi
for _ in $(seq 50); do [[ -S "$SOCK" ]] && break; sleep 0.1; done
[[ -S "$SOCK" ]] || die "munged socket $SOCK did not appear"

# ---------------------------------------------------------------- slurm.conf
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
cat > "$CONF" <<EOF
$MARKER
ClusterName=almat
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
SchedulerParameters=sched_interval=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST Default=NO MaxTime=INFINITE State=UP
EOF

if [[ $(id -u) == 0 && "${ALMAT_SLURM_NO_ETC:-0}" != 1 ]]; then
    mkdir -p /etc/slurm
    if [[ ! -e /etc/slurm/slurm.conf ]] || grep -q "$MARKER" /etc/slurm/slurm.conf 2>/dev/null \
        || [[ "$(readlink -f /etc/slurm/slurm.conf)" == "$CONF" ]]; then
        ln -sfn "$CONF" /etc/slurm/slurm.conf
    else
        say "/etc/slurm/slurm.conf belongs to another cluster; clients need SLURM_CONF=$CONF"
    fi
fi

# ---------------------------------------------------------------- daemons
if ! alive "$STATE/run/slurmctld.pid"; then
    slurmctld -f "$CONF" || die "slurmctld did not start"
fi
if ! alive "$STATE/run/slurmd.pid"; then
    slurmd -f "$CONF" || die "slurmd did not start"
fi

ok=0
for _ in $(seq 150); do
    state="$(sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle*|mixed*|alloc*) ok=1; break ;;
        down*|drain*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
done
[[ $ok == 1 ]] || die "the node did not come up (state: '${state:-no answer}')"
t_end=$(date +%s.%N)
say "up in $(awk -v a="$t_start" -v b="$t_end" 'BEGIN {printf "%.2f", b - a}') s: node $HOST, partitions cpu and gpu, state in $STATE"
emit_env
