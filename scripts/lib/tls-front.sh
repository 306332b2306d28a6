# scripts/lib/tls-front.sh: a throwaway TLS front for `b24 emulate`, for bash scripts to source
# (bench/export.sh, scripts/fidelity.sh). Not run on its own.
#
# The pieces: a CA and a server certificate for 127.0.0.1 made by openssl for this run, the
# emulator's address read from its log, a free loopback port, an nginx.conf that terminates TLS on
# that port and proxies to the emulator, nginx started and waited for, and the background
# processes stopped at the end. What differs per script (the emulator's options, nginx's extra
# directives, how to probe nginx, how long to wait for a process to stop) stays in the script.
#
# The caller: runs under `set -euo pipefail`, defines die MESSAGE (prints it with the script's
# prefix and exits non-zero), keeps every file in one private temporary directory DIR, appends
# each background process it starts to tls_front_pids, and calls tls_front_stop from its EXIT trap.
# Files in DIR: ca.pem ca.key server.pem server.key (+ csr, ext, srl), nginx.conf, nginx/ (nginx's
# prefix and temp dirs), nginx.pid, nginx-error.log, nginx.out.

declare -F die >/dev/null || die() { echo "$*" >&2; exit 1; }

# Background processes (emulator, nginx), in start order; tls_front_stop ends them.
tls_front_pids=()

# tls_front_stop [GRACE]: TERM every process in tls_front_pids, then reap each. With GRACE (tenths
# of a second), a process still there after GRACE is sent KILL first (a server busy with a
# request does not stop on TERM); without, it is waited for as long as it takes.
tls_front_stop() {
  local grace=${1:-} p i
  for p in "${tls_front_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${tls_front_pids[@]}"; do
    if [[ -n $grace ]]; then
      for ((i = 0; i < grace; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
}

# tls_front_free_port: prints a TCP port free on 127.0.0.1 at this moment (asks node's net).
tls_front_free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close() })'
}

# tls_front_certs DIR CA_NAME: a CA named CA_NAME (DIR/ca.pem, ca.key) and a server certificate
# it signs for IP 127.0.0.1 and DNS localhost (DIR/server.pem, server.key), valid 2 days.
tls_front_certs() {
  local dir=$1 ca_name=$2
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$ca_name" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
}

# tls_front_emulator_address LOG PID: waits (up to 60 s) for the "msg=listening address=..." line
# of a b24 started on 127.0.0.1:0 (process PID, logging to LOG) and prints its 127.0.0.1:PORT.
# Dies, showing the log, if the process exits first or the line does not come.
tls_front_emulator_address() {
  local log=$1 pid=$2 addr="" i
  for ((i = 0; i < 600; i++)); do
    addr=$(sed -n 's/.*msg=listening address=\(127\.0\.0\.1:[0-9]*\).*/\1/p' "$log" | head -1)
    [[ -n $addr ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "the emulator exited"; }
    sleep 0.1
  done
  [[ -n $addr ]] || { cat "$log" >&2; die "the emulator did not start"; }
  echo "$addr"
}

# tls_front_nginx_conf DIR UPSTREAM PORT KEEPALIVE READ_TIMEOUT [EXTRA]: writes DIR/nginx.conf
# (and makes DIR/nginx/): one worker in the foreground, TLS with DIR/server.pem on 127.0.0.1:PORT,
# everything proxied over HTTP/1.1 to UPSTREAM (host:port) with KEEPALIVE idle connections kept
# and READ_TIMEOUT (e.g. 65s) per read. EXTRA: more directives for the http block, as lines.
tls_front_nginx_conf() {
  local dir=$1 upstream=$2 port=$3 keepalive=$4 read_timeout=$5 extra=${6:-}
  mkdir -p "$dir/nginx"
  cat > "$dir/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    client_max_body_size 16m;
${extra:+$extra
}    upstream emulator { server $upstream; keepalive $keepalive; }
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $dir/server.pem;
        ssl_certificate_key $dir/server.key;
        location / {
            proxy_pass http://emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_read_timeout $read_timeout;
        }
    }
}
CONF
}

# tls_front_start_nginx DIR URL PROBE...: starts nginx with DIR/nginx.conf (added to
# tls_front_pids) and waits (up to 10 s) until `PROBE... URL` succeeds (its stderr discarded).
# Dies, showing nginx's output, if nginx exits first or never answers.
tls_front_start_nginx() {
  local dir=$1 url=$2 pid i
  shift 2
  nginx -p "$dir/nginx/" -c "$dir/nginx.conf" -e "$dir/nginx-error.log" > "$dir/nginx.out" 2>&1 &
  pid=$!
  tls_front_pids+=("$pid")
  for ((i = 0; i < 100; i++)); do
    "$@" "$url" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$dir/nginx.out" "$dir/nginx-error.log" >&2; die "nginx exited"; }
    sleep 0.1
  done
  die "nginx did not answer on ${url%/}"
}
