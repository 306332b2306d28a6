#!/usr/bin/env bash
# Ingest benchmark: `b24 serve` against its peers on one real Bitrix24 event delivery, and b24's
# durable inbox against handling inside the request.
#
#   bench/ingest.sh                  all of it, in one run
#   bench/ingest.sh --durable-only   only the durable mode (also INGEST_DURABLE_ONLY=1); for a quick
#                                    figure: INGEST_ROUNDS=1 INGEST_DURATION=5s bench/ingest.sh --durable-only
#   bench/ingest.sh --fleet-only     only the fleet mode (also INGEST_FLEET_ONLY=1)
#   INGEST_UPDATE=1 bench/ingest.sh  the event sent as ONCRMCONTACTUPDATE (an update's key merges
#                                    while pending, so on PostgreSQL it runs on the host that took
#                                    it in only when a handler thread is idle: the claim path)
#
# Every server decodes the same form-encoded event (bench/ingest/app-oncrmcontactadd.form, a copy
# of ../shared/vectors/events/) and checks auth.application_token: 200 {"success":true}, 401 on a
# wrong token. Each is checked for both answers before it is measured, so none does less work.
#   b24 serve       bitrix24.core.form_decode + core.equal, --workers N threads
#   Express         express.urlencoded({extended:true}) + express.json(), crypto.timingSafeEqual;
#                   one node process, as Express is run by its users
#   nginx + ngx_lua ngx.req.read_body + ngx.req.get_post_args, worker_processes N
#   nginx static    return 200 '{"success":true}', worker_processes N
# wrk drives each with the same parameters: a warm-up run each, then rounds over all servers
# (the table shows medians; the machine is shared, so each run also reports the CPUs used by the
# server, by wrk, and by the rest). Headline rows use each server's default logging (b24: one line
# per request to a file; nginx: its access log to a file; Express logs nothing by default); a
# second group has b24 --log-level warn and nginx access_log off. Targets: b24 >= 10x Express,
# >= 1.0x nginx + ngx_lua, >= 0.5x static nginx, in requests/s, and a p99 within 1.2x of nginx +
# ngx_lua's (logs on, and off). When one is missed (or with
# INGEST_PERF=1), a perf profile of b24 follows. Then b24's memory: VmRSS idle after start (target
# <= 20 MB), and after >= 1,000,000 requests.
#
# The durable mode: bench/ingest/router.lua, a bitrix24.router{ token = the event's token } with a
# no-op handler for "*", under two b24 servers with default logging and --workers N:
#   durable   b24 serve --inbox FILE: each delivery is verified (router:accept), committed to the
#             SQLite inbox (WAL, synchronous=FULL, group commit) and only then answered 200; the
#             handler threads (INGEST_HANDLER_THREADS, else b24's default) dispatch it afterwards;
#   sync      b24 serve --sync --inbox memory: router:handle runs the handler inside the request,
#             with its in-memory deduplication (one per server thread).
# wrk sends bench/ingest/distinct.lua: the same event, each request with its own data[FIELDS][ID]
# (the dedup key of an ADD event is portal|NAME|ID), so every request is a new delivery to store or
# to handle. The warm-ups read every answer (none may be a duplicate); every durable run is checked
# against b24_deliveries_total{result="stored"} and followed by a bounded wait for b24_inbox_depth
# to come back to 0 (INGEST_DRAIN_TIMEOUT) before anything else runs, reported with its time (with
# few handler threads that takes minutes: 500-1,100 handled/s seen with 2 on a 2-CPU VM, against
# 10,000+ stored/s; INGEST_HANDLER_THREADS=64 drains as fast as it stores). The
# inbox file is in a fresh directory under build/ (INGEST_DB_DIR), on the repository's disk; its
# filesystem is printed. fdatasync calls are counted with perf's syscall tracepoints when perf
# works. Target: durable >= 0.8x sync in requests/s. When it is missed (or with INGEST_PERF=1), a
# perf profile of the durable server and an strace count of its fsyncs under the same load follow.
# In a whole run the router is also measured as users run it: --sync with --log-level warn too,
# and the same script under nginx + ngx_lua (bench/ingest/nginx_router.conf.in, router:handle_ngx,
# worker_processes N, access log to a file and off). Targets: --sync >= 1.0x the router under
# nginx (logs on, and off), >= 0.7x the plain handler's requests/s, and a p99 no worse than the
# durable path's.
# Then the burst (bench/ingest/burst.js): INGEST_BURST_TOTAL (10000) distinct deliveries over
# INGEST_BURST_CONNECTIONS (256) connections from 127.0.0.1, all at once, to the durable server
# with its default limits: every one must be answered 200 (else the run fails); its ack p99, and
# the rate its handler threads ran them at (target >= 0.5x the accept rate).
# The medians are also drawn, requests/s and p99 per server, as an SVG next to the table:
# INGEST_PLOT (build/ingest.svg).
#
# The fleet mode (bench/ingest/fleet.sh, after the durable mode in a whole run): the same durable
# ingest on one b24 serve host on SQLite, one host on PostgreSQL and two hosts on one PostgreSQL
# database, in one run, round after round. Both really durable and on the repository's disk: the
# SQLite file (synchronous=FULL) and the PostgreSQL server's data (started for the run by initdb
# under INGEST_DB_DIR, fsync = on, synchronous_commit = on; as the postgres user when run as root)
# under build/; the settings, read back, and the filesystems are printed. Two hosts get two wrk
# processes at once, one per host, with half the connections each (a balancer's spread). Target:
# two hosts on PostgreSQL >= 0.5x one host on SQLite, in requests/s (the ratio line says it).
#
# Environment: INGEST_WORKERS (2) INGEST_THREADS (wrk -t, 2) INGEST_CONNECTIONS (wrk -c, 64)
# INGEST_DURATION (10s) INGEST_WARMUP (3s) INGEST_ROUNDS (3) INGEST_TOTAL (1000000)
# INGEST_HANDLER_THREADS (b24's default: one per CPU) INGEST_DRAIN_TIMEOUT (900 seconds)
# INGEST_DB_DIR (build/) INGEST_DURABLE_ONLY=1 INGEST_FLEET_ONLY=1 INGEST_PG_BIN (/usr/lib/postgresql/15/bin)
# INGEST_PG_SQL (SQL run on the fleet's database once the hosts made the schema: to try an index)
# INGEST_PERF=1 (always profile b24) INGEST_KEEP=1 (keep the temp dirs with logs, wrk reports, inbox).
# INGEST_FLEET=0 (a whole run without the fleet mode, for a quicker look).
# Servers listen on 127.0.0.1 only, on ports free at run time; all are stopped on exit.
# Exits non-zero when a server gives a wrong answer, wrk sees errors, a durable run stores fewer
# deliveries than it acknowledged or a duplicate, or the inbox does not drain in time; a missed
# target is reported in the table, not in the exit status.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

WORKERS=${INGEST_WORKERS:-2}
THREADS=${INGEST_THREADS:-2}
CONNS=${INGEST_CONNECTIONS:-64}
DURATION=${INGEST_DURATION:-10s}
WARMUP=${INGEST_WARMUP:-3s}
ROUNDS=${INGEST_ROUNDS:-3}
TOTAL=${INGEST_TOTAL:-1000000}
HANDLER_THREADS=${INGEST_HANDLER_THREADS:-}
DRAIN_TIMEOUT=${INGEST_DRAIN_TIMEOUT:-900}
DB_DIR=${INGEST_DB_DIR:-$root/build}
DURABLE_ONLY=${INGEST_DURABLE_ONLY:-0}
FLEET_ONLY=${INGEST_FLEET_ONLY:-0}
BODY=$here/ingest/app-oncrmcontactadd.form
if [[ -n "${INGEST_UPDATE:-}" && "$INGEST_UPDATE" != 0 ]]; then # the same event as an update
  mkdir -p "$root/build"
  sed 's/^event=ONCRMCONTACTADD&/event=ONCRMCONTACTUPDATE\&/' "$BODY" > "$root/build/ingest-update.form"
  BODY=$root/build/ingest-update.form
fi
FORM=application/x-www-form-urlencoded

say() { printf '%s\n' "$*"; }
die() { printf 'ingest.sh: %s\n' "$*" >&2; exit 1; }

for arg; do
  case $arg in
    --durable-only) DURABLE_ONLY=1 ;;
    --fleet-only) FLEET_ONLY=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$arg' (--durable-only, --fleet-only or nothing expected)" ;;
  esac
done
[[ "$DURABLE_ONLY" == 0 || "$DURABLE_ONLY" == 1 ]] || die "INGEST_DURABLE_ONLY is 0 or 1"
[[ "$FLEET_ONLY" == 0 || "$FLEET_ONLY" == 1 ]] || die "INGEST_FLEET_ONLY is 0 or 1"
[[ "$DURABLE_ONLY$FLEET_ONLY" != 11 ]] || die "--durable-only and --fleet-only exclude each other"
[[ -z "$HANDLER_THREADS" || "$HANDLER_THREADS" =~ ^[1-9][0-9]*$ ]] || die "INGEST_HANDLER_THREADS is a number"
[[ "$DRAIN_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "INGEST_DRAIN_TIMEOUT is a number of seconds"

# ---- dependencies: Debian packages (only the missing ones), the build, Express -------------------

if [[ $DURABLE_ONLY == 1 ]]; then
  need_debs=(wrk curl)
elif [[ $FLEET_ONLY == 1 ]]; then
  need_debs=(wrk curl postgresql sqlite3 lua-socket)
else
  need_debs=(wrk nginx libnginx-mod-http-lua nodejs npm curl postgresql sqlite3 lua-socket)
fi
missing=()
for p in "${need_debs[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] && continue
  # NodeSource's nodejs package ships npm itself and conflicts with Debian's npm.
  [[ "$p" == npm ]] && command -v npm >/dev/null && continue
  missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

make -s all

if [[ $DURABLE_ONLY == 0 && $FLEET_ONLY == 0 ]]; then
  express_pin=$(node -p 'require(process.argv[1]).dependencies.express' "$root/bench/package.json")
  express_have=$(node -p 'try { require(process.argv[1]).version } catch (e) { "" }' \
    "$root/bench/node_modules/express/package.json" 2>/dev/null || true)
  if [[ "$express_have" != "$express_pin" ]]; then
    echo "installing express $express_pin into bench/node_modules" >&2
    npm ci --prefix "$root/bench" --no-audit --no-fund --loglevel=error >&2
  fi
fi

# ---- temp dir, processes, cleanup ---------------------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/b24-ingest.XXXXXX")
chmod 755 "$tmp" # nginx workers (nobody, when started as root) read the Lua handler from here
pids=()
dbdir="" # the durable inbox's directory, made when the durable mode starts

stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# shellcheck source=bench/ingest/fleet.sh
source "$here/ingest/fleet.sh"

cleanup() {
  local pid
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  fleet_cleanup
  if [[ "${INGEST_KEEP:-}" == 1 ]]; then
    echo "kept $tmp${dbdir:+ and $dbdir}" >&2
  else
    rm -rf "$tmp"
    [[ -z "$dbdir" ]] || rm -rf "$dbdir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for FILE REGEX PID: until a line matching REGEX is in FILE (10 s), while PID lives.
wait_for() {
  local i
  for ((i = 0; i < 100; i++)); do
    grep -qE "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { cat "$1" >&2; die "process $3 exited before: $2"; }
    sleep 0.1
  done
  cat "$1" >&2
  die "timed out waiting for: $2 in $1"
}

# A free TCP port on 127.0.0.1, not one of the ports already taken by this run.
taken=" "
free_port() {
  local p
  while :; do
    p=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => {
      console.log(s.address().port); s.close(); })')
    [[ "$taken" == *" $p "* ]] || break
  done
  taken+="$p "
  port=$p
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }

# ---- the event, its token, a wrong one ----------------------------------------------------------

token=$(grep -o 'auth%5Bapplication_token%5D=[^&]*' "$BODY" | head -1 | cut -d= -f2)
[[ -n "$token" ]] || die "no auth[application_token] in $BODY"
export INGEST_TOKEN=$token
wrong_token="x${token:1}"
sed "s/auth%5Bapplication_token%5D=[^&]*/auth%5Bapplication_token%5D=$wrong_token/" "$BODY" \
  > "$tmp/wrong.form"
no_auth_re='s/&auth%5Bapplication_token%5D=[^&]*//'
sed "$no_auth_re" "$BODY" > "$tmp/noauth.form"
export INGEST_BODY=$BODY

# ---- measuring: helpers ------------------------------------------------------------------------

TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
declare -A URL DESC SPIDS SCRIPT RPS P50 P99 CPU EFF MED EMED P99MED
REST=""
wrk_runs=0

# CPU ticks (user + system) of processes, all their threads; of one thread; of this shell's
# waited-for children (wrk); busy and total ticks of the machine.
proc_ticks() { local p s=0; for p; do s=$((s + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }'))); done; echo "$s"; }
task_ticks() { sed 's/.*) //' "$1/stat" | awk '{ print $12, $13 }'; }
child_ticks() { sed 's/.*) //' "/proc/$$/stat" | awk '{ print $14 + $15 }'; }
machine_ticks() { awk '/^cpu / { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<< "$2"; }
now() { date +%s.%N; }

# run_wrk KEY DURATION OUT [wrk options]: wrk with KEY's script (bench/ingest/post.lua unless
# SCRIPT[KEY]). INGEST_RUN numbers the runs, so that distinct.lua never repeats an ID within this
# run: call fresh_run before each, in this shell (not in a subshell that forgets the count). wrk waits
# 10 s for an answer (its default, 2 s, counted Express's slowest answers as errors on a busy machine).
fresh_run() { wrk_runs=$((wrk_runs + 1)); }
run_wrk() {
  local key=$1 d=$2 out=$3
  shift 3
  INGEST_RUN=$wrk_runs wrk -t"$THREADS" -c"$CONNS" -d"$d" --timeout 10s "$@" \
    -s "${SCRIPT[$key]:-$here/ingest/post.lua}" \
    "${URL[$key]}" > "$out" 2>&1
}

# measure KEY: one wrk run with --latency; prints one line, appends to RPS/P50/P99/CPU/EFF[KEY].
# CPUs: the server's processes, wrk, and the rest (other processes, kernel threads, interrupts),
# from /proc; "busy" is the whole machine.
measure() {
  local key=$1 out=$tmp/wrk-$1.txt line s0 s1 c0 c1 m0 m1 reqs dur rps p50 p99 errs cs cw cm co
  fresh_run
  s0=$(proc_ticks ${SPIDS[$key]}) c0=$(child_ticks) m0=$(machine_ticks)
  run_wrk "$key" "$DURATION" "$out" --latency || { cat "$out" >&2; die "$key: wrk failed"; }
  s1=$(proc_ticks ${SPIDS[$key]}) c1=$(child_ticks) m1=$(machine_ticks)
  line=$(grep '^INGEST ' "$out") || { cat "$out" >&2; die "$key: no summary from wrk"; }
  errs=$(($(field connect "$line") + $(field read "$line") + $(field write "$line") + $(field status "$line") + $(field timeout "$line")))
  ((errs == 0)) || die "$key: wrk saw errors or non-2xx answers: $line"
  reqs=$(field requests "$line") dur=$(field duration_us "$line")
  read -r rps p50 p99 cs cw cm co < <(awk -v r="$reqs" -v d="$dur" -v p50="$(field p50_us "$line")" \
    -v p99="$(field p99_us "$line")" -v s="$((s1 - s0))" -v c="$((c1 - c0))" -v m0="$m0" -v m1="$m1" \
    -v t="$TCK" -v n="$NCPU" 'BEGIN { split(m0, a, " "); split(m1, b, " "); secs = d / 1e6
      busy = (b[1] - a[1]) / (b[2] - a[2]) * n; cs = s / t / secs; cw = c / t / secs
      rest = busy - cs - cw; if (rest < 0) rest = 0 # tick rounding
      printf "%.0f %.2f %.2f %.2f %.2f %.2f %.2f\n", r / secs, p50 / 1000, p99 / 1000, cs, cw, busy, rest }')
  printf '   %-34s %8s req/s  p50 %6s ms  p99 %7s ms  %8s requests   CPUs: server %s  wrk %s  rest %s  (busy %s of %s)\n' \
    "${DESC[$key]}" "$rps" "$p50" "$p99" "$reqs" "$cs" "$cw" "$co" "$cm" "$NCPU"
  RPS[$key]+="$rps " P50[$key]+="$p50 " P99[$key]+="$p99 " CPU[$key]+="$cs " REST+="$co "
  EFF[$key]+="$(awk -v r="$rps" -v c="$cs" 'BEGIN { e = 0; if (c > 0) e = r / c; printf "%.0f", e }') "
}

# expect NAME URL BODY_FILE STATUS [ANSWER]
expect() {
  local name=$1 url=$2 file=$3 want=$4 answer=${5:-} got
  got=$(curl -sS -o "$tmp/answer" -w '%{http_code}' -X POST -H "Content-Type: $FORM" \
    --data-binary "@$file" "$url") || die "$name: no answer from $url"
  [[ "$got" == "$want" ]] || die "$name: $(basename "$file") answered $got, $want expected: $(cat "$tmp/answer")"
  if [[ -n "$answer" && "$(cat "$tmp/answer")" != "$answer" ]]; then
    die "$name: answered '$(cat "$tmp/answer")', '$answer' expected"
  fi
}

ok='{"success":true}'
dup='{"success":true,"duplicate":true}'
[[ "$BODY" != */ingest-update.form ]] || dup='' # an update's repeat merges or runs once more: any 200

# start_b24 LOG ARGS...: b24 serve on a port of its choice (it logs "msg=listening
# address=127.0.0.1:PORT" at the default log level); sets started_pid and started_port.
start_b24() {
  local log=$1
  shift
  "$root/build/b24" serve --listen 127.0.0.1:0 "$@" 2> "$log" &
  started_pid=$!
  pids+=("$started_pid")
  wait_for "$log" 'msg=listening address=127\.0\.0\.1:[0-9]+' "$started_pid"
  started_port=$(sed -n 's/.*msg=listening address=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
  [[ "$started_port" =~ ^[1-9][0-9]*$ ]] || die "b24: no port in $log"
}

preamble() {
  say "== b24 ingest benchmark$1 — $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  say "machine: $NCPU CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"
  say "event: $(basename "$BODY"), $(wc -c < "$BODY") bytes, POST Content-Type: $FORM"
}

# ---- the durable mode -------------------------------------------------------------------------

# metric URL SAMPLE: the value of one sample of b24's /metrics, SAMPLE with its labels as printed.
metric() {
  curl -sf "${1}metrics" | awk -v n="$2" '$1 == n { print $2; found = 1 } END { exit !found }' \
    || die "no $2 in ${1}metrics"
}

# drain URL: waits until b24_inbox_depth is 0, at most DRAIN_TIMEOUT seconds; sets drain_left
# (the depth at the end) and drain_secs.
drain() {
  local url=$1 t0 depth
  t0=$(now)
  while :; do
    depth=$(metric "$url" b24_inbox_depth)
    ((depth == 0)) && break
    awk -v a="$t0" -v b="$(now)" -v m="$DRAIN_TIMEOUT" 'BEGIN { exit !(b - a >= m) }' && break
    sleep 0.2
  done
  drain_left=$depth
  drain_secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
}

not_drained=0
# drained_or_report WHAT: prints the drain of the durable server, counts a failure when it did not.
drained_or_report() {
  drain "${URL[b24-durable]}"
  if ((drain_left == 0)); then
    say "      $1: inbox drained to 0 in $drain_secs s"
  else
    say "      $1: inbox NOT drained: depth $drain_left after $drain_secs s (INGEST_DRAIN_TIMEOUT $DRAIN_TIMEOUT)"
    not_drained=$((not_drained + 1))
  fi
}

# Counting fdatasync/fsync calls of one process through perf's syscall tracepoints (cheap, unlike
# strace), when perf and tracefs allow it.
fsync_count=0
if command -v perf > /dev/null &&
  perf stat -x, -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync -- true > /dev/null 2>&1; then
  fsync_count=1
fi

# thread_ticks PID: "tid ticks name" per thread, in start (tid) order (b24 names its threads:
# b24-inbox, b24-handler, MHD-worker, b24-deadline, b24-log, b24-timer, …; the main one is b24).
thread_ticks() {
  local t
  for t in "/proc/$1/task/"*; do
    printf '%s %s %s\n' "${t##*/}" "$(task_ticks "$t" | awk '{ print $1 + $2 }')" "$(cat "$t/comm" 2> /dev/null)"
  done | sort -n
}

# measure_durable LAST: measure b24-durable, check what it stored against what wrk counted, count
# its fsyncs, then wait for its inbox to drain. LAST=1: also the CPUs of its threads.
D_STORED=0 D_HANDLED=0
measure_durable() {
  local url=${URL[b24-durable]} pid=$durable_pid last=$1 s0 d0 h0 e0 s1 d1 h1 depth h2 e2 line reqs dur
  local fs="" syncs t0 t1 c0 c1 c2 sps
  s0=$(metric "$url" 'b24_deliveries_total{result="stored"}')
  d0=$(metric "$url" 'b24_deliveries_total{result="duplicate"}')
  h0=$(metric "$url" 'b24_handler_runs_total{outcome="ok"}')
  e0=$(metric "$url" 'b24_handler_runs_total{outcome="error"}')
  ((last)) && thread_ticks "$pid" > "$tmp/threads0.txt"
  if ((fsync_count)); then
    perf stat -x, -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync -p "$pid" -o "$tmp/fsyncs.txt" &
    fs=$!
    sleep 0.2
  fi
  t0=$(now) c0=$(proc_ticks "$pid")
  measure b24-durable
  t1=$(now)
  ((last)) && thread_ticks "$pid" > "$tmp/threads1.txt"
  syncs="n/a"
  if [[ -n "$fs" ]]; then
    kill -INT "$fs" 2> /dev/null || true
    wait "$fs" || true
    syncs=$(awk -F, '/sys_enter_f(data)?sync/ { s += $1 } END { print s + 0 }' "$tmp/fsyncs.txt")
  fi
  s1=$(metric "$url" 'b24_deliveries_total{result="stored"}')
  d1=$(metric "$url" 'b24_deliveries_total{result="duplicate"}')
  h1=$(metric "$url" 'b24_handler_runs_total{outcome="ok"}')
  depth=$(metric "$url" b24_inbox_depth)
  line=$(grep '^INGEST ' "$tmp/wrk-b24-durable.txt")
  reqs=$(field requests "$line") dur=$(field duration_us "$line")
  ((d1 == d0)) || die "durable: $((d1 - d0)) of the distinct deliveries were answered as duplicates"
  # every 200 wrk counted was answered after its commit; a few more may have been stored for
  # requests that were in flight when wrk stopped
  ((s1 - s0 >= reqs)) || die "durable: wrk counted $reqs answers, the server stored $((s1 - s0)) deliveries"
  if [[ "$syncs" != n/a ]]; then
    sps=$(awk -v n="$syncs" -v a="$t0" -v b="$t1" -v s="$((s1 - s0))" \
      'BEGIN { printf "%.0f/s (%.1f stored per call)", n / (b - a), n ? s / n : 0 }')
  else
    sps="not counted (perf syscall tracepoints unavailable)"
  fi
  say "      stored $((s1 - s0)) (wrk counted $reqs answers), 0 duplicates; handled during the run $((h1 - h0)), inbox depth at its end $depth; fdatasync+fsync $sps"
  c1=$(proc_ticks "$pid") h1=$(metric "$url" 'b24_handler_runs_total{outcome="ok"}')
  drain "$url"
  c2=$(proc_ticks "$pid")
  h2=$(metric "$url" 'b24_handler_runs_total{outcome="ok"}')
  e2=$(metric "$url" 'b24_handler_runs_total{outcome="error"}')
  if ((drain_left == 0)); then
    say "$(awk -v n="$((h2 - h1))" -v s="$drain_secs" -v c="$((c2 - c1))" -v t="$TCK" -v all="$((h2 - h0))" \
      -v st="$((s1 - s0))" -v d="$dur" -v e="$((e2 - e0))" 'BEGIN {
        printf "      drained to 0 in %s s after the run (%.0f handled/s, server CPUs %.2f); handled in all %d, %d failed;", s, (s > 0 ? n / s : 0), (s > 0 ? c / t / s : 0), all, e
        printf " stored per second of run + drain: %.0f\n", st / (d / 1e6 + s) }')"
  else
    say "      inbox NOT drained: depth $drain_left $drain_secs s after the run (INGEST_DRAIN_TIMEOUT $DRAIN_TIMEOUT)"
    not_drained=$((not_drained + 1))
  fi
  ((e2 == e0)) || die "durable: $((e2 - e0)) handler runs failed"
  D_STORED=$((D_STORED + s1 - s0)) D_HANDLED=$((D_HANDLED + h2 - h0))
  # deliveries per CPU-second of the server, the run and the drain after it (the handling) together
  ALLIN[b24-durable]+="$(awk -v s="$((s1 - s0))" -v c="$((c2 - c0))" -v t="$TCK" 'BEGIN { printf "%.0f", c ? s / (c / t) : 0 }') "
  DRAINS+="$drain_secs "
}

# warm KEY: a warm-up run that reads every answer: all 200 {"success":true}, none a duplicate.
warm() {
  local key=$1 out=$tmp/warm-$1.txt line check
  fresh_run
  INGEST_CHECK=1 run_wrk "$key" "$WARMUP" "$out" || { cat "$out" >&2; die "$key: wrk warm-up failed"; }
  line=$(grep '^INGEST ' "$out") || { cat "$out" >&2; die "$key: no summary from wrk"; }
  check=$(grep '^INGEST_CHECK ' "$out") || { cat "$out" >&2; die "$key: no answer count from wrk"; }
  [[ "$(field duplicate "$check") $(field other "$check")" == "0 0" &&
    "$(field ok "$check")" == "$(field requests "$line")" ]] ||
    die "$key: warm-up answers: $check of $(field requests "$line") requests (all $ok expected)"
  say "   ${DESC[$key]}: $(field requests "$line") requests, every answer $ok (none a duplicate)"
}

declare -A ALLIN
DRAINS=""
durable_mode() {
  local fs_line same k r dthreads handler_threads sync_pid
  dbdir=$(mktemp -d "$DB_DIR/ingest-durable.XXXXXX")
  # "ext4 on /dev/vda, mounted at / (rw,relatime,…)"
  fs_line=$(findmnt -n -T "$dbdir" -o FSTYPE,SOURCE,TARGET,OPTIONS 2> /dev/null |
    awk '{ printf "%s on %s, mounted at %s (%s)", $1, $2, $3, $4 }')
  [[ -n "$fs_line" ]] || fs_line=$(df -T "$dbdir" | awk 'NR == 2 { printf "%s on %s, mounted at %s", $2, $1, $7 }')
  same="the repository's filesystem"
  [[ $(stat -c %d "$dbdir") == $(stat -c %d "$root") ]] || same="NOT the repository's filesystem"
  dthreads=()
  [[ -z "$HANDLER_THREADS" ]] || dthreads=(--handler-threads "$HANDLER_THREADS")

  start_b24 "$tmp/b24-durable.log" --workers "$WORKERS" "${dthreads[@]}" --inbox "$dbdir/inbox.sqlite" \
    "$here/ingest/router.lua"
  durable_pid=$started_pid
  URL[b24-durable]=http://127.0.0.1:$started_port/
  start_b24 "$tmp/b24-sync.log" --workers "$WORKERS" --sync --inbox memory "$here/ingest/router.lua"
  sync_pid=$started_pid
  URL[b24-sync]=http://127.0.0.1:$started_port/
  DESC[b24-durable]="b24 serve --inbox FILE"
  DESC[b24-sync]="b24 serve --sync --inbox memory"
  SPIDS[b24-durable]=$durable_pid
  SPIDS[b24-sync]=$sync_pid
  SCRIPT[b24-durable]=$here/ingest/distinct.lua
  SCRIPT[b24-sync]=$here/ingest/distinct.lua
  router_keys=(b24-sync)
  if [[ $DURABLE_ONLY == 0 ]]; then
    # the same router, logging off on both sides, and under nginx (router:handle_ngx)
    start_b24_quiet "$tmp/b24-sync-quiet.log" --workers "$WORKERS" --sync --inbox memory "$here/ingest/router.lua"
    URL[b24-sync-quiet]=http://127.0.0.1:$started_port/
    SPIDS[b24-sync-quiet]=$started_pid
    DESC[b24-sync-quiet]="b24 serve --sync --log-level warn"
    start_nginx_router
    DESC[ngx-router]="nginx router:handle_ngx (access_log)"
    DESC[ngx-router-nolog]="nginx router:handle_ngx (access_log off)"
    for k in b24-sync-quiet ngx-router ngx-router-nolog; do SCRIPT[$k]=$here/ingest/distinct.lua; done
    # the plain handler's server (logs on) under the same request stream as the router: the base
    # of the --sync / plain target, so that wrk's own cost of making distinct bodies (about 13% of
    # the plain handler's requests/s here) weighs on both sides
    URL[b24-plain-distinct]=${URL[b24]}
    SPIDS[b24-plain-distinct]=$b24_main_pid
    SCRIPT[b24-plain-distinct]=$here/ingest/distinct.lua
    DESC[b24-plain-distinct]="b24 serve plain handler, distinct.lua"
    router_keys=(b24-sync ngx-router b24-sync-quiet ngx-router-nolog b24-plain-distinct)
  fi
  sleep 0.3
  handler_threads=$(cat /proc/"$durable_pid"/task/*/comm | grep -c '^b24-handler$' || true)

  say ""
  say "== durable mode: bench/ingest/router.lua (bitrix24.router{ token = the event's token }, router:on(\"*\", a no-op))"
  local hopt="${dthreads[*]}"
  [[ -n "$hopt" ]] || hopt="(no --handler-threads: b24 takes one per CPU)"
  say "durable: b24 serve --workers $WORKERS $hopt --inbox $dbdir/inbox.sqlite"
  say "         $handler_threads handler threads; SQLite WAL, synchronous=FULL, group commit; the 200 goes out after the commit"
  say "         inbox filesystem: $fs_line"
  say "         ($same; the device's write cache: $(cat /sys/block/"$(basename "$(findmnt -n -T "$dbdir" -o SOURCE 2> /dev/null || echo none)")"/queue/write_cache 2> /dev/null || echo unknown))"
  say "sync:    b24 serve --workers $WORKERS --sync --inbox memory: router:handle, the handler inside the request, in-memory dedup per server thread"
  if [[ $DURABLE_ONLY == 0 ]]; then
    say "         and with --log-level warn; the same script under nginx $nginx_version + ngx_lua,"
    say "         worker_processes $WORKERS"
    say "         (bench/ingest/nginx_router.conf.in: router:handle_ngx, the handlers in an ngx.timer after the answer,"
    say "         dedup in memory per worker), with its access log to a file and with access_log off"
  fi
  say "both log a line per request to a file. wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'): -t$THREADS -c$CONNS -d$DURATION --latency, bench/ingest/distinct.lua: each request a distinct data[FIELDS][ID]"
  say "$ROUNDS round(s) after one -d$WARMUP warm-up each; after each durable run, a wait for its inbox to drain (at most $DRAIN_TIMEOUT s)"

  # the answers, before anything is measured
  local url=${URL[b24-durable]} s0 d0 h0
  s0=$(metric "$url" 'b24_deliveries_total{result="stored"}')
  d0=$(metric "$url" 'b24_deliveries_total{result="duplicate"}')
  h0=$(metric "$url" 'b24_handler_runs_total{outcome="ok"}')
  expect durable "$url" "$BODY" 200 "$ok"
  expect durable "$url" "$BODY" 200 "$dup"
  expect durable "$url" "$tmp/wrong.form" 401
  expect durable "$url" "$tmp/noauth.form" 401
  [[ "$(metric "$url" 'b24_deliveries_total{result="stored"}') $(metric "$url" 'b24_deliveries_total{result="duplicate"}')" == "$((s0 + 1)) $((d0 + 1))" ]] ||
    die "durable: the checks should have stored one delivery and found one duplicate"
  drain "$url"
  ((drain_left == 0)) || die "durable: the inbox did not drain after the checks"
  [[ "$(metric "$url" 'b24_handler_runs_total{outcome="ok"}')" == "$((h0 + 1))" ]] ||
    die "durable: the handler should have run once for the stored delivery"
  url=${URL[b24-sync]}
  expect sync "$url" "$BODY" 200 "$ok"
  expect sync "$url" "$tmp/wrong.form" 401
  expect sync "$url" "$tmp/noauth.form" 401
  # the same delivery twice on one connection (one server thread, one dedup table): a duplicate
  sed 's/data%5BFIELDS%5D%5BID%5D=[0-9]*/data%5BFIELDS%5D%5BID%5D=7/' "$BODY" > "$tmp/id7.form"
  got=$(curl -sS -X POST -H "Content-Type: $FORM" --data-binary "@$tmp/id7.form" "$url" "$url") ||
    die "sync: no answer from $url"
  [[ "$got" == "$ok$dup" ]] || die "sync: the same delivery twice answered '$got', '$ok$dup' expected"
  if [[ $DURABLE_ONLY == 0 ]]; then
    for k in b24-sync-quiet ngx-router ngx-router-nolog; do
      expect "$k" "${URL[$k]}" "$BODY" 200 "$ok"
      expect "$k" "${URL[$k]}" "$tmp/wrong.form" 401
      expect "$k" "${URL[$k]}" "$tmp/noauth.form" 401
    done
  fi
  say "checked first: both answer the event 200 $ok, a wrong token and no token 401, a repeat 200 $dup"
  say "   (durable: one stored, one duplicate, nothing stored for the 401s, the handler ran once; sync: the repeat on one connection)"

  say ""
  say "-- warm-up, -d$WARMUP each, every answer read"
  for k in "${router_keys[@]}"; do warm "$k"; done
  warm b24-durable
  drained_or_report "durable warm-up"

  for ((r = 1; r <= ROUNDS; r++)); do
    say "-- round $r of $ROUNDS"
    for k in "${router_keys[@]}"; do measure "$k"; done
    measure_durable "$((r == ROUNDS))"
  done

  say ""
  say "-- durable server threads during its round-$ROUNDS run (CPUs busy, by thread name; the request threads are MHD-worker)"
  local secs
  secs=$(field duration_us "$(grep '^INGEST ' "$tmp/wrk-b24-durable.txt")")
  awk 'NR == FNR { a[$1] = $2; next } $1 in a { print $3, $2 - a[$1] }' "$tmp/threads0.txt" "$tmp/threads1.txt" |
    awk -v t="$TCK" -v s="$secs" '{ c[$1] += $2 / t / (s / 1e6); n[$1]++ }
      END { for (k in c) printf "   %-24s %.2f\n", k (n[k] > 1 ? " (" n[k] " threads)" : ""), c[k] }' | sort

  local rs rd p50s p50d p99s p99d cs cd es ed ad ratio verdict
  rs=$(tr ' ' '\n' <<< "${RPS[b24-sync]}" | grep . | median)
  rd=$(tr ' ' '\n' <<< "${RPS[b24-durable]}" | grep . | median)
  p50s=$(tr ' ' '\n' <<< "${P50[b24-sync]}" | grep . | median)
  p50d=$(tr ' ' '\n' <<< "${P50[b24-durable]}" | grep . | median)
  p99s=$(tr ' ' '\n' <<< "${P99[b24-sync]}" | grep . | median)
  p99d=$(tr ' ' '\n' <<< "${P99[b24-durable]}" | grep . | median)
  cs=$(tr ' ' '\n' <<< "${CPU[b24-sync]}" | grep . | median)
  cd=$(tr ' ' '\n' <<< "${CPU[b24-durable]}" | grep . | median)
  es=$(tr ' ' '\n' <<< "${EFF[b24-sync]}" | grep . | median)
  ed=$(tr ' ' '\n' <<< "${EFF[b24-durable]}" | grep . | median)
  ad=$(tr ' ' '\n' <<< "${ALLIN[b24-durable]}" | grep . | median)
  ratio=$(awk -v a="$rd" -v b="$rs" 'BEGIN { printf "%.2f", a / b }')
  if awk -v r="$ratio" 'BEGIN { exit !(r >= 0.8) }'; then verdict=met; else verdict=MISSED; fi
  DURABLE_VERDICT="durable: ${ratio}x of --sync in requests/s (target >= 0.8x): $verdict"

  say ""
  say "-- durable vs sync, medians over $ROUNDS round(s); p50/p99: wrk's latency of the answer (for durable: the"
  say "   ack after the commit). req/s/CPU: answers per CPU-second of the server during the run; handled/CPU-s:"
  say "   deliveries per CPU-second with the handling included (durable: the run and its drain together)"
  printf '%-34s %10s %9s %9s %8s %10s %13s\n' mode requests/s p50 p99 "srv CPUs" req/s/CPU handled/CPU-s
  printf '%-34s %10.0f %9s %9s %8s %10.0f %13.0f\n' "${DESC[b24-sync]}" "$rs" "$p50s ms" "$p99s ms" "$cs" "$es" "$es"
  printf '%-34s %10.0f %9s %9s %8s %10.0f %13.0f\n' "${DESC[b24-durable]}" "$rd" "$p50d ms" "$p99d ms" "$cd" "$ed" "$ad"
  say "durable/sync: ${ratio}x in requests/s (target >= 0.8x: $verdict); p99 ${p99d} ms against ${p99s} ms"
  if [[ $DURABLE_ONLY == 0 ]]; then
    router_table "$rs" "$p99s" "$p99d"
  fi
  say "durable stored $D_STORED deliveries in the measured runs (b24_deliveries_total{result=\"stored\"}), handled $D_HANDLED;"
  say "   drains after them: $(tr ' ' '\n' <<< "$DRAINS" | grep . | paste -sd' ' | sed 's/ / s, /g') s; b24_inbox_depth at the end: $(metric "${URL[b24-durable]}" b24_inbox_depth)"
  say "   inbox file: $(du -ch "$dbdir"/inbox.sqlite* 2> /dev/null | tail -1 | cut -f1) ($(ls "$dbdir" | paste -sd' '))"

  burst

  # ---- why, when the target was missed
  if [[ $verdict == MISSED || "${INGEST_PERF:-}" == 1 ]]; then
    durable_diagnose
  fi
}

# start_b24_quiet LOG ARGS...: b24 serve --log-level warn (no listening line: a port chosen here,
# polled on /healthz); sets started_pid and started_port.
start_b24_quiet() {
  local log=$1 i
  shift
  free_port
  "$root/build/b24" serve --listen "127.0.0.1:$port" --log-level warn "$@" 2> "$log" &
  started_pid=$!
  started_port=$port
  pids+=("$started_pid")
  for ((i = 0; ; i++)); do
    kill -0 "$started_pid" 2> /dev/null || { cat "$log" >&2; die "b24 --log-level warn exited"; }
    curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break
    ((i < 100)) || die "b24 --log-level warn did not answer on 127.0.0.1:$port"
    sleep 0.1
  done
}

# The router under nginx (bench/ingest/nginx_router.conf.in): URL and SPIDS of ngx-router and
# ngx-router-nolog.
start_nginx_router() {
  local p1 p2 i npid workers
  free_port; p1=$port
  free_port; p2=$port
  sed -e "s|@MODULES@|/usr/lib/nginx/modules|g" -e "s|@WORKERS@|$WORKERS|g" -e "s|@TMP@|$tmp|g" \
    -e "s|@HERE@|$here/ingest|g" -e "s|@ROOT@|$root|g" -e "s|@PORT_ROUTER@|$p1|g" \
    -e "s|@PORT_ROUTER_NOLOG@|$p2|g" "$here/ingest/nginx_router.conf.in" > "$tmp/nginx-router.conf"
  nginx -p "$tmp/" -c "$tmp/nginx-router.conf" -e "$tmp/nginx-router-error.log" > "$tmp/nginx-router.out" 2>&1 &
  npid=$!
  pids+=("$npid")
  for ((i = 0; ; i++)); do
    kill -0 "$npid" 2> /dev/null ||
      { cat "$tmp/nginx-router.out" "$tmp/nginx-router-error.log" >&2; die "nginx (router) exited"; }
    curl -s -o /dev/null "http://127.0.0.1:$p2/" && break
    ((i < 100)) || die "nginx (router) did not answer on 127.0.0.1:$p2"
    sleep 0.1
  done
  workers=$(pgrep -P "$npid" -d ' ' || true)
  URL[ngx-router]=http://127.0.0.1:$p1/
  URL[ngx-router-nolog]=http://127.0.0.1:$p2/
  SPIDS[ngx-router]="$npid $workers"
  SPIDS[ngx-router-nolog]="$npid $workers"
}

# router_table RPS_SYNC P99_SYNC P99_DURABLE: the router as users run it, against the same
# router under nginx (logs on and off), the plain handler, and the durable path's p99.
ROUTER_VERDICT=""
router_table() {
  local rs=$1 p99s=$2 p99d=$3 k rps p99 cpu eff v1 v2 v3 v4 rq p99q rn p99n rnq p99nq rp
  say ""
  say "-- the router as users run it, medians over $ROUNDS round(s)"
  printf '%-38s %10s %9s %8s %10s\n' server requests/s p99 "srv CPUs" req/s/CPU
  for k in b24-sync ngx-router b24-sync-quiet ngx-router-nolog b24-plain-distinct; do
    rps=$(tr ' ' '\n' <<< "${RPS[$k]}" | grep . | median)
    p99=$(tr ' ' '\n' <<< "${P99[$k]}" | grep . | median)
    cpu=$(tr ' ' '\n' <<< "${CPU[$k]}" | grep . | median)
    eff=$(tr ' ' '\n' <<< "${EFF[$k]}" | grep . | median)
    printf '%-38s %10.0f %9s %8s %10.0f\n' "${DESC[$k]}" "$rps" "$p99 ms" "$cpu" "$eff"
    MED[$k]=$rps P99MED[$k]=$p99
  done
  rn=${MED[ngx-router]} rq=${MED[b24-sync-quiet]} rnq=${MED[ngx-router-nolog]}
  # target lines: value, the bound, met or MISSED
  verdict_line() { awk -v a="$2" -v b="$3" -v t="$4" -v name="$1" -v ge="$5" 'BEGIN {
    r = 0; if (b > 0) r = a / b
    if (ge) { sign = ">="; ok = r >= t } else { sign = "<="; ok = r <= t }
    v = "MISSED"; if (ok) v = "met"
    printf "   %-62s %.2fx (%s %.1fx: %s)\n", name, r, sign, t, v }'; }
  v1=$(verdict_line "--sync / the same router under nginx (logs on)" "$rs" "$rn" 1.0 1)
  v2=$(verdict_line "--sync / the same router under nginx (logs off)" "$rq" "$rnq" 1.0 1)
  rp=${MED[b24-plain-distinct]:-0}
  v3=$(verdict_line "--sync / the plain handler (logs on, both distinct.lua)" "$rs" "$rp" 0.7 1)
  say "$(awk -v a="$rs" -v b="${MED[b24]:-0}" 'BEGIN { r = 0; if (b > 0) r = a / b
    printf "   (--sync / the plain handler under post.lua, one body for every request: %.2fx)", r }')"
  v4=$(verdict_line "--sync p99 / the durable path's p99" "$p99s" "$p99d" 1.0 0)
  say "$v1"; say "$v2"; say "$v3"; say "$v4"
  ROUTER_VERDICT="router:$(printf '\n%s' "$v1" "$v2" "$v3" "$v4")"
}

# The burst: BURST_TOTAL (10,000) distinct deliveries over BURST_CONNECTIONS (256) connections
# from one address, all at once, to the durable server with its default limits; every answer
# must be 200 {"success":true}; then the time until the handler threads ran them all.
BURST_VERDICT=""
burst() {
  local n=${INGEST_BURST_TOTAL:-10000} c=${INGEST_BURST_CONNECTIONS:-256} line rate hrate p99 okn
  fresh_run
  say ""
  say "-- burst: $n distinct deliveries over $c connections from 127.0.0.1 at once (bench/ingest/burst.js),"
  say "   to the durable server (default limits); then until its handler threads have run them all"
  line=$(BURST_DRAIN=1 node "$here/ingest/burst.js" "${URL[b24-durable]}" "$BODY" "$n" "$c" "$((900 + wrk_runs))") ||
    { say "   $line"; die "burst: not every delivery was answered 200 {\"success\":true}"; }
  say "   $line"
  rate=$(field rate "$line") hrate=$(field handled_rate "$line") okn=$(field ok "$line")
  p99=$(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' <<< "$line")
  BURST_VERDICT=$(awk -v ok="$okn" -v n="$n" -v r="$rate" -v h="$hrate" -v p="$p99" 'BEGIN {
    x = 0; if (r > 0) x = h / r
    all = "MISSED"; if (ok == n) all = "met"
    kept = "MISSED"; if (x >= 0.5) kept = "met"
    printf "burst: %d of %d answered 200 (%s), ack p99 %s ms, %s accepted/s, ", ok, n, all, p, r
    printf "drained at %s handled/s = %.2fx (>= 0.5x: %s)",
      h, x, kept }')
  say "   $BURST_VERDICT"
}

# A perf profile and an strace count of the durable server's fsyncs, each under the same load.
durable_diagnose() {
  local url=${URL[b24-durable]} wrk_bg s0 s1 secs=5 calls d0 d1
  d0=$(metric "$url" 'b24_deliveries_total{result="duplicate"}')
  say ""
  if command -v perf > /dev/null; then
    say "-- perf profile of the durable server under the same load (perf record -F 499 -g, symbols >= 1%)"
    fresh_run
    run_wrk b24-durable "$DURATION" "$tmp/wrk-dperf.txt" &
    wrk_bg=$!
    pids+=("$wrk_bg")
    sleep 1
    perf record -q -F 499 -g -p "$durable_pid" -o "$tmp/perf-durable.data" -- \
      sleep "$(awk -v d="${DURATION%s}" 'BEGIN { s = 1; if (d > 3) s = d - 2; print s }')" > /dev/null 2>&1 || true
    wait "$wrk_bg" || true
    say "   by object:"
    perf report -i "$tmp/perf-durable.data" --stdio --no-children --sort dso -g none --percent-limit 1 2> /dev/null \
      | grep -vE '^#|^$' | sed -E 's/[ -]*$//; s/^ */     /' | head -12 || true
    say "   by symbol:"
    perf report -i "$tmp/perf-durable.data" --stdio --no-children --sort dso,symbol -g none --percent-limit 1 2> /dev/null \
      | grep -vE '^#|^$' | sed -E 's/[ -]*$//; s/^ */     /' | head -30 || true
    drained_or_report "after the profile"
  fi
  if command -v strace > /dev/null; then
    say "-- strace -c -f -e trace=fsync,fdatasync on the durable server for $secs s under the same load"
    say "   (strace stops the traced threads at every call, so the server is slower meanwhile)"
    fresh_run
    run_wrk b24-durable "$((secs + 2))s" "$tmp/wrk-dstrace.txt" &
    wrk_bg=$!
    pids+=("$wrk_bg")
    sleep 1
    s0=$(metric "$url" 'b24_deliveries_total{result="stored"}')
    timeout -s INT "$secs" strace -c -f -e trace=fsync,fdatasync -p "$durable_pid" -o "$tmp/strace.txt" 2> /dev/null || true
    s1=$(metric "$url" 'b24_deliveries_total{result="stored"}')
    wait "$wrk_bg" || true
    sed 's/^/     /' "$tmp/strace.txt"
    calls=$(awk '$NF == "fdatasync" || $NF == "fsync" { s += $4 } END { print s + 0 }' "$tmp/strace.txt")
    say "$(awk -v c="$calls" -v s="$((s1 - s0))" -v t="$secs" 'BEGIN {
      printf "   %.0f fsync+fdatasync/s, %d deliveries stored meanwhile (%.0f/s, %.1f per call)", c / t, s, s / t, c ? s / c : 0 }')"
    drained_or_report "after strace"
  fi
  d1=$(metric "$url" 'b24_deliveries_total{result="duplicate"}')
  ((d1 == d0)) || die "durable: $((d1 - d0)) of the distinct deliveries sent for the diagnosis were duplicates"
}

if [[ $FLEET_ONLY == 1 ]]; then
  preamble " (fleet mode only)"
  fleet_mode
  say ""
  say "$FLEET_VERDICT"
  say "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  ((fleet_failed == 0)) || exit 1
  exit 0
fi

if [[ $DURABLE_ONLY == 1 ]]; then
  preamble " (durable mode only)"
  durable_mode
  say ""
  say "$DURABLE_VERDICT"
  say "$BURST_VERDICT"
  ((not_drained == 0)) || say "the inbox did NOT drain $not_drained time(s) within $DRAIN_TIMEOUT s"
  say "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  ((not_drained == 0)) || exit 1
  exit 0
fi

# ---- servers ------------------------------------------------------------------------------------

# b24 on port 0 logs the port it took ("msg=listening address=127.0.0.1:PORT").
"$root/build/b24" serve --listen 127.0.0.1:0 --workers "$WORKERS" \
  "$here/ingest/b24_handler.lua" 2> "$tmp/b24.log" &
b24_main_pid=$!
pids+=("$b24_main_pid")
wait_for "$tmp/b24.log" 'msg=listening address=127\.0\.0\.1:[0-9]+' "$b24_main_pid"
b24_main_port=$(sed -n 's/.*msg=listening address=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/b24.log" | head -1)
[[ "$b24_main_port" =~ ^[1-9][0-9]*$ ]] || die "b24: no port in $tmp/b24.log"
sleep 0.5
rss_idle=$(rss_kb "$b24_main_pid")

# --log-level warn hides the listening line: this one gets a free port, and is polled on /healthz.
free_port
b24_quiet_port=$port
"$root/build/b24" serve --listen "127.0.0.1:$b24_quiet_port" --workers "$WORKERS" --log-level warn \
  "$here/ingest/b24_handler.lua" 2> "$tmp/b24-quiet.log" &
b24_quiet_pid=$!
pids+=("$b24_quiet_pid")
for ((i = 0; ; i++)); do
  kill -0 "$b24_quiet_pid" 2>/dev/null || { cat "$tmp/b24-quiet.log" >&2; die "b24 --log-level warn exited"; }
  curl -sf -o /dev/null "http://127.0.0.1:$b24_quiet_port/healthz" && break
  ((i < 100)) || die "b24 --log-level warn did not answer on 127.0.0.1:$b24_quiet_port"
  sleep 0.1
done

NODE_ENV=production node "$here/ingest/express_app.js" > "$tmp/express.log" 2>&1 &
express_pid=$!
pids+=("$express_pid")
wait_for "$tmp/express.log" '^listening port=[0-9]+' "$express_pid"
express_port=$(sed -n 's/^listening port=\([0-9]*\).*/\1/p' "$tmp/express.log" | head -1)
express_desc=$(sed -n 's/^listening port=[0-9]* express=\([^ ]*\) node=\(.*\)/Express \1 (node \2)/p' \
  "$tmp/express.log" | head -1)

modules=/usr/lib/nginx/modules
[[ -f $modules/ngx_http_lua_module.so ]] || die "no $modules/ngx_http_lua_module.so"
free_port; port_lua=$port
free_port; port_static=$port
free_port; port_lua_nolog=$port
free_port; port_static_nolog=$port
cp "$here/ingest/nginx_handler.lua" "$tmp/nginx_handler.lua"
sed -e "s|@MODULES@|$modules|g" -e "s|@WORKERS@|$WORKERS|g" -e "s|@TMP@|$tmp|g" \
  -e "s|@HERE@|$tmp|g" -e "s|@PORT_LUA@|$port_lua|g" -e "s|@PORT_STATIC@|$port_static|g" \
  -e "s|@PORT_LUA_NOLOG@|$port_lua_nolog|g" -e "s|@PORT_STATIC_NOLOG@|$port_static_nolog|g" \
  "$here/ingest/nginx.conf.in" > "$tmp/nginx.conf"
nginx -p "$tmp/" -c "$tmp/nginx.conf" -e "$tmp/nginx-error.log" > "$tmp/nginx.out" 2>&1 &
nginx_pid=$!
pids+=("$nginx_pid")
for ((i = 0; ; i++)); do
  kill -0 "$nginx_pid" 2>/dev/null || { cat "$tmp/nginx.out" "$tmp/nginx-error.log" >&2; die "nginx exited"; }
  curl -s -o /dev/null "http://127.0.0.1:$port_static_nolog/" && break
  ((i < 100)) || die "nginx did not answer on 127.0.0.1:$port_static_nolog"
  sleep 0.1
done
nginx_version=$(nginx -v 2>&1 | sed 's|.*nginx/||')
lua_version=$(dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null | sed 's/^[0-9]*://')

# ---- every server gives the right answers before it is measured --------------------------------

for s in "b24:$b24_main_port" "b24-quiet:$b24_quiet_port" "express:$express_port" \
         "nginx-lua:$port_lua" "nginx-lua-nolog:$port_lua_nolog"; do
  name=${s%%:*} url=http://127.0.0.1:${s##*:}/
  expect "$name" "$url" "$BODY" 200 "$ok"
  expect "$name" "$url" "$tmp/wrong.form" 401
  expect "$name" "$url" "$tmp/noauth.form" 401
done
expect nginx-static "http://127.0.0.1:$port_static/" "$BODY" 200 "$ok"
expect nginx-static-nolog "http://127.0.0.1:$port_static_nolog/" "$BODY" 200 "$ok"

# ---- measuring --------------------------------------------------------------------------------

nginx_workers=$(pgrep -P "$nginx_pid" -d ' ' || true)
[[ $(wc -w <<< "$nginx_workers") == "$WORKERS" ]] || die "nginx: workers '$nginx_workers', $WORKERS expected"

keys=(b24 express nginx-lua nginx-static b24-quiet nginx-lua-nolog nginx-static-nolog)
URL[b24]=http://127.0.0.1:$b24_main_port/
URL[b24-quiet]=http://127.0.0.1:$b24_quiet_port/
URL[express]=http://127.0.0.1:$express_port/
URL[nginx-lua]=http://127.0.0.1:$port_lua/
URL[nginx-static]=http://127.0.0.1:$port_static/
URL[nginx-lua-nolog]=http://127.0.0.1:$port_lua_nolog/
URL[nginx-static-nolog]=http://127.0.0.1:$port_static_nolog/
DESC[b24]="b24 serve (logs -> file)"
DESC[b24-quiet]="b24 serve --log-level warn"
DESC[express]="$express_desc"
DESC[nginx-lua]="nginx + ngx_lua (access_log)"
DESC[nginx-static]="nginx static (access_log)"
DESC[nginx-lua-nolog]="nginx + ngx_lua (access_log off)"
DESC[nginx-static-nolog]="nginx static (access_log off)"
SPIDS[b24]=$b24_main_pid
SPIDS[b24-quiet]=$b24_quiet_pid
SPIDS[express]=$express_pid
for k in nginx-lua nginx-static nginx-lua-nolog nginx-static-nolog; do SPIDS[$k]="$nginx_pid $nginx_workers"; done

preamble ""
say "wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'): -t$THREADS -c$CONNS -d$DURATION --latency, $ROUNDS round(s) over all servers after one -d$WARMUP warm-up each; wrk shares the CPUs"
say "servers: b24 --workers $WORKERS (threads); nginx $nginx_version + ngx_lua $lua_version, worker_processes $WORKERS; $express_desc, 1 process"
say "checked first: each answers the event 200 $ok, a wrong token and no token 401 (static nginx: 200)"
say "b24 idle VmRSS after start: $(mb "$rss_idle")"
say ""
say "-- warm-up, -d$WARMUP each"
for k in "${keys[@]}"; do
  wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$here/ingest/post.lua" "${URL[$k]}" > "$tmp/warm-$k.txt" 2>&1 \
    || { cat "$tmp/warm-$k.txt" >&2; die "$k: wrk warm-up failed"; }
  if [[ $k == b24 ]]; then rss_after_warm=$(rss_kb "$b24_main_pid"); fi
done
say "   done; b24 VmRSS after its warm-up: $(mb "$rss_after_warm")"

declare -A T0 T1
for ((r = 1; r <= ROUNDS; r++)); do
  say "-- round $r of $ROUNDS"
  for k in "${keys[@]}"; do
    if [[ $k == b24 && $r == "$ROUNDS" ]]; then
      for t in /proc/$b24_main_pid/task/*; do T0[$t]=$(task_ticks "$t"); done
    fi
    measure "$k"
    if [[ $k == b24 && $r == "$ROUNDS" ]]; then
      for t in /proc/$b24_main_pid/task/*; do T1[$t]=$(task_ticks "$t"); done
      b24_secs=$(($(field duration_us "$(grep '^INGEST ' "$tmp/wrk-b24.txt")") / 1000))
    fi
  done
done

say ""
say "-- b24 threads during its round-$ROUNDS run (CPUs busy, from /proc/$b24_main_pid/task/*/stat)"
for t in "${!T1[@]}"; do
  read -r u0 y0 <<< "${T0[$t]:-0 0}"
  read -r u1 y1 <<< "${T1[$t]}"
  awk -v id="${t##*/}" -v name="$(cat "$t/comm" 2>/dev/null)" -v u="$((u1 - u0))" -v y="$((y1 - y0))" \
    -v t="$TCK" -v ms="$b24_secs" 'BEGIN { s = ms / 1000; printf "   %-8s %-12s %.2f  (user %.2f, system %.2f)\n", id, name, (u + y) / t / s, u / t / s, y / t / s }'
done | sort -n

# ---- the table ----------------------------------------------------------------------------------

missed=0
row() { # KEY BASE [TARGET]
  local key=$1 base=$2 target=${3:-} rps p99 cpu eff ratio="—" eratio="—" verdict=""
  rps=$(tr ' ' '\n' <<< "${RPS[$key]}" | grep . | median)
  p99=$(tr ' ' '\n' <<< "${P99[$key]}" | grep . | median)
  cpu=$(tr ' ' '\n' <<< "${CPU[$key]}" | grep . | median)
  eff=$(tr ' ' '\n' <<< "${EFF[$key]}" | grep . | median)
  MED[$key]=$rps EMED[$key]=$eff
  if [[ "$key" != "$base" ]]; then
    ratio=$(awk -v a="${MED[$base]}" -v b="$rps" 'BEGIN { printf "%.2fx", a / b }')
    eratio=$(awk -v a="${EMED[$base]}" -v b="$eff" 'BEGIN { printf "%.2fx", a / b }')
    if [[ -n "$target" ]]; then
      if awk -v a="${MED[$base]}" -v b="$rps" -v t="$target" 'BEGIN { exit !(a / b >= t) }'; then
        verdict="met"
      else
        verdict="MISSED"
        [[ "$base" == b24 ]] && missed=$((missed + 1))
      fi
      verdict=">= ${target}x $verdict"
    fi
  fi
  printf '%-34s %10.0f %10s %9s  %-14s %8s %10.0f %9s\n' "${DESC[$key]}" "$rps" "$p99 ms" "$ratio" "$verdict" "$cpu" "$eff" "$eratio"
}

say ""
say "-- medians over $ROUNDS round(s). srv CPUs: CPUs the server's processes used during its runs;"
say "   req/s/CPU: requests per CPU-second of the server, and b24's over the peer's (less sensitive"
say "   than requests/s to what else runs on the machine). The targets are on requests/s."
rest=$(tr ' ' '\n' <<< "$REST" | grep . | median)
if awk -v r="$rest" 'BEGIN { exit !(r >= 0.25) }'; then
  say "   NOTE: in the median run, $rest CPUs went to other processes and the kernel (\"rest\"):"
  say "   the machine was shared, so requests/s carry that noise; req/s/CPU carries less of it."
fi
printf '%-34s %10s %10s %9s  %-14s %8s %10s %9s\n' server requests/s p99 b24/peer target "srv CPUs" "req/s/CPU" "b24/peer"
say "headline: default logging (b24: a line per request; nginx: access log; Express: none)"
row b24 b24
row express b24 10
row nginx-lua b24 1.0
row nginx-static b24 0.5
say "quiet: b24 --log-level warn, nginx access_log off (for information)"
row b24-quiet b24-quiet
row express b24-quiet 10
row nginx-lua-nolog b24-quiet 1.0
row nginx-static-nolog b24-quiet 0.5
# p99 within 1.2x of nginx + ngx_lua's, in the same rounds
P99_VERDICT=""
for pair in "b24 nginx-lua logs on" "b24-quiet nginx-lua-nolog logs off"; do
  read -r a b what <<< "$pair"
  pa=$(tr ' ' '\n' <<< "${P99[$a]}" | grep . | median)
  pb=$(tr ' ' '\n' <<< "${P99[$b]}" | grep . | median)
  P99MED[$a]=$pa P99MED[$b]=$pb
  line=$(awk -v a="$pa" -v b="$pb" -v w="$what" 'BEGIN { r = 0; if (b > 0) r = a / b
    v = "MISSED"; if (r <= 1.2) v = "met"
    printf "p99 of b24 / nginx + ngx_lua (%s): %s ms / %s ms = %.2fx (<= 1.2x: %s)", w, a, b, r, v }')
  say "$line"
  P99_VERDICT+="$line"$'\n'
done

# ---- a profile of b24 when it missed a target ----------------------------------------------------

if { ((missed > 0)) || [[ "${INGEST_PERF:-}" == 1 ]]; } && command -v perf >/dev/null; then
  say ""
  say "-- perf profile of b24 under the same load (perf record -F 499 -g, symbols >= 1%)"
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$here/ingest/post.lua" "${URL[b24]}" > "$tmp/wrk-perf.txt" 2>&1 &
  wrk_perf=$!
  pids+=("$wrk_perf")
  sleep 1
  perf record -q -F 499 -g -p "$b24_main_pid" -o "$tmp/perf.data" -- \
    sleep "$(awk -v d="${DURATION%s}" 'BEGIN { s = 1; if (d > 3) s = d - 2; print s }')" > /dev/null 2>&1 || true
  wait "$wrk_perf" || true
  say "   by object:"
  perf report -i "$tmp/perf.data" --stdio --no-children --sort dso -g none --percent-limit 1 2>/dev/null \
    | grep -vE '^#|^$' | sed -E 's/[ -]*$//; s/^ */     /' | head -12 || true
  say "   by symbol:"
  perf report -i "$tmp/perf.data" --stdio --no-children --sort dso,symbol -g none --percent-limit 1 2>/dev/null \
    | grep -vE '^#|^$' | sed -E 's/[ -]*$//; s/^ */     /' | head -30 || true
fi

# ---- b24 memory over >= TOTAL requests ----------------------------------------------------------

served() {
  curl -s "${URL[b24]}metrics" | awk '/^b24_requests_total\{/ { s += $2 } END { printf "%d", s }'
}

say ""
say "-- b24 memory: the default-logging server, pid $b24_main_pid; requests served from its b24_requests_total"
say "   idle after start:            VmRSS $(mb "$rss_idle")   target <= 20 MB: $(awk -v k="$rss_idle" 'BEGIN { v = "MISSED"; if (k <= 20480) v = "met"; print v }')"
say "   after its warm-up:           VmRSS $(mb "$rss_after_warm")"
n=$(served)
printf '   after %9d requests:    VmRSS %s\n' "$n" "$(mb "$(rss_kb "$b24_main_pid")")"
while ((n < TOTAL)); do
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$here/ingest/post.lua" "${URL[b24]}" > "$tmp/wrk-mem.txt" 2>&1 \
    || { cat "$tmp/wrk-mem.txt" >&2; die "wrk failed"; }
  line=$(grep '^INGEST ' "$tmp/wrk-mem.txt") || die "no summary from wrk"
  [[ "$line" == *" connect=0 read=0 write=0 status=0 timeout=0" ]] || die "b24: wrk saw errors: $line"
  n=$(served)
  printf '   after %9d requests:    VmRSS %s\n' "$n" "$(mb "$(rss_kb "$b24_main_pid")")"
done
rss_end=$(rss_kb "$b24_main_pid")
hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$b24_main_pid/status")
say "   VmRSS after the warm-up $(mb "$rss_after_warm"), after $n requests $(mb "$rss_end"): $((rss_end - rss_after_warm)) kB change; peak VmHWM $(mb "$hwm")"
say "   b24 wrote $(wc -l < "$tmp/b24.log") log lines ($(du -h "$tmp/b24.log" | cut -f1)) to its stderr file"

# ---- the durable mode and the fleet, in the same run --------------------------------------------

durable_mode
[[ "${INGEST_FLEET:-1}" == 0 ]] || fleet_mode

# ---- the plot: requests/s and p99 per server, an SVG next to the table ---------------------------

plot=${INGEST_PLOT:-$root/build/ingest.svg}
{
  # Express left out: its p99 (near a second) would flatten every other bar of the p99 chart
  for k in b24 nginx-lua nginx-static b24-quiet nginx-lua-nolog nginx-static-nolog; do
    g=peer; [[ $k == b24* ]] && g=b24
    p99=${P99MED[$k]:-$(tr ' ' '\n' <<< "${P99[$k]}" | grep . | median)}
    printf '%s\t%s\t%s\t%s\n' "${DESC[$k]}" "${MED[$k]}" "$p99" "$g"
  done
  for k in b24-sync ngx-router b24-sync-quiet ngx-router-nolog; do
    g=peer; [[ $k == b24* ]] && g=b24
    printf '%s (router)\t%s\t%s\t%s\n' "${DESC[$k]}" "${MED[$k]}" "${P99MED[$k]}" "$g"
  done
  printf '%s (router)\t%s\t%s\tb24\n' "${DESC[b24-durable]}" \
    "$(tr ' ' '\n' <<< "${RPS[b24-durable]}" | grep . | median)" \
    "$(tr ' ' '\n' <<< "${P99[b24-durable]}" | grep . | median)"
} > "$tmp/plot.tsv"
plot_title="b24 serve ingest, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
plot_title+=", $NCPU CPUs"
if lua5.4 "$here/ingest/plot.lua" "$plot_title" \
  < "$tmp/plot.tsv" > "$plot.tmp"; then
  mv "$plot.tmp" "$plot"
  say ""
  say "plot (requests/s and p99 per server): $plot"
fi

say ""
if ((missed > 0)); then
  say "b24 missed $missed of the 3 throughput targets (headline rows)"
else
  say "b24 met the 3 throughput targets (headline rows)"
fi
printf '%s' "$P99_VERDICT"
say "$DURABLE_VERDICT"
say "$ROUTER_VERDICT"
say "$BURST_VERDICT"
[[ -z "${FLEET_VERDICT:-}" ]] || say "$FLEET_VERDICT"
((not_drained == 0)) || say "the inbox did NOT drain $not_drained time(s) within $DRAIN_TIMEOUT s"
say "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
((not_drained == 0 && fleet_failed == 0)) || exit 1
