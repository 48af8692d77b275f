#!/usr/bin/env bash
# Runs a command and appends "folder start end user_s sys_s rc command" to $ALMAT_DPGEN_CPU_LOG, so that
# peer_dpgen.py can add up CPU time per DP-GEN iteration and stage (dpdispatcher detaches its jobs, so
# their CPU time never reaches the parent's rusage). Used as a prefix of machine.json's commands.
start=$(date +%s.%N)
"$@"
rc=$?
end=$(date +%s.%N)
if [ -n "${ALMAT_DPGEN_CPU_LOG:-}" ]; then
  tfile=$(mktemp)
  times > "$tfile"  # the builtin, in this shell: line 2 holds the children's user and system time
  child=$(tail -1 "$tfile")
  rm -f "$tfile"
  echo "$PWD $start $end $child $rc $*" >> "$ALMAT_DPGEN_CPU_LOG"
fi
exit $rc
