# shellcheck shell=bash disable=SC2154 # sourced by bench/ingest.sh: tmp, root, here, … are its
# bench/ingest/fleet.sh: the fleet mode of bench/ingest.sh (sourced by it; uses its helpers and
# settings). The same durable ingest as the durable mode (bench/ingest/router.lua, each request a
# distinct delivery from bench/ingest/distinct.lua, stored and committed before its 200), under
# three set-ups measured in one run, round after round:
#   sqlite    one b24 serve host, --inbox FILE (SQLite WAL, synchronous=FULL, group commit)
#   pg1       one b24 serve host, --inbox postgresql://… (B24_INBOX)
#   pg2       two b24 serve hosts on that one database
# Each host has the same --workers and --handler-threads. The PostgreSQL server is started for
# the run: initdb into a fresh directory under INGEST_DB_DIR (build/, the repository's disk, as
# is the SQLite file), as the postgres user when run as root, listening on 127.0.0.1 on a free
# port (a cluster on 5432 is left alone), fsync = on, synchronous_commit = on, full_page_writes
# = on, a password over TCP; the settings are read back from the server and printed. Two hosts
# get the load as a balancer spreading connections would: two wrk processes at once, one per
# host, each with half of the connections (-c) and threads (-t), their counts summed (requests/s
# = the sum of requests over the longer of the two durations; p50/p99: the worse of the two).
# Every run is checked like a durable run (stored >= answered, 0 duplicates, 0 handler errors)
# and followed by a drain of the inbox (the database's rows, or the SQLite host's depth) before
# the next. Target: two hosts on PostgreSQL >= 0.5x one host on SQLite, in requests/s.

PG_BIN=${INGEST_PG_BIN:-/usr/lib/postgresql/15/bin}
pgdir="" sqlite_dir="" # the databases' directories, made when the fleet mode starts
pg_port="" pg_url="" pg_masked="" pg_password=""
as_pg=()

# Stops the fleet's PostgreSQL server (called from ingest.sh's cleanup).
pg_stop() {
  [[ -n "$pgdir" && -f "$pgdir/data/postmaster.pid" ]] || return 0
  (cd "$pgdir" && "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$pgdir/data" -w -t 60 -m fast stop > /dev/null 2>&1) ||
    (cd "$pgdir" && "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$pgdir/data" -w -t 30 -m immediate stop > /dev/null 2>&1) || true
}

# Stops the server and removes the fleet's directories (INGEST_KEEP=1: keeps them); from cleanup.
fleet_cleanup() {
  pg_stop
  if [[ "${INGEST_KEEP:-}" == 1 ]]; then
    [[ -z "$pgdir$sqlite_dir" ]] || echo "kept $pgdir $sqlite_dir" >&2
  else
    [[ -z "$pgdir" ]] || rm -rf "$pgdir"
    [[ -z "$sqlite_dir" ]] || rm -rf "$sqlite_dir"
  fi
}

# CPU ticks (user + system) of the pids still there (a backend may come and go during a run).
pg_ticks() {
  local p s=0 t
  for p; do
    t=$(sed 's/.*) //' "/proc/$p/stat" 2> /dev/null | awk '{ print $12 + $13 }') || continue
    [[ -n "$t" ]] && s=$((s + t))
  done
  echo "$s"
}

# psql as the superuser over the unix socket, unaligned and tuples only.
pg_psql() {
  "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$pgdir" -p "$pg_port" -U postgres -d "${2:-b24}" -c "$1"
}

# A free TCP port of 127.0.0.1 (luasocket, which the specs need anyway), never 5432.
pg_free_port() {
  lua5.4 -e 'local s = assert(require("socket").bind("127.0.0.1", 0)); local _, p = s:getsockname(); print(p); s:close()'
}

# initdb, the settings, pg_ctl start (waits until it accepts connections), role and database b24.
pg_start() {
  local i
  [[ -x "$PG_BIN/initdb" ]] || die "no $PG_BIN/initdb: scripts/deps.sh test installs the Debian package postgresql"
  pgdir=$(mktemp -d "$DB_DIR/ingest-pg.XXXXXX")
  chmod 700 "$pgdir"
  if [[ $(id -u) -eq 0 ]]; then # initdb refuses root
    chown postgres: "$pgdir"
    as_pg=(runuser -u postgres --)
  fi
  (cd "$pgdir" && "${as_pg[@]}" "$PG_BIN/initdb" -D "$pgdir/data" -U postgres -E UTF8 --no-locale \
    --auth-local=trust --auth-host=scram-sha-256 > "$tmp/initdb.log" 2>&1) || { cat "$tmp/initdb.log" >&2; die "initdb failed"; }
  cat >> "$pgdir/data/postgresql.conf" << EOF

# bench/ingest/fleet.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$pgdir'
fsync = on
synchronous_commit = on
full_page_writes = on
password_encryption = 'scram-sha-256'
max_connections = 100
# per-statement counts and times for the diagnosis below (a small, constant overhead)
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
EOF
  for ((i = 0; i < 5; i++)); do
    pg_port=$(pg_free_port)
    [[ "$pg_port" =~ ^[1-9][0-9]*$ && "$pg_port" != 5432 ]] || die "no free port for PostgreSQL"
    if (cd "$pgdir" && "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$pgdir/data" -l "$pgdir/postgres.log" -w -t 60 \
      -o "-p $pg_port" start > "$tmp/pg_ctl.log" 2>&1); then
      break
    fi
    grep -q 'could not bind\|in use' "$pgdir/postgres.log" 2> /dev/null || { cat "$tmp/pg_ctl.log" "$pgdir/postgres.log" >&2; die "PostgreSQL did not start"; }
    pg_port=""
  done
  [[ -n "$pg_port" ]] || die "PostgreSQL did not find a free port"
  pg_password=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  pg_psql "CREATE ROLE b24 LOGIN PASSWORD '$pg_password'" postgres > /dev/null
  pg_psql "CREATE DATABASE b24 OWNER b24" postgres > /dev/null
  pg_psql "CREATE EXTENSION pg_stat_statements" > /dev/null
  pg_url="postgresql://b24:$pg_password@127.0.0.1:$pg_port/b24"
  pg_masked="postgresql://b24:***@127.0.0.1:$pg_port/b24"
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -d b24 || die "pg_isready: PostgreSQL does not accept TCP connections"
}

# pids of the PostgreSQL server: the postmaster and its children (backends, walwriter, …).
pg_pids() {
  local pm
  pm=$(head -1 "$pgdir/data/postmaster.pid")
  echo "$pm $(pgrep -P "$pm" | paste -sd' ')"
}

# fs_of DIR: "ext4 on /dev/vda, mounted at / (rw,…)"; and whether it is the repository's.
fs_of() {
  local line
  line=$(findmnt -n -T "$1" -o FSTYPE,SOURCE,TARGET,OPTIONS 2> /dev/null |
    awk '{ printf "%s on %s, mounted at %s (%s)", $1, $2, $3, $4 }')
  [[ -n "$line" ]] || line=$(df -T "$1" | awk 'NR == 2 { printf "%s on %s, mounted at %s", $2, $1, $7 }')
  if [[ $(stat -c %d "$1") == $(stat -c %d "$root") ]]; then
    echo "$line; the repository's filesystem"
  else
    echo "$line; NOT the repository's filesystem"
  fi
}

declare -A FURLS FPIDS FDESC FRPS FP50 FP99 FSRV FDB FWRK FREST FSTORED
FDRAINS=""
fleet_failed=0

# The sum of one /metrics sample over the hosts of set-up KEY.
fleet_metric() {
  local key=$1 sample=$2 u s=0
  for u in ${FURLS[$key]}; do s=$((s + $(metric "$u" "$sample"))); done
  echo "$s"
}

# Waits until set-up KEY's inbox is empty: the database's rows (PostgreSQL) or the host's depth.
fleet_drain() {
  local key=$1 t0 left
  t0=$(now)
  while :; do
    if [[ $key == sqlite ]]; then
      left=$(metric "${FURLS[$key]%% *}" b24_inbox_depth)
    else
      left=$(pg_psql "SELECT count(*) FROM b24_deliveries")
    fi
    ((left == 0)) && break
    awk -v a="$t0" -v b="$(now)" -v m="$DRAIN_TIMEOUT" 'BEGIN { exit !(b - a >= m) }' && break
    sleep 0.2
  done
  drain_left=$left
  drain_secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
}

# fleet_wrk KEY DURATION PREFIX [INGEST_CHECK]: wrk against each host of KEY at once, the
# connections and threads split between them; PREFIX-N.txt the reports. Sets fw_reqs, fw_dur
# (µs, the longest), fw_p50, fw_p99 (µs, the worst), fw_errs, fw_ok, fw_dup, fw_other.
fleet_wrk() {
  local key=$1 d=$2 prefix=$3 check=${4:-0} urls n t c i u line chk wpids=()
  read -r -a urls <<< "${FURLS[$key]}"
  n=${#urls[@]}
  t=$((THREADS / n)) c=$((CONNS / n))
  ((t >= 1)) || t=1
  ((c >= t)) || c=$t
  i=0
  for u in "${urls[@]}"; do
    i=$((i + 1))
    fresh_run
    INGEST_CHECK=$check INGEST_RUN=$wrk_runs wrk -t"$t" -c"$c" -d"$d" --latency -s "$here/ingest/distinct.lua" "$u" \
      > "$prefix-$i.txt" 2>&1 &
    wpids+=($!)
  done
  for i in "${!wpids[@]}"; do
    wait "${wpids[$i]}" || { cat "$prefix-$((i + 1)).txt" >&2; die "$key: wrk failed"; }
  done
  fw_reqs=0 fw_dur=0 fw_p50=0 fw_p99=0 fw_errs=0 fw_ok=0 fw_dup=0 fw_other=0
  for ((i = 1; i <= n; i++)); do
    line=$(grep '^INGEST ' "$prefix-$i.txt") || { cat "$prefix-$i.txt" >&2; die "$key: no summary from wrk"; }
    fw_reqs=$((fw_reqs + $(field requests "$line")))
    (($(field duration_us "$line") > fw_dur)) && fw_dur=$(field duration_us "$line")
    (($(field p50_us "$line") > fw_p50)) && fw_p50=$(field p50_us "$line")
    (($(field p99_us "$line") > fw_p99)) && fw_p99=$(field p99_us "$line")
    fw_errs=$((fw_errs + $(field connect "$line") + $(field read "$line") + $(field write "$line") +
      $(field status "$line") + $(field timeout "$line")))
    if ((check)); then
      chk=$(grep '^INGEST_CHECK ' "$prefix-$i.txt") || die "$key: no answer count from wrk"
      fw_ok=$((fw_ok + $(field ok "$chk"))) fw_dup=$((fw_dup + $(field duplicate "$chk")))
      fw_other=$((fw_other + $(field other "$chk")))
    fi
  done
}

# fleet_measure KEY: one measured run of set-up KEY, checked, then its drain.
fleet_measure() {
  local key=$1 s0 d0 e0 s1 d1 e1 b0 b1 db0 db1 c0 c1 m0 m1 rps cs cdb cw busy rest
  local bpids=${FPIDS[$key]} dpids=""
  [[ $key == sqlite ]] || dpids=$(pg_pids)
  s0=$(fleet_metric "$key" 'b24_deliveries_total{result="stored"}')
  d0=$(fleet_metric "$key" 'b24_deliveries_total{result="duplicate"}')
  e0=$(fleet_metric "$key" 'b24_handler_runs_total{outcome="error"}')
  # shellcheck disable=SC2086
  b0=$(proc_ticks $bpids) db0=0 c0=$(child_ticks) m0=$(machine_ticks)
  # shellcheck disable=SC2086
  [[ -z "$dpids" ]] || db0=$(pg_ticks $dpids)
  local fs="" fsyncs="n/a" plist
  if ((fsync_count)); then # the fsyncs of whoever commits: the b24 host (SQLite), the server (PostgreSQL)
    plist=$bpids
    [[ -z "$dpids" ]] || plist=$dpids
    perf stat -x, -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync -p "$(tr -s ' ' ',' <<< "${plist% }" | sed 's/,$//')" \
      -o "$tmp/fleet-fsyncs.txt" > /dev/null 2>&1 &
    fs=$!
    sleep 0.2
  fi
  fleet_wrk "$key" "$DURATION" "$tmp/fleet-$key"
  if [[ -n "$fs" ]]; then
    kill -INT "$fs" 2> /dev/null || true
    wait "$fs" || true
    fsyncs=$(awk -F, '/sys_enter_f(data)?sync/ { s += $1 } END { print s + 0 }' "$tmp/fleet-fsyncs.txt")
  fi
  # shellcheck disable=SC2086
  b1=$(proc_ticks $bpids) db1=0 c1=$(child_ticks) m1=$(machine_ticks)
  # shellcheck disable=SC2086
  [[ -z "$dpids" ]] || db1=$(pg_ticks $dpids)
  ((fw_errs == 0)) || die "$key: wrk saw $fw_errs errors or non-2xx answers"
  s1=$(fleet_metric "$key" 'b24_deliveries_total{result="stored"}')
  d1=$(fleet_metric "$key" 'b24_deliveries_total{result="duplicate"}')
  ((d1 == d0)) || die "$key: $((d1 - d0)) of the distinct deliveries were answered as duplicates"
  ((s1 - s0 >= fw_reqs)) || die "$key: wrk counted $fw_reqs answers, the hosts stored $((s1 - s0)) deliveries"
  read -r rps cs cdb cw busy rest < <(awk -v r="$fw_reqs" -v d="$fw_dur" -v b="$((b1 - b0))" -v db="$((db1 - db0))" \
    -v c="$((c1 - c0))" -v m0="$m0" -v m1="$m1" -v t="$TCK" -v n="$NCPU" 'BEGIN { split(m0, x, " "); split(m1, y, " ")
      s = d / 1e6; busy = (y[1] - x[1]) / (y[2] - x[2]) * n; rest = busy - (b + db + c) / t / s
      if (rest < 0) rest = 0 # tick rounding
      printf "%.0f %.2f %.2f %.2f %.2f %.2f\n", r / s, b / t / s, db / t / s, c / t / s, busy, rest }')
  FRPS[$key]+="$rps " FP50[$key]+="$(awk -v v="$fw_p50" 'BEGIN { printf "%.2f", v / 1000 }') "
  FP99[$key]+="$(awk -v v="$fw_p99" 'BEGIN { printf "%.2f", v / 1000 }') "
  FSRV[$key]+="$cs " FDB[$key]+="$cdb " FWRK[$key]+="$cw " FREST[$key]+="$rest "
  FSTORED[$key]=$((${FSTORED[$key]:-0} + s1 - s0))
  fleet_drain "$key"
  e1=$(fleet_metric "$key" 'b24_handler_runs_total{outcome="error"}')
  ((e1 == e0)) || die "$key: $((e1 - e0)) handler runs failed"
  [[ $key == sqlite ]] && cdb="—"
  printf '   %-36s %8s req/s  p50 %6s ms  p99 %7s ms  %8s requests, stored %s  CPUs: b24 %s  postgres %s  wrk %s  rest %s  (busy %s of %s)\n' \
    "${FDESC[$key]}" "$rps" "$(awk -v v="$fw_p50" 'BEGIN { printf "%.2f", v / 1000 }')" \
    "$(awk -v v="$fw_p99" 'BEGIN { printf "%.2f", v / 1000 }')" "$fw_reqs" "$((s1 - s0))" "$cs" "$cdb" "$cw" "$rest" "$busy" "$NCPU"
  if [[ $fsyncs != n/a ]]; then
    say "      fdatasync+fsync by the $([[ $key == sqlite ]] && echo "b24 host" || echo "PostgreSQL server"): $(awk -v n="$fsyncs" \
      -v d="$fw_dur" -v s="$((s1 - s0))" 'BEGIN { printf "%.0f/s, %.1f deliveries stored per call", n / (d / 1e6), n ? s / n : 0 }')"
  fi
  if ((drain_left == 0)); then
    say "      inbox drained to 0 in $drain_secs s"
    FDRAINS+="$key:$drain_secs "
  else
    say "      inbox NOT drained: $drain_left left after $drain_secs s (INGEST_DRAIN_TIMEOUT $DRAIN_TIMEOUT)"
    fleet_failed=$((fleet_failed + 1))
  fi
}

# fleet_host KEY LOG ARGS…: one more host of set-up KEY (started by ingest.sh's start_b24).
fleet_host() {
  local key=$1 log=$2
  shift 2
  start_b24 "$log" --workers "$WORKERS" "${fthreads[@]}" "$@" "$here/ingest/router.lua"
  FURLS[$key]+="http://127.0.0.1:$started_port/ "
  FPIDS[$key]+="$started_pid "
}

fleet_mode() {
  local k r ratio verdict fsql fpg journal u first
  fthreads=()
  [[ -z "$HANDLER_THREADS" ]] || fthreads=(--handler-threads "$HANDLER_THREADS")
  pg_start
  sqlite_dir=$(mktemp -d "$DB_DIR/ingest-fleet-sqlite.XXXXXX")

  fleet_host sqlite "$tmp/fleet-sqlite.log" --inbox "$sqlite_dir/inbox.sqlite"
  B24_INBOX=$pg_url fleet_host pg1 "$tmp/fleet-pg1.log"
  B24_INBOX=$pg_url fleet_host pg2 "$tmp/fleet-pg2a.log"
  B24_INBOX=$pg_url fleet_host pg2 "$tmp/fleet-pg2b.log"
  if [[ -n "${INGEST_PG_SQL:-}" ]]; then # an experiment on the schema the hosts made (an index, a setting)
    pg_psql "$INGEST_PG_SQL" > /dev/null || die "INGEST_PG_SQL failed"
  fi
  FDESC[sqlite]="1 host, SQLite"
  FDESC[pg1]="1 host, PostgreSQL"
  FDESC[pg2]="2 hosts, PostgreSQL (one database)"
  ! grep -qF "$pg_password" "$tmp"/fleet-pg*.log || die "the database password is in a b24 log"

  fsql=$(fs_of "$sqlite_dir")
  fpg=$(fs_of "$pgdir")
  journal=$(sqlite3 "$sqlite_dir/inbox.sqlite" 'PRAGMA journal_mode' 2> /dev/null || echo "?")
  say ""
  say "== fleet mode: bench/ingest/router.lua on one SQLite host, one and two PostgreSQL hosts; each host: --workers $WORKERS ${fthreads[*]:-(one handler thread per CPU)}"
  say "SQLite:     $sqlite_dir/inbox.sqlite: journal_mode=$journal (from the file), synchronous=FULL"
  say "            (b24/src/b24_inbox_sql.c sets PRAGMA synchronous=FULL on every connection); group commit, the 200 after the commit"
  say "            filesystem: $fsql"
  say "PostgreSQL: $("$PG_BIN/postgres" --version), $pg_masked, data in $pgdir/data"
  [[ -z "${INGEST_PG_SQL:-}" ]] || say "            INGEST_PG_SQL run after the hosts made the schema: $INGEST_PG_SQL"
  say "            as the server reports: fsync=$(pg_psql 'SHOW fsync') synchronous_commit=$(pg_psql 'SHOW synchronous_commit') full_page_writes=$(pg_psql 'SHOW full_page_writes') wal_sync_method=$(pg_psql 'SHOW wal_sync_method') shared_buffers=$(pg_psql 'SHOW shared_buffers')"
  say "            filesystem: $fpg"
  say "            the device's write cache: $(cat /sys/block/"$(basename "$(findmnt -n -T "$pgdir" -o SOURCE 2> /dev/null || echo none)")"/queue/write_cache 2> /dev/null || echo unknown)"
  say "load: wrk -d$DURATION --latency, bench/ingest/distinct.lua (each request a distinct delivery); one host: -t$THREADS -c$CONNS;"
  say "      two hosts: two wrk at once, one per host, each -t$(((THREADS / 2) > 0 ? THREADS / 2 : 1)) -c$((CONNS / 2)) (connections spread as by a balancer), counts summed"

  # the answers first: each host stores, answers a repeat as a duplicate, refuses wrong tokens;
  # the two PostgreSQL hosts share one inbox: a delivery stored by one is a duplicate at the other
  for k in sqlite pg1 pg2; do
    for u in ${FURLS[$k]}; do
      expect "$k" "$u" "$tmp/wrong.form" 401
      expect "$k" "$u" "$tmp/noauth.form" 401
    done
  done
  sed 's/data%5BFIELDS%5D%5BID%5D=[0-9]*/data%5BFIELDS%5D%5BID%5D=9000000001/' "$BODY" > "$tmp/fleet-check.form"
  expect sqlite "${FURLS[sqlite]%% *}" "$tmp/fleet-check.form" 200 "$ok"
  expect sqlite "${FURLS[sqlite]%% *}" "$tmp/fleet-check.form" 200 "$dup"
  first=${FURLS[pg2]%% *}
  expect pg2 "$first" "$tmp/fleet-check.form" 200 "$ok"
  for u in ${FURLS[pg2]} ${FURLS[pg1]}; do expect pg "$u" "$tmp/fleet-check.form" 200 "$dup"; done
  say "checked first: every host answers 401 to a wrong and to no token; a delivery is stored once and a repeat is"
  say "   a duplicate (SQLite); on PostgreSQL a delivery stored through one host is a duplicate at the other two"

  say ""
  say "-- warm-up, -d$WARMUP each, every answer read"
  for k in sqlite pg1 pg2; do
    fleet_wrk "$k" "$WARMUP" "$tmp/fleet-warm-$k" 1
    ((fw_errs == 0 && fw_dup == 0 && fw_other == 0 && fw_ok == fw_reqs)) ||
      die "$k: warm-up answers ok=$fw_ok duplicate=$fw_dup other=$fw_other of $fw_reqs (errors $fw_errs)"
    fleet_drain "$k"
    say "   ${FDESC[$k]}: $fw_reqs requests, every answer $ok; drained in $drain_secs s"
  done

  for ((r = 1; r <= ROUNDS; r++)); do
    say "-- round $r of $ROUNDS"
    for k in sqlite pg1 pg2; do fleet_measure "$k"; done
  done

  say ""
  say "-- fleet, medians over $ROUNDS round(s). CPUs: b24 = the set-up's b24 processes, postgres = the server's"
  say "   processes, during the runs (the drain after each run not included)"
  say "   rest: CPUs other processes and the kernel took meanwhile (a shared machine's noise)"
  printf '%-36s %10s %9s %10s %8s %8s %8s %8s\n' set-up requests/s p50 p99 "b24 CPUs" "pg CPUs" "wrk CPUs" rest
  local dbc
  for k in sqlite pg1 pg2; do
    dbc="—"
    [[ $k == sqlite ]] || dbc=$(tr ' ' '\n' <<< "${FDB[$k]}" | grep . | median)
    printf '%-36s %10.0f %9s %10s %8s %8s %8s %8s\n' "${FDESC[$k]}" \
      "$(tr ' ' '\n' <<< "${FRPS[$k]}" | grep . | median)" "$(tr ' ' '\n' <<< "${FP50[$k]}" | grep . | median) ms" \
      "$(tr ' ' '\n' <<< "${FP99[$k]}" | grep . | median) ms" "$(tr ' ' '\n' <<< "${FSRV[$k]}" | grep . | median)" \
      "$dbc" "$(tr ' ' '\n' <<< "${FWRK[$k]}" | grep . | median)" "$(tr ' ' '\n' <<< "${FREST[$k]}" | grep . | median)"
  done
  ratio=$(awk -v a="$(tr ' ' '\n' <<< "${FRPS[pg2]}" | grep . | median)" -v b="$(tr ' ' '\n' <<< "${FRPS[sqlite]}" | grep . | median)" \
    'BEGIN { printf "%.2f", a / b }')
  if awk -v r="$ratio" 'BEGIN { exit !(r >= 0.5) }'; then verdict=met; else verdict=MISSED; fi
  say "one host on PostgreSQL / one host on SQLite: $(awk -v a="$(tr ' ' '\n' <<< "${FRPS[pg1]}" | grep . | median)" \
    -v b="$(tr ' ' '\n' <<< "${FRPS[sqlite]}" | grep . | median)" 'BEGIN { printf "%.2f", a / b }')x"
  FLEET_VERDICT="two hosts on PostgreSQL / one host on SQLite: ${ratio}x in requests/s (target >= 0.5x): $verdict"
  if [[ $verdict == MISSED || "${INGEST_PERF:-}" == 1 ]]; then
    say ""
    say "-- where the database's time went, over the whole fleet mode (pg_stat_statements, top 12 by total time;"
    say "   per call: ms, and the slowest call's; rows: per call)"
    pg_psql "SELECT to_char(round(total_exec_time)::int, 'FM9999999') || ' ms' AS total, calls,
        round((total_exec_time / calls)::numeric, 3) AS per_call, round(max_exec_time::numeric, 1) AS max,
        round(rows::numeric / calls, 1) AS rows,
        regexp_replace(left(query, 150), '\s+', ' ', 'g') FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'b24')
        ORDER BY total_exec_time DESC LIMIT 12" | sed 's/^/   /; s/|/  /g'
    say "   commits: $(pg_psql "SELECT xact_commit FROM pg_stat_database WHERE datname = 'b24'"), rollbacks: $(pg_psql "SELECT xact_rollback FROM pg_stat_database WHERE datname = 'b24'")"
  fi
  say "$FLEET_VERDICT"
  say "stored in the measured runs: sqlite ${FSTORED[sqlite]}, pg1 ${FSTORED[pg1]}, pg2 ${FSTORED[pg2]}; drains: $FDRAINS"
  say "database size after the runs: $(pg_psql "SELECT pg_size_pretty(pg_database_size('b24'))"), WAL written: $(pg_psql "SELECT pg_size_pretty(pg_current_wal_lsn() - '0/0'::pg_lsn)")"
  ! grep -qF "$pg_password" "$tmp"/fleet-pg*.log || die "the database password is in a b24 log"
  say "the database password is in none of the hosts' logs"
  ((fleet_failed == 0)) || FLEET_VERDICT+=" (the inbox did NOT drain $fleet_failed time(s))"
}
