#!/usr/bin/env bash
# Ingest benchmark: `b24 serve` against its peers on one real Bitrix24 event delivery.
#
#   bench/ingest.sh
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
# >= 1.0x nginx + ngx_lua, >= 0.5x static nginx, in requests/s. When one is missed (or with
# INGEST_PERF=1), a perf profile of b24 follows. Then b24's memory: VmRSS idle after start (target
# <= 20 MB), and after >= 1,000,000 requests.
#
# Environment: INGEST_WORKERS (2) INGEST_THREADS (wrk -t, 2) INGEST_CONNECTIONS (wrk -c, 64)
# INGEST_DURATION (10s) INGEST_WARMUP (3s) INGEST_ROUNDS (3) INGEST_TOTAL (1000000)
# INGEST_PERF=1 (always profile b24) INGEST_KEEP=1 (keep the temp dir with logs and wrk reports).
# Servers listen on 127.0.0.1 only, on ports free at run time; all are stopped on exit.
# Exits non-zero when a server gives a wrong answer or wrk sees errors; a missed target is reported
# in the table, not in the exit status.
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
BODY=$here/ingest/app-oncrmcontactadd.form
FORM=application/x-www-form-urlencoded

say() { printf '%s\n' "$*"; }
die() { printf 'ingest.sh: %s\n' "$*" >&2; exit 1; }

# ---- dependencies: Debian packages (only the missing ones), the build, Express -------------------

need_debs=(wrk nginx libnginx-mod-http-lua nodejs npm curl)
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

express_pin=$(node -p 'require(process.argv[1]).dependencies.express' "$root/bench/package.json")
express_have=$(node -p 'try { require(process.argv[1]).version } catch (e) { "" }' \
  "$root/bench/node_modules/express/package.json" 2>/dev/null || true)
if [[ "$express_have" != "$express_pin" ]]; then
  echo "installing express $express_pin into bench/node_modules" >&2
  npm ci --prefix "$root/bench" --no-audit --no-fund --loglevel=error >&2
fi

# ---- temp dir, processes, cleanup ---------------------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/b24-ingest.XXXXXX")
chmod 755 "$tmp" # nginx workers (nobody, when started as root) read the Lua handler from here
pids=()

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

cleanup() {
  local pid
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  if [[ "${INGEST_KEEP:-}" == 1 ]]; then
    echo "kept $tmp" >&2
  else
    rm -rf "$tmp"
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

TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
nginx_workers=$(pgrep -P "$nginx_pid" -d ' ' || true)
[[ $(wc -w <<< "$nginx_workers") == "$WORKERS" ]] || die "nginx: workers '$nginx_workers', $WORKERS expected"

keys=(b24 express nginx-lua nginx-static b24-quiet nginx-lua-nolog nginx-static-nolog)
declare -A URL DESC SPIDS RPS P99 CPU EFF
REST=""
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

# CPU ticks (user + system) of processes, all their threads; of one thread; of this shell's
# waited-for children (wrk); busy and total ticks of the machine.
proc_ticks() { local p s=0; for p; do s=$((s + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }'))); done; echo "$s"; }
task_ticks() { sed 's/.*) //' "$1/stat" | awk '{ print $12, $13 }'; }
child_ticks() { sed 's/.*) //' "/proc/$$/stat" | awk '{ print $14 + $15 }'; }
machine_ticks() { awk '/^cpu / { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<< "$2"; }

# measure KEY: one wrk run with --latency; prints one line, appends to RPS/P99/CPU/EFF[KEY].
# CPUs: the server's processes, wrk, and the rest (other processes, kernel threads, interrupts),
# from /proc; "busy" is the whole machine.
measure() {
  local key=$1 out=$tmp/wrk-$1.txt line s0 s1 c0 c1 m0 m1 reqs dur rps p50 p99 errs cs cw cm co
  s0=$(proc_ticks ${SPIDS[$key]}) c0=$(child_ticks) m0=$(machine_ticks)
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$here/ingest/post.lua" "${URL[$key]}" > "$out" 2>&1 \
    || { cat "$out" >&2; die "$key: wrk failed"; }
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
  RPS[$key]+="$rps " P99[$key]+="$p99 " CPU[$key]+="$cs " REST+="$co "
  EFF[$key]+="$(awk -v r="$rps" -v c="$cs" 'BEGIN { e = 0; if (c > 0) e = r / c; printf "%.0f", e }') "
}

say "== b24 ingest benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
say "machine: $NCPU CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"
say "event: $(basename "$BODY"), $(wc -c < "$BODY") bytes, POST Content-Type: $FORM"
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
declare -A MED EMED

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

say ""
if ((missed > 0)); then
  say "b24 missed $missed of the 3 throughput targets (headline rows)"
else
  say "b24 met the 3 throughput targets (headline rows)"
fi
say "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
