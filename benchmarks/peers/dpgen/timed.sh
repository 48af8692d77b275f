#!/usr/bin/env bash
# Runs a command and appends "folder start end user_s sys_s rc command" to $ALMAT_DPGEN_CPU_LOG, so that
# peer_dpgen.py can add up CPU time per DP-GEN iteration and stage (dpdispatcher detaches its jobs, so
# their CPU time never reaches the parent's rusage). Used as a prefix of machine.json's commands.
# bash runs the last command of a chain ("a && b") with exec, and exec keeps the children's CPU time
# accumulated so far: the time already counted when this script starts is subtracted.
seconds() {  # "1m2.5s 0m0.5s" (user, system) -> "62.5 0.5"
  echo "$1 $2" | awk '{n = split($0, f, " "); for (i = 1; i <= n; i++) { split(f[i], p, "m"); sub("s", "", p[2]);
                       printf "%.3f ", p[1] * 60 + p[2] } }'
}
tfile=$(mktemp)
times > "$tfile"  # the builtin, in this shell (not in a $(...) subshell): line 2 holds the children's time
{ read -r _; read -r before_user before_sys; } < "$tfile"  # builtins: nothing spawned before the command
start=$(date +%s.%N)
"$@"
rc=$?
end=$(date +%s.%N)
if [ -n "${ALMAT_DPGEN_CPU_LOG:-}" ]; then
  times > "$tfile"
  { read -r _; read -r after_user after_sys; } < "$tfile"
  own=$(echo "$(seconds "$before_user" "$before_sys") $(seconds "$after_user" "$after_sys")" |
        awk '{printf "0m%.3fs 0m%.3fs", $3 - $1, $4 - $2}')
  echo "$PWD $start $end $own $rc $*" >> "$ALMAT_DPGEN_CPU_LOG"
fi
rm -f "$tfile"
exit $rc
