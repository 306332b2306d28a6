# bitrix24: the bitrix24.core C module for Lua 5.4 and for LuaJIT/5.1 (one source), its specs,
# sanitizer run, fuzz targets and benchmarks. `./dev` installs the Debian packages first.

CC      ?= cc
CFLAGS  ?= -O2 -g
WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter
BASE    := -std=c11 -D_DEFAULT_SOURCE -fPIC -fvisibility=hidden $(WARN)
LIBS    := $(shell pkg-config --libs libcurl openssl 2>/dev/null || echo -lcurl -lssl -lcrypto) -lm -lpthread

LUA54_INC := $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LUA51_INC := -I/usr/include/lua5.1

SRC := $(sort $(wildcard csrc/b24_*.c))
HDR := $(wildcard csrc/*.h)

BUILD := build
SO54  := $(BUILD)/5.4/bitrix24/core.so
SO51  := $(BUILD)/5.1/bitrix24/core.so
B24   := $(BUILD)/b24
HOST_SRC := $(sort $(wildcard b24/src/*.c emulator/src/*.c))
HOST_HDR := $(wildcard b24/src/*.h emulator/src/*.h)
LUA_SRC  := $(sort $(wildcard lua/bitrix24/*.lua lua/bitrix24/*/*.lua b24/lua/b24/*.lua \
              emulator/lua/b24/*.lua emulator/lua/b24/*/*.lua))
PREFIX ?= /usr/local
HOST_LIBS := -llua5.4 -lmicrohttpd -lsqlite3 -lpq
PQ_INC    := $(shell pkg-config --cflags libpq 2>/dev/null || echo -I/usr/include/postgresql)
ASAN  := $(BUILD)/asan/bitrix24/core.so

.PHONY: all b24 test check install fuzz fuzz-run bench clean format lint lint-lua lint-c \
        lint-format fidelity

all: $(SO54) $(SO51) $(B24)

$(SO54): $(SRC) $(HDR)
	@mkdir -p $(@D)
	$(CC) $(BASE) $(CFLAGS) $(LUA54_INC) -shared -o $@ $(SRC) $(LIBS)

$(SO51): $(SRC) $(HDR)
	@mkdir -p $(@D)
	$(CC) $(BASE) $(CFLAGS) $(LUA51_INC) -shared -o $@ $(SRC) $(LIBS)

# The b24 program: the C core and the Lua layer linked in, on Lua 5.4 and libmicrohttpd.
$(BUILD)/b24_embedded.c: $(LUA_SRC) scripts/embed.lua Makefile
	@mkdir -p $(@D)
	lua5.4 scripts/embed.lua $(LUA_SRC) > $@

$(B24): $(SRC) $(HDR) $(HOST_SRC) $(HOST_HDR) $(BUILD)/b24_embedded.c
	$(CC) $(BASE) -fvisibility=default $(CFLAGS) $(LUA54_INC) $(PQ_INC) -Icsrc -Ib24/src -Iemulator/src -o $@ \
	  $(SRC) $(HOST_SRC) $(BUILD)/b24_embedded.c $(LIBS) $(HOST_LIBS) -Wl,-E

# The program alone: `make b24` builds build/b24, `make install` puts it in $(DESTDIR)$(BINDIR)
# (PREFIX=/usr/local). b24-scm-1.rockspec runs the same two targets with luarocks' BINDIR. The
# library rock (bitrix24-scm-1.rockspec) is a builtin build and uses no target here.
BINDIR ?= $(PREFIX)/bin
b24: $(B24)

install: $(B24)
	install -d $(DESTDIR)$(BINDIR)
	install -m 755 $(B24) $(DESTDIR)$(BINDIR)/b24

# Both interpreters; scripts/test.sh prints each run's failures and "N passed, N failed".
test: all
	scripts/test.sh lua5.4 luajit

# The whole suite with the module built under AddressSanitizer + UndefinedBehaviorSanitizer.
# The interpreter is not instrumented, so scripts/test.sh preloads the runtime; any report fails.
$(ASAN): $(SRC) $(HDR)
	@mkdir -p $(@D)
	$(CC) $(BASE) -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	  -fno-sanitize-recover=all $(LUA54_INC) -shared -o $@ $(SRC) $(LIBS)

# b24 itself under the same sanitizers, for the serve specs of the sanitizer run
ASAN_B24 := $(BUILD)/asan/b24
$(ASAN_B24): $(SRC) $(HDR) $(HOST_SRC) $(HOST_HDR) $(BUILD)/b24_embedded.c
	@mkdir -p $(@D)
	$(CC) $(BASE) -fvisibility=default -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	  -fno-sanitize-recover=all $(LUA54_INC) $(PQ_INC) -Icsrc -Ib24/src -Iemulator/src -o $@ \
	  $(SRC) $(HOST_SRC) $(BUILD)/b24_embedded.c $(LIBS) $(HOST_LIBS)

check: $(ASAN) $(ASAN_B24)
	scripts/test.sh sanitizers

# libFuzzer targets (clang): the form parser, the hex/base64 decoders, the log masker and the JSON
# decoder (json_decode: the scan against a reference validator, and the Lua round trips), and the
# PostgreSQL URL masker (pg_mask).
FUZZ_TARGETS := form_decode base64_decode hex_decode mask json_decode pg_mask
FUZZ_BIN := $(FUZZ_TARGETS:%=$(BUILD)/fuzz/%)
FUZZ_SECONDS ?= 60
FUZZ_FLAGS := -std=c11 -D_DEFAULT_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined $(LUA54_INC)

# the log masker (csrc/b24_logline.c), which every logged value goes through
$(BUILD)/fuzz/mask: fuzz/fuzz_mask.c fuzz/fuzz.h csrc/b24_logline.c csrc/b24.h
	@mkdir -p $(@D)
	clang $(FUZZ_FLAGS) -Icsrc -Ifuzz -o $@ $< csrc/b24_logline.c -llua5.4

# the PostgreSQL URL masker (b24/src/b24_pg.c), before any log line or error names a URL
$(BUILD)/fuzz/pg_mask: fuzz/fuzz_pg_mask.c fuzz/fuzz.h b24/src/b24_pg.c b24/src/b24_pg.h csrc/b24_logline.c
	@mkdir -p $(@D)
	clang $(FUZZ_FLAGS) $(PQ_INC) -Icsrc -Ib24/src -Ifuzz -o $@ $< b24/src/b24_pg.c \
	  csrc/b24_logline.c -lpq -llua5.4

$(BUILD)/fuzz/%: fuzz/fuzz_%.c fuzz/fuzz.h fuzz/fuzz_lua.h $(SRC) $(HDR)
	@mkdir -p $(@D)
	clang $(FUZZ_FLAGS) -Icsrc -Ifuzz -o $@ $< $(SRC) $(LIBS) -llua5.4

fuzz: $(FUZZ_BIN)

fuzz-run: $(FUZZ_BIN)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(BUILD)/fuzz/corpus-$$t; \
	  echo "== $$t ($(FUZZ_SECONDS)s)"; \
	  $(BUILD)/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    $(BUILD)/fuzz/corpus-$$t fuzz/corpus/$$t 2>&1 | grep -E 'stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY|crash-' ; \
	done

bench: all
	bench/form.sh

# The durable inbox under SIGKILL: thousands of concurrent deliveries, kill -9 mid-stream, restart
# on the same file; zero lost (CRASHTEST_ARGS, e.g. --events 20000 --senders 8 --kill-after 5000)
crashtest: $(B24)
	lua5.4 scripts/crashtest.lua $(CRASHTEST_ARGS)

# The official JS SDKs (@bitrix24/b24jssdk, @2bad/bitrix from npm), unmodified, against b24 emulate
# behind TLS (nginx): a call, a batch with references, a list of 10,000 leads; PASS/FAIL per check
fidelity: $(B24)
	scripts/fidelity.sh

# .clang-format is the C as written: on a clean tree this changes nothing
FORMAT_SRC = $(wildcard csrc/*.[ch] b24/src/*.[ch] emulator/src/*.[ch] fuzz/*.[ch])
format:
	clang-format -i $(FORMAT_SRC)

# Zero warnings from each: luacheck (.luacheckrc) on every Lua tree, cppcheck on every C tree,
# and clang-format (.clang-format) finding nothing to change. `make -k lint` reports all three;
# scripts/test.sh runs it first.
LINT_LUA := lua b24/lua emulator/lua spec examples bench scripts
LINT_C   := csrc b24/src emulator/src fuzz
lint: lint-lua lint-c lint-format

lint-lua:
	luacheck --quiet --no-color $(LINT_LUA)

# varFuncNullUB: b24_log's NULL-terminated pairs; glibc's NULL is ((void *)0), a pointer.
# toomanyconfigs: a note that it checks 12 #ifdef combinations (Lua versions), not a finding.
lint-c:
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability --std=c11 \
	  --inline-suppr --suppress=missingIncludeSystem --suppress=varFuncNullUB \
	  --suppress=toomanyconfigs -I csrc -I b24/src -I emulator/src $(LUA54_INC) $(LINT_C)

lint-format:
	clang-format --dry-run -Werror $(FORMAT_SRC)

clean:
	rm -rf $(BUILD)
