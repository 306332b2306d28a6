#!/usr/bin/env bash
# What one hostile body costs `b24 serve` in memory: the server's peak RSS (VmHWM) before and
# after ONE request, for bodies of several shapes and sizes up to the default --max-body, with no
# token and with the valid one. Target (issue 12, item 2): at most 16× the body in extra memory,
# plus a fixed allowance of 320 KiB that does not grow with the body. From 64 KiB up no row needs
# the allowance (each is within 16× alone). Below, the fixed part dominates: an accepted delivery
# is decoded on two threads (the request's, to verify and key it; a handler thread's, to run it),
# glibc gives each thread its own malloc arena, and SQLite's page cache grows by pages; an 8 KiB
# JSON body of ~900 short keys (the most the router's 1,000 pairs allow) costs about 280 KiB
# (35×) on the durable path, 130 KiB (16×) under --sync.
#
#   bench/body_memory.sh        (exit status 1 when a row misses the target)
#
# It builds (make -s all), then for each mode (--sync or the durable inbox, default file, in a
# temp dir; --workers 1 or the default) and each body starts a fresh `build/b24 serve` on
# 127.0.0.1 with bench/body_memory/router.lua (a router with a token and one handler that does
# nothing), warms every worker with small valid deliveries, resets the peak
# (echo 5 > /proc/PID/clear_refs; where that is refused the peak after the warm-up is the
# baseline), sends the body with curl and reads VmHWM once the answer is in (on the durable path,
# once the handler run of an accepted delivery is counted too). Extra = VmHWM after − VmRSS
# before. Bodies are made by bench/body_memory/bodies.lua; see there for each shape.
#
# The server runs under an address-space cap (ulimit -v, BODY_MEMORY_CAP_MB, 4096), so a shape
# that would take gigabytes fails there, inside the server, and not on the machine running the
# bench; such a row shows a peak near the cap and status 500 (or "died").
#
# Environment: BODY_MEMORY_SIZES (bytes, "8192 65536 98304 262144 1048576": at 8 KiB a body of
# distinct keys is still under the router's 1,000 pairs, so it is accepted), BODY_MEMORY_MODES
# ("sync:1 sync:default durable:1 durable:default"), BODY_MEMORY_CAP_MB (4096),
# BODY_MEMORY_TIMEOUT (seconds per request, 120), BODY_MEMORY_SHAPES (a grep -E pattern on the
# shape names; all by default).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

max_body=1048576 # b24 serve's default --max-body (b24/src/b24_serve_options.c)
target=16
sizes=${BODY_MEMORY_SIZES:-"8192 65536 98304 262144 1048576"}
allowance_kb=320
modes=${BODY_MEMORY_MODES:-"sync:1 sync:default durable:1 durable:default"}
cap_mb=${BODY_MEMORY_CAP_MB:-4096}
timeout=${BODY_MEMORY_TIMEOUT:-120}
shapes=${BODY_MEMORY_SHAPES:-.}
token=bench0body0memory0token000000000

for tool in curl lua5.4 make; do
  command -v "$tool" >/dev/null || { echo "body_memory.sh: $tool is not installed" >&2; exit 1; }
done
make -s all
b24=$root/build/b24

tmp=$(mktemp -d)
pid=""
port=""

stop_server() {
  if [[ -n $pid ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
  fi
}
cleanup() { stop_server; [[ -n ${BODY_MEMORY_KEEP:-} ]] && { cp "$tmp/run/server.log" "$BODY_MEMORY_KEEP" || true; }; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server sync|durable 1|default: a fresh server (and inbox) in $tmp/run; sets pid and port
start_server() {
  local args=(--listen 127.0.0.1:0 --log-level info)
  [[ $1 == sync ]] && args+=(--sync)
  [[ $2 != default ]] && args+=(--workers "$2")
  rm -rf "$tmp/run"
  mkdir "$tmp/run"
  (
    cd "$tmp/run" # the durable default inbox (b24-inbox.sqlite) lands here
    ulimit -v $((cap_mb * 1024))
    exec env BODY_MEMORY_TOKEN="$token" "$b24" serve "${args[@]}" "$here/body_memory/router.lua"
  ) > "$tmp/run/server.log" 2>&1 &
  pid=$!
  local i
  port=""
  for ((i = 0; i < 200; i++)); do
    port=$(sed -n 's/.*msg=listening address=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/run/server.log" 2>/dev/null || true)
    [[ -n $port ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if [[ -z $port ]]; then
    echo "body_memory.sh: the server did not start:" >&2
    cat "$tmp/run/server.log" >&2
    exit 1
  fi
}

status_kb() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null; }

# true when every stored delivery has had its handler run (durable path), from /metrics
settled() {
  curl -s --max-time 10 "http://127.0.0.1:$port/metrics" | awk '
    /^b24_deliveries_total\{result="stored"\}/ { stored = $2 }
    /^b24_handler_runs_total/ { runs += $2 }
    /^b24_inbox_depth/ { depth = $2 }
    END { exit !(stored == runs && depth == 0) }'
}

# waits (at most 30 s) until the inbox has settled
wait_settled() {
  local i
  for ((i = 0; i < 600; i++)); do
    settled && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

send() { # content type, file → "status seconds"; curl's complaint in $tmp/curl.err
  curl -sS -o /dev/null -w '%{http_code} %{time_total}' --max-time "$timeout" -H "Expect:" \
    -H "Content-Type: $1" --data-binary @"$2" "http://127.0.0.1:$port/" 2> "$tmp/curl.err" || true
}

# every worker thread builds its Lua state and runs a delivery before the measure
warm_up() { # mode, workers
  local n=$2 i round
  [[ $n == default ]] && n=$(nproc)
  printf 'event=ONCRMLEADADD&data%%5BFIELDS%%5D%%5BID%%5D=1&auth%%5Bapplication_token%%5D=%s' "$token" \
    > "$tmp/warm.form"
  printf '{"event":"ONCRMLEADADD","data":{"FIELDS":{"ID":"2"}},"auth":{"application_token":"%s"}}' \
    "$token" > "$tmp/warm.json"
  for round in 1 2 3; do
    for ((i = 0; i < n; i++)); do
      # distinct bodies: no delivery is a duplicate of another
      sed "s/ID%5D=1/ID%5D=1$round$i/" "$tmp/warm.form" > "$tmp/warm.$i.form"
      sed "s/\"2\"/\"2$round$i\"/" "$tmp/warm.json" > "$tmp/warm.$i.json"
      send application/x-www-form-urlencoded "$tmp/warm.$i.form" > /dev/null &
      send application/json "$tmp/warm.$i.json" > /dev/null &
    done
    wait_children
  done
  if [[ $1 == durable ]]; then wait_settled || true; fi
}

# waits for the background curls (not the server)
wait_children() {
  local job
  for job in $(jobs -p); do [[ $job == "$pid" ]] || wait "$job" || true; done
}

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "(not a git checkout)")
dirty=$({ git -C "$root" status --porcelain -- lua csrc b24/src emulator/src 2>/dev/null || true; } | awk '{ print $2 }' | tr '\n' ' ')
echo "body_memory: commit $commit${dirty:+ (worktree changes in: $dirty)}; $(uname -sr); cap ${cap_mb} MB"
read -ra size_list <<< "$sizes"
lua5.4 "$here/body_memory/bodies.lua" "$tmp" "$token" "$max_body" "${size_list[@]}" > "$tmp/bodies"
reset_ok=1

printf '%-16s %-13s %-5s %9s %11s %8s %6s %8s  %s\n' mode shape auth bytes "extra KiB" ratio status "time s" \
  "≤ ${target}× body + ${allowance_kb} KiB"
failures=0 rows=0
for mode_spec in $modes; do
  mode=${mode_spec%%:*} workers=${mode_spec#*:}
  while IFS=$'\t' read -r name content_type auth bytes file; do
    [[ $name =~ $shapes ]] || continue
    start_server "$mode" "$workers"
    warm_up "$mode" "$workers"
    if ! { echo 5 > "/proc/$pid/clear_refs"; } 2>/dev/null; then reset_ok=0; fi
    if [[ $reset_ok == 1 ]]; then before=$(status_kb VmRSS); else before=$(status_kb VmHWM); fi
    answer=$(send "$content_type" "$file")
    status=${answer% *} seconds=${answer#* }
    if [[ $mode == durable && $status == 200 ]]; then wait_settled || true; fi
    after=$(status_kb VmHWM)
    if ! kill -0 "$pid" 2>/dev/null || [[ -z $after ]]; then
      status=died after=$before
    fi
    extra=$((after > before ? after - before : 0)) # kB
    verdict=$(awk -v e="$extra" -v b="$bytes" -v t="$target" -v a="$allowance_kb" \
      'BEGIN { print (e * 1024 <= t * b + a * 1024) ? "PASS" : "FAIL" }')
    if ! [[ $status =~ ^[1-5][0-9][0-9]$ ]]; then
      verdict="FAIL (no answer: $(tr -d '\n' < "$tmp/curl.err"))"
    fi
    [[ $verdict == PASS ]] || failures=$((failures + 1))
    rows=$((rows + 1))
    awk -v m="$mode:$workers" -v s="$name" -v a="$auth" -v b="$bytes" -v e="$extra" -v st="$status" \
      -v t="$seconds" -v v="$verdict" 'BEGIN {
        printf "%-16s %-13s %-5s %9d %11d %8.1f %6s %8.3f  %s\n", m, s, a, b, e, e * 1024 / b, st, t, v }'
    stop_server
  done < "$tmp/bodies"
done
[[ $reset_ok == 1 ]] || echo "note: /proc/PID/clear_refs was refused: the baseline is the peak after the warm-up"
echo "$failures of $rows rows over ${target}× the body + ${allowance_kb} KiB"
[[ $failures -eq 0 ]]
