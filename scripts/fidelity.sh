#!/usr/bin/env bash
# make fidelity: the official JavaScript SDKs, unmodified, against `b24 emulate`.
#   scripts/fidelity.sh    (FIDELITY_LEADS=10000, FIDELITY_DEALS=1000,
#                           FIDELITY_PROGRAMS="b24jssdk.mjs b24jssdk-crm.mjs bitrix2bad.mjs",
#                           FIDELITY_LOG=FILE keeps the emulator's log)
# Installs @bitrix24/b24jssdk and @2bad/bitrix from fidelity/package-lock.json into
# fidelity/node_modules (git-ignored), starts the emulator with the leads seeded, puts nginx with
# TLS in front of it (a CA and a server certificate made by openssl for this run; node trusts the
# CA through NODE_EXTRA_CA_CERTS, as b24jssdk insists on https), runs fidelity/b24jssdk.mjs (calls,
# batch, full lists), fidelity/b24jssdk-crm.mjs (crm.item and user-field round trips) and
# fidelity/bitrix2bad.mjs, and prints PASS/FAIL per check. Exits non-zero on any failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
LEADS=${FIDELITY_LEADS:-10000}
DEALS=${FIDELITY_DEALS:-1000} # listed through crm.item.list by b24jssdk-crm.mjs
B24=${B24_BIN:-build/b24} # another b24 (e.g. build/asan/b24) with B24_BIN
CODE=fidelity0code0001 # the webhook code of this throwaway portal (not a secret)

die() { echo "fidelity: $*" >&2; exit 1; }
for c in node npm nginx openssl; do
  command -v "$c" >/dev/null || die "$c is missing: scripts/deps.sh bench installs it"
done
"$B24" emulate --help >/dev/null 2>&1 || die "$B24 emulate is missing: run make"

# The SDKs, exactly as locked. npm ci only when the lock changed since the last install.
if [[ ! -f fidelity/node_modules/.package-lock.json ||
      fidelity/package-lock.json -nt fidelity/node_modules/.package-lock.json ]]; then
  echo "== npm ci (fidelity/)"
  npm ci --prefix fidelity --no-audit --no-fund --loglevel=error >&2
fi

. scripts/lib/tls-front.sh
tmp=$(mktemp -d)
cleanup() {
  tls_front_stop 50 # a server still busy with a request does not stop on TERM: KILL it after 5 s
  rm -rf "$tmp"
}
trap cleanup EXIT

# --- TLS: a CA and a server certificate for 127.0.0.1, made for this run ---------------------
tls_front_certs "$tmp" "b24 fidelity CA"

# --- the emulator ---------------------------------------------------------------------------------
# --enterprise (bucket 250/5): the b24jssdk client is configured for the same plan. Each list
# check uses a fresh SDK client, whose limiter knows nothing of the calls before it: --time-scale
# drains the portal's bucket 20 times faster so they do not queue behind 503s (not under test here).
"$B24" emulate --listen 127.0.0.1:0 --seed-leads "$LEADS" --seed-deals "$DEALS" --code "$CODE" --enterprise \
    --time-scale 20 \
    > "$tmp/emulator.log" 2>&1 &
tls_front_pids+=($!)
emu=$(tls_front_emulator_address "$tmp/emulator.log" "${tls_front_pids[0]}")

# --- nginx: TLS on loopback, proxying to the emulator ---------------------------------------------
# A free loopback port for nginx (the emulator takes any free port itself). Reads time out after
# 65 s: a portal aborts a request after 60 s.
port=$(tls_front_free_port)
tls_front_nginx_conf "$tmp" "$emu" "$port" 8 65s
export NODE_EXTRA_CA_CERTS=$tmp/ca.pem
base=https://127.0.0.1:$port
tls_front_start_nginx "$tmp" "$base/" node -e 'fetch(process.argv[1]).then(() => process.exit(0), () => process.exit(1))'
echo "== emulator at $emu ($LEADS leads, $DEALS deals), TLS by nginx at $base"

export B24_WEBHOOK=$base/rest/1/$CODE B24_LEADS=$LEADS B24_DEALS=$DEALS
status=0
for program in ${FIDELITY_PROGRAMS:-b24jssdk.mjs b24jssdk-crm.mjs bitrix2bad.mjs}; do
  echo "== node fidelity/$program"
  node "fidelity/$program" || status=1
done
if grep -q 'raised' "$tmp/emulator.log"; then
  echo "FAIL emulator: a method raised:"; grep 'raised' "$tmp/emulator.log" | head -5; status=1
fi
[[ -n ${FIDELITY_LOG:-} ]] && cp "$tmp/emulator.log" "$FIDELITY_LOG"
if ((status)); then echo "fidelity: FAILED"; else echo "fidelity: all checks passed"; fi
exit $status
