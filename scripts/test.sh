#!/usr/bin/env bash
# scripts/test.sh [lint|lua5.4|luajit|sanitizers…] (all four by default): `make lint` (one check:
# luacheck, cppcheck, clang-format), then the busted suite under Lua 5.4, under LuaJIT, and under
# Lua 5.4 with the module and b24 built with AddressSanitizer + UndefinedBehaviorSanitizer.
# Ends with the line "N passed, N failed": busted's TAP counts of all runs, plus the lint check.
set -uo pipefail
cd "$(dirname "$0")/.."
# spec/serve_limits_spec.lua holds 1,100 sockets open from the busted process: a login shell's
# soft open-file limit (1024 on Debian) is raised to the hard one, as the server does for itself
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
passed=0 failed=0 status=0

run() { # name, command…
  local name=$1; shift
  echo "== $name"
  # a watchdog: a hung spec must fail the run, not stall CI. timeout leads its own process
  # group, so whatever a spec left running (a server after a failure) is ended with it.
  timeout -k 10 900 "$@" -o TAP > "$log/$name.tap" 2> "$log/$name.err" &
  local pid=$!
  wait $pid
  local rc=$?
  kill -- -"$pid" 2>/dev/null
  local p f
  p=$(grep -c '^ok ' "$log/$name.tap")
  f=$(grep -c '^not ok ' "$log/$name.tap")
  if [[ $f -gt 0 || $rc -ne 0 ]]; then
    sed -n '/^not ok/,/^ok /p' "$log/$name.tap" | grep -v '^ok ' | head -200
    [[ $rc -eq 124 ]] && echo "$name: the watchdog ended the run during: $(grep '^# spec/' "$log/$name.tap" | tail -1)"
    grep -v -E '^(Terminated|Killed|Aborted|sh: 1: kill: )' "$log/$name.err" | tail -40
    status=1
    [[ $f -eq 0 ]] && f=1 # the runner itself failed (a crash, a sanitizer report)
  fi
  echo "$name: $p passed, $f failed"
  passed=$((passed + p)) failed=$((failed + f))
}

lint() { # one check: any warning of `make lint` fails it (and the run)
  echo "== lint"
  local p=1 f=0
  if ! make -s -k lint > "$log/lint.out" 2>&1; then
    head -150 "$log/lint.out"
    local n; n=$(wc -l < "$log/lint.out")
    [[ $n -gt 150 ]] && echo "… $((n - 150)) more lines of make lint"
    p=0 f=1 status=1
  fi
  echo "lint: $p passed, $f failed"
  passed=$((passed + p)) failed=$((failed + f))
}

[[ $# -gt 0 ]] || set -- lint lua5.4 luajit sanitizers
for name in "$@"; do
  case $name in
    lint) lint ;;
    lua5.4) run lua5.4 busted --lua=lua5.4 --run=lua54 ;;
    luajit) run luajit busted --lua=luajit --run=luajit ;;
    sanitizers)
      if make -s build/asan/bitrix24/core.so build/asan/b24 > "$log/asan-build.log" 2>&1; then
        run sanitizers env LD_PRELOAD="$(cc -print-file-name=libasan.so)" \
          ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1 \
          UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
          B24_CPATH="$PWD/build/asan/?.so" B24_BIN="$PWD/build/asan/b24" \
          busted --lua=lua5.4 --run=lua54
      else
        cat "$log/asan-build.log"; failed=$((failed + 1)); status=1
      fi ;;
    *) echo "unknown run '$name' (lint, lua5.4, luajit, sanitizers)" >&2; exit 2 ;;
  esac
done

echo "$passed passed, $failed failed"
exit $status
