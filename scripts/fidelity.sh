#!/usr/bin/env bash
# make fidelity: the official JavaScript SDKs, unmodified, against `b24 emulate`.
#   scripts/fidelity.sh    (FIDELITY_LEADS=10000, FIDELITY_PROGRAMS="b24jssdk.mjs bitrix2bad.mjs",
#                           FIDELITY_LOG=FILE keeps the emulator's log)
# Installs @bitrix24/b24jssdk and @2bad/bitrix from fidelity/package-lock.json into
# fidelity/node_modules (git-ignored), starts the emulator with the leads seeded, puts nginx with
# TLS in front of it (a CA and a server certificate made by openssl for this run; node trusts the
# CA through NODE_EXTRA_CA_CERTS, as b24jssdk insists on https), runs fidelity/b24jssdk.mjs and
# fidelity/bitrix2bad.mjs, and prints PASS/FAIL per check. Exits non-zero on any failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
LEADS=${FIDELITY_LEADS:-10000}
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

tmp=$(mktemp -d)
pids=()
cleanup() {
  local p i
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # a server still busy with a request does not stop on TERM: KILL it after 5 s
  for p in "${pids[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# A free loopback port for nginx (the emulator takes any free port itself).
free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close() })'
}

# --- TLS: a CA and a server certificate for 127.0.0.1, made for this run ---------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=b24 fidelity CA" \
  -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$tmp/server.ext"
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 2 -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>/dev/null

# --- the emulator ---------------------------------------------------------------------------------
# --enterprise (bucket 250/5): the b24jssdk client is configured for the same plan. Each list
# check uses a fresh SDK client, whose limiter knows nothing of the calls before it: --time-scale
# drains the portal's bucket 20 times faster so they do not queue behind 503s (not under test here).
"$B24" emulate --listen 127.0.0.1:0 --seed-leads "$LEADS" --code "$CODE" --enterprise --time-scale 20 \
    > "$tmp/emulator.log" 2>&1 &
pids+=($!)
emu=""
for ((i = 0; i < 600; i++)); do
  emu=$(sed -n 's/.*msg=listening address=\(127\.0\.0\.1:[0-9]*\).*/\1/p' "$tmp/emulator.log" | head -1)
  [[ -n $emu ]] && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$tmp/emulator.log" >&2; die "the emulator exited"; }
  sleep 0.1
done
[[ -n $emu ]] || { cat "$tmp/emulator.log" >&2; die "the emulator did not start"; }

# --- nginx: TLS on loopback, proxying to the emulator ---------------------------------------------
port=$(free_port)
mkdir -p "$tmp/nginx"
cat > "$tmp/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    client_max_body_size 16m;
    upstream emulator { server $emu; keepalive 8; }
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $tmp/server.pem;
        ssl_certificate_key $tmp/server.key;
        location / {
            proxy_pass http://emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_read_timeout 65s; # a portal aborts a request after 60 s
        }
    }
}
CONF
nginx -p "$tmp/nginx/" -c "$tmp/nginx.conf" -e "$tmp/nginx-error.log" > "$tmp/nginx.out" 2>&1 &
pids+=($!)
export NODE_EXTRA_CA_CERTS=$tmp/ca.pem
base=https://127.0.0.1:$port
for ((i = 0; i < 100; i++)); do
  node -e 'fetch(process.argv[1]).then(() => process.exit(0), () => process.exit(1))' "$base/" 2>/dev/null && break
  kill -0 "${pids[1]}" 2>/dev/null || { cat "$tmp/nginx.out" "$tmp/nginx-error.log" >&2; die "nginx exited"; }
  sleep 0.1
done
((i < 100)) || die "nginx did not answer on $base"
echo "== emulator at $emu ($LEADS leads), TLS by nginx at $base"

export B24_WEBHOOK=$base/rest/1/$CODE B24_LEADS=$LEADS
status=0
for program in ${FIDELITY_PROGRAMS:-b24jssdk.mjs bitrix2bad.mjs}; do
  echo "== node fidelity/$program"
  node "fidelity/$program" || status=1
done
if grep -q 'raised' "$tmp/emulator.log"; then
  echo "FAIL emulator: a method raised:"; grep 'raised' "$tmp/emulator.log" | head -5; status=1
fi
[[ -n ${FIDELITY_LOG:-} ]] && cp "$tmp/emulator.log" "$FIDELITY_LOG"
if ((status)); then echo "fidelity: FAILED"; else echo "fidelity: all checks passed"; fi
exit $status
