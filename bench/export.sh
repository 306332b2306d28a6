#!/usr/bin/env bash
# Export benchmark: every lead of an emulated portal, with our client and with the two npm peers,
# in one run, through the same TLS front.
#
#   bench/export.sh                 (EXPORT_LEADS=10000 by default; EXPORT_KEEP=1 keeps the logs;
#                                   EXPORT_BLOCKING=1 has the emulator sleep its simulated time in
#                                   its one worker instead of handing it to the host as a delay)
#
# The portal: b24 emulate --seed-leads N --latency 50 --row-cost 20 --count-cost 20 (50 ms per
# request, 20 µs per row returned and per row counted for a page's total, the standard 50/2 leaky
# bucket). nginx with a certificate made by openssl for this run terminates TLS in front of it
# (b24jssdk insists on https; node trusts the CA through NODE_EXTRA_CA_CERTS, our client through
# ca_file). Each client exports every lead with the same select; rows and distinct IDs are checked.
#   bitrix24 (Lua)   client:list (keyset scan: a probe for the first page and the top ID, then
#                    parallel chains of 50 referenced sub-calls over ID ranges)
#   @2bad/bitrix     leads.list (a counted first page, then batches of counted pages)
#   b24jssdk         actions.v2.callList (its "get all" action)
# HTTP requests are counted from the emulator's request log (a marker request before and after
# each export). Between exports the script waits for the portal's bucket to drain, so no client
# inherits another's. Targets: <= 5 requests for 10,000 rows, >= 10x faster than the faster peer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
LEADS=${EXPORT_LEADS:-10000}
CODE=bench0export0code1 # the webhook code of this throwaway portal (not a secret)

die() { echo "export: $*" >&2; exit 1; }
for c in node npm nginx openssl curl; do
  command -v "$c" >/dev/null || die "$c is missing: scripts/deps.sh bench installs it"
done
[[ -x build/b24 ]] || die "build/b24 is missing: run make"

# The peers, exactly as locked in bench/package-lock.json.
if [[ ! -d bench/node_modules/@2bad/bitrix || ! -d bench/node_modules/@bitrix24/b24jssdk ||
      bench/package-lock.json -nt bench/node_modules/.package-lock.json ]]; then
  echo "== npm ci (bench/)" >&2
  npm ci --prefix bench --no-audit --no-fund --loglevel=error >&2
fi

. scripts/lib/tls-front.sh
tmp=$(mktemp -d)
cleanup() {
  tls_front_stop
  if [[ -n ${EXPORT_KEEP:-} ]]; then echo "export: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# --- TLS: a CA and a certificate for 127.0.0.1 ---------------------------------------------------
tls_front_certs "$tmp" "b24 bench CA"

# --- the emulator ------------------------------------------------------------------------------
EMU_ARGS=(--seed-leads "$LEADS" --latency 50 --row-cost 20 --count-cost 20 --code "$CODE")
if [[ -n ${EXPORT_BLOCKING:-} ]]; then
  # the same portal, its simulated time slept in the worker instead of held by the host
  args=$(printf '"%s", ' "${EMU_ARGS[@]}")
  cat > "$tmp/emulate.lua" <<LUA
local emulator = require "b24.emulator"
local opts = emulator.parse_args({ $args })
opts.blocking_delay = true
return emulator.handler(opts)
LUA
  build/b24 serve --listen 127.0.0.1:0 --workers 1 "$tmp/emulate.lua" > "$tmp/emulator.log" 2>&1 &
else
  build/b24 emulate --help >/dev/null 2>&1 || die "this build/b24 has no emulate command: run make"
  build/b24 emulate --listen 127.0.0.1:0 "${EMU_ARGS[@]}" > "$tmp/emulator.log" 2>&1 &
fi
tls_front_pids+=($!)
emu=$(tls_front_emulator_address "$tmp/emulator.log" "${tls_front_pids[0]}")

# --- nginx: TLS on loopback, proxying to the emulator ------------------------------------------
port=$(tls_front_free_port)
tls_front_nginx_conf "$tmp" "$emu" "$port" 16 600s "\
    # bodies and answers stay in memory: nginx's workers cannot write into this run's 0700 tmp dir
    client_body_buffer_size 16m;
    proxy_buffers 64 64k;
    proxy_max_temp_file_size 0;
    # @2bad/bitrix sends its batches as GET query strings longer than nginx's default 8k lines
    large_client_header_buffers 8 256k;"
base=https://127.0.0.1:$port
tls_front_start_nginx "$tmp" "$base/" curl -s --cacert "$tmp/ca.pem" -o /dev/null
export NODE_EXTRA_CA_CERTS=$tmp/ca.pem
webhook=$base/rest/1/$CODE/
echo "== emulator at $emu ($LEADS leads, --latency 50 --row-cost 20 --count-cost 20), TLS by nginx at $base"

# --- request counting from the emulator's log --------------------------------------------------
marks=0
mark_line=0
mark() { # sends a marker request, waits for its log line, sets mark_line to the log's length then
  marks=$((marks + 1))
  curl -s -o /dev/null "http://$emu/mark/$marks" || true
  for ((j = 0; j < 200; j++)); do
    grep -q "path=/mark/$marks " "$tmp/emulator.log" && break
    sleep 0.05
  done
  mark_line=$(wc -l < "$tmp/emulator.log")
}
requests_between() { # from to: REST requests logged between two marks
  sed -n "$(($1 + 1)),$2p" "$tmp/emulator.log" | grep -E 'msg="?request' | grep -cE 'path="?/rest/' || true
}

results=()
run() { # name, command…
  local name=$1; shift
  local from to out n
  mark
  from=$mark_line
  out=$("$@") || die "$name failed: $out"
  mark
  to=$mark_line
  n=$(requests_between "$from" "$to")
  results+=("$name|$n|$out")
  echo "   $name: $out, $n HTTP requests" >&2
  # let the portal's bucket (50, draining 2/s) empty before the next client
  sleep "$(node -e "console.log(Math.min(25, $n / 2 + 0.5))")"
}

echo "== bitrix24 (Lua)" >&2
run "bitrix24 (Lua)" build/b24 run bench/export/client.lua "$webhook" "$tmp/ca.pem"
echo "== @2bad/bitrix" >&2
run "@2bad/bitrix" env B24_WEBHOOK="$webhook" node bench/export/peer.mjs 2bad
echo "== @bitrix24/b24jssdk" >&2
run "@bitrix24/b24jssdk" env B24_WEBHOOK="$webhook" node bench/export/peer.mjs b24jssdk

# --- the table ---------------------------------------------------------------------------------
node - "$LEADS" "${results[@]}" <<'JS'
const [leads, ...rows] = process.argv.slice(2)
const data = rows.map((r) => {
  const [name, n, json] = r.split('|')
  const o = JSON.parse(json)
  return { name, requests: Number(n), rows: o.rows, unique: o.unique, seconds: o.seconds }
})
const ours = data[0]
const peers = data.slice(1)
const fastest = peers.reduce((a, b) => (a.seconds <= b.seconds ? a : b))
const pad = (s, n) => String(s).padEnd(n)
const lpad = (s, n) => String(s).padStart(n)
console.log()
console.log(`export of ${leads} leads (crm.lead.list), one run`)
console.log(pad('client', 22) + lpad('rows', 7) + lpad('unique', 8) + lpad('requests', 10) + lpad('seconds', 10) + lpad('vs ours', 10))
for (const d of data) {
  const ratio = d === ours ? '1.0x' : (d.seconds / ours.seconds).toFixed(1) + 'x'
  console.log(pad(d.name, 22) + lpad(d.rows, 7) + lpad(d.unique, 8) + lpad(d.requests, 10) + lpad(d.seconds.toFixed(2), 10) + lpad(ratio, 10))
}
const speedup = fastest.seconds / ours.seconds
const okRows = ours.rows === Number(leads) && ours.unique === Number(leads)
const okReq = ours.requests <= 5 || Number(leads) !== 10000
console.log()
console.log(`ours: ${ours.requests} requests (target <= 5 for 10,000 rows): ${okReq ? 'met' : 'MISSED'}`)
console.log(`ours vs the faster peer (${fastest.name}): ${speedup.toFixed(1)}x faster (target >= 10x): ${speedup >= 10 ? 'met' : 'MISSED'}`)
if (!okRows) console.log(`ours exported ${ours.rows} rows (${ours.unique} distinct), ${leads} expected: WRONG`)
for (const p of peers) {
  if (p.rows !== Number(leads) || p.unique !== Number(leads)) console.log(`${p.name}: ${p.rows} rows (${p.unique} distinct), ${leads} expected`)
}
JS
