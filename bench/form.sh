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
# fixed number of iterations that takes about FORM_BENCH_SECONDS (1) seconds, the implementations
# taking turns. Target: ours/PHP >= 1.0x.
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

php54() { php -d max_input_vars=1000000 "$@"; }

lua54 bench/form_bench.lua cases "$shared" > "$tmp/cases.json"

# The machine may be shared: every case is run by the three implementations in turn, three rounds,
# so that a busy spell costs each of them alike; the table keeps each one's best round.
declare -A runner=([lua54]="lua54 bench/form_bench.lua" [luajit]="luajit51 bench/form_bench.lua"
                   [php]="php54 bench/form_bench.php")
impls=(lua54 luajit php)
for impl in "${impls[@]}"; do
  ${runner[$impl]} calibrate "$tmp/cases.json" "$seconds" > "$tmp/n.$impl"
done
# the same work on both sides: PHP's body of each case is as long as ours (keys may come in
# another order: PHP keeps the JSON order, form_encode sorts)
if ! cmp -s <(cut -f1,2,4 "$tmp/n.lua54") <(cut -f1,2,4 "$tmp/n.php"); then
  echo "form.sh: PHP and form_encode write bodies of different lengths:" >&2
  paste "$tmp/n.lua54" "$tmp/n.php" >&2
  exit 1
fi
cases=$(cut -f1,2 "$tmp/n.lua54")
while read -r kind i; do
  for round in 1 2 3; do
    for impl in "${impls[@]}"; do
      n=$(awk -v k="$kind" -v i="$i" '$1 == k && $2 == i { print $3 }' "$tmp/n.$impl")
      t=$(${runner[$impl]} time "$tmp/cases.json" "$kind" "$i" "$n")
      echo "$impl $kind $i $n $t" >> "$tmp/results"
    done
  done
done <<< "$cases"

echo "form codec throughput in MB/s (best of 3 rounds of ~${seconds} s each; higher is better)"
echo "  $(lua5.4 -v 2>&1 | head -1 | cut -d' ' -f1-2), $(luajit -v | cut -d' ' -f1-2), PHP $(php -r 'echo PHP_VERSION;'), $(nproc) CPUs"
echo
lua54 bench/form_bench.lua table "$tmp/cases.json" "$tmp/results"
