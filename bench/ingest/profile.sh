#!/usr/bin/env bash
# Where a `b24 serve` request's time goes: one b24 server under wrk, sampled by perf.
#
#   bench/ingest/profile.sh MODE [SECONDS]
#     plain     bench/ingest/b24_handler.lua, a line per request to a file (the default level)
#     quiet     the same with --log-level warn
#     sync      bench/ingest/router.lua under --sync --inbox memory, distinct deliveries
#     durable   bench/ingest/router.lua with --inbox FILE (under build/), distinct deliveries
#
# Prints wrk's figures without perf, then perf record -F 999 -g --call-graph dwarf under the same
# load: the objects, the symbols (self), and the share of samples by area of a request
# (libmicrohttpd, the Lua call, table building, logging, syscalls), from the call chains.
# Environment: PROFILE_WORKERS (2), PROFILE_CONNECTIONS (64), PROFILE_THREADS (2), PROFILE_KEEP=1,
# PROFILE_PERF=0 (wrk alone, no profile).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
mode=${1:?usage: profile.sh plain|quiet|sync|durable [SECONDS]}
secs=${2:-8}
workers=${PROFILE_WORKERS:-2}
conns=${PROFILE_CONNECTIONS:-64}
threads=${PROFILE_THREADS:-2}
body=$here/app-oncrmcontactadd.form
tmp=$(mktemp -d "${TMPDIR:-/tmp}/b24-profile.XXXXXX")
dbdir=""
pid=""

cleanup() {
  [[ -z "$pid" ]] || { kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
  if [[ "${PROFILE_KEEP:-}" == 1 ]]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
  [[ -z "$dbdir" ]] || rm -rf "$dbdir"
}
trap cleanup EXIT

INGEST_TOKEN=$(grep -o 'auth%5Bapplication_token%5D=[^&]*' "$body" | head -1 | cut -d= -f2)
export INGEST_TOKEN INGEST_BODY=$body INGEST_RUN=$$
args=(--workers "$workers")
script=$here/ingest/post.lua
case $mode in
  plain) handler=$here/b24_handler.lua script=$here/post.lua ;;
  quiet) handler=$here/b24_handler.lua script=$here/post.lua args+=(--log-level warn) ;;
  sync) handler=$here/router.lua script=$here/distinct.lua args+=(--sync --inbox memory) ;;
  durable)
    dbdir=$(mktemp -d "$root/build/profile-durable.XXXXXX")
    handler=$here/router.lua script=$here/distinct.lua args+=(--inbox "$dbdir/inbox.sqlite")
    ;;
  *) echo "profile.sh: unknown mode $mode" >&2; exit 2 ;;
esac

# the listening line is at info; under --log-level warn the port is chosen here
port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => {
  console.log(s.address().port); s.close(); })')
"$root/build/b24" serve --listen "127.0.0.1:$port" "${args[@]}" "$handler" 2> "$tmp/b24.log" &
pid=$!
for ((i = 0; i < 100; i++)); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break
  kill -0 "$pid" || { cat "$tmp/b24.log" >&2; exit 1; }
  sleep 0.1
done
url=http://127.0.0.1:$port/

wrk -t"$threads" -c"$conns" -d3s -s "$script" "$url" > /dev/null # warm-up
INGEST_RUN=$(($$ + 1)) wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$script" "$url" > "$tmp/wrk.txt"
echo "== b24 serve ${args[*]} $(basename "$handler"): wrk -t$threads -c$conns -d${secs}s (no perf)"
grep -E 'Requests/sec|^INGEST ' "$tmp/wrk.txt" | sed 's/^/   /'

[[ "${PROFILE_PERF:-1}" == 1 ]] || exit 0
INGEST_RUN=$(($$ + 2)) wrk -t"$threads" -c"$conns" -d"$((secs + 2))s" -s "$script" "$url" > "$tmp/wrk-perf.txt" &
wrk_pid=$!
sleep 1
perf record -q -F 499 --call-graph dwarf,16384 -p "$pid" -o "$tmp/perf.data" -- sleep "$secs" > /dev/null 2>&1
wait "$wrk_pid" || true
echo "== perf record -F 499 --call-graph dwarf -p PID -- sleep $secs (under wrk -t$threads -c$conns)"
echo "-- by object"
perf report -i "$tmp/perf.data" --stdio --no-children --sort dso -g none --percent-limit 0.5 2>/dev/null |
  grep -vE '^#|^$' | head -12
echo "-- by symbol (self)"
perf report -i "$tmp/perf.data" --stdio --no-children --sort dso,symbol -g none --percent-limit 0.7 2>/dev/null |
  grep -vE '^#|^$' | head -40
echo "-- by area (samples whose call chain passes through it; an area's share includes its callees)"
perf script -i "$tmp/perf.data" -F ip,sym,dso 2>/dev/null | lua5.4 "$here/areas.lua"
