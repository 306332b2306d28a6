#!/bin/sh
# Starts a command with its stderr appended to LOG, and streams LOG on stdout, so a spec can
# wait for log lines with blocking reads instead of sleeps. Prints "pid=N" (the command),
# "tail=N" (the streamer, to stop it), and "b24-exit=N" into LOG when the command exits.
#   run-b24.sh LOG COMMAND [ARGS...]
log=$1
shift
: > "$log"
( "$@" 2>>"$log" </dev/null >/dev/null &
  echo "pid=$!"
  exec >/dev/null # let go of the spec's pipe: it must end when the streamer below does
  wait $!
  echo "b24-exit=$?" >> "$log" ) &
echo "tail=$$"
# bounded, so a spec waiting for a line that never comes fails instead of hanging CI
exec timeout "${B24_SPEC_TIMEOUT:-180}" tail -n +1 -f "$log"
