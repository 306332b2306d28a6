#!/usr/bin/env bash
# Form codec throughput: bitrix24.core form_decode / form_encode under Lua 5.4 and LuaJIT against
# PHP's parse_str / http_build_query, on the same bodies and params in the same run.
#
#   bench/form.sh            (make bench runs it after building both modules)
#
# Decode: the captured event bodies in ../shared/vectors/events/*.form and two larger ones built
# by bench/form_bench.lua (ONCRMDEALUPDATE with a full deal and its product rows, ONTASKUPDATE
# with a long task before and after). Encode: REST params of crm.lead.add (PHONE/EMAIL/WEB/IM
# multi-fields), crm.lead.list (filter/select/order) and a 50-command batch.
# MB/s is the body decoded, or the body written, per second. Each figure is the best of 3 runs of a
# fixed number of iterations that takes about FORM_BENCH_SECONDS (1) seconds. Target: ours/PHP >= 1.0x.
# Environment: FORM_BENCH_SECONDS, B24_SHARED (default: ../shared beside the repository).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

seconds=${FORM_BENCH_SECONDS:-1}
shared=${B24_SHARED:-$root/../shared}
[[ -d $shared/vectors/events ]] || { echo "form.sh: no $shared/vectors/events (set B24_SHARED)" >&2; exit 1; }
for tool in lua5.4 luajit php; do
  command -v "$tool" >/dev/null || { echo "form.sh: $tool is not installed (./dev test installs it)" >&2; exit 1; }
done
[[ -f build/5.4/bitrix24/core.so && -f build/5.1/bitrix24/core.so ]] || make -s all

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

lua54() { LUA_CPATH="$root/build/5.4/?.so;;" lua5.4 "$@"; }
luajit51() { LUA_CPATH="$root/build/5.1/?.so;;" luajit "$@"; }

lua54 bench/form_bench.lua cases "$shared" > "$tmp/cases.json"
lua54 bench/form_bench.lua measure "$tmp/cases.json" "$seconds" > "$tmp/lua54.txt"
luajit51 bench/form_bench.lua measure "$tmp/cases.json" "$seconds" > "$tmp/luajit.txt"
php -d max_input_vars=1000000 bench/form_bench.php "$tmp/cases.json" "$seconds" > "$tmp/php.txt"

echo "form codec throughput in MB/s (best of 3 runs of ~${seconds} s each; higher is better)"
echo "  $(lua5.4 -v 2>&1 | head -1 | cut -d' ' -f1-2), $(luajit -v | cut -d' ' -f1-2), PHP $(php -r 'echo PHP_VERSION;'), $(nproc) CPUs"
echo
lua54 bench/form_bench.lua table "$tmp/cases.json" "$tmp/lua54.txt" "$tmp/luajit.txt" "$tmp/php.txt"
