#!/usr/bin/env bash
# Installs the Debian 12 packages a task needs, only those that are missing.
#   scripts/deps.sh build|test|bench
# Runs apt-get as root, through sudo otherwise. Prints nothing when all are present.
set -euo pipefail

build=(build-essential pkg-config ca-certificates
       lua5.4 liblua5.4-dev liblua5.1-0-dev luajit2 libluajit2-5.1-dev lua-cjson luarocks
       libcurl4-openssl-dev libssl-dev libmicrohttpd-dev libsqlite3-dev libpq-dev)
# nginx + libnginx-mod-http-lua (which pulls lua-resty-core, lua-resty-lrucache and OpenResty's
# libluajit2) for spec/openresty_spec.lua; lua-check (luacheck), cppcheck and clang-format for
# `make lint`, which scripts/test.sh runs first; postgresql (its server binaries, initdb and
# postgres, started by the specs on a private port; the cluster Debian may start is left alone)
test=("${build[@]}" lua-busted lua-socket lua-sec openssl curl sqlite3 php-cli clang libclang-rt-14-dev
      nginx libnginx-mod-http-lua lua-check cppcheck clang-format postgresql)
bench=("${test[@]}" wrk nodejs linux-perf)

case "${1:-}" in
  build) want=("${build[@]}") ;;
  test)  want=("${test[@]}") ;;
  bench) want=("${bench[@]}") ;;
  *) echo "usage: scripts/deps.sh build|test|bench" >&2; exit 2 ;;
esac

# npm comes with nodejs from some repositories and as its own package from Debian's
[[ $1 == bench ]] && ! command -v npm >/dev/null && want+=(npm)

missing=()
for p in "${want[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "installing Debian packages: ${missing[*]}" >&2
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
