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
ASAN  := $(BUILD)/asan/bitrix24/core.so

BUSTED_5_4 := busted --lua=lua5.4 --run=lua54
BUSTED_5_1 := busted --lua=luajit --run=luajit

.PHONY: all test test-5.4 test-5.1 check fuzz fuzz-run bench clean format lint

all: $(SO54) $(SO51)

$(SO54): $(SRC) $(HDR)
	@mkdir -p $(@D)
	$(CC) $(BASE) $(CFLAGS) $(LUA54_INC) -shared -o $@ $(SRC) $(LIBS)

$(SO51): $(SRC) $(HDR)
	@mkdir -p $(@D)
	$(CC) $(BASE) $(CFLAGS) $(LUA51_INC) -shared -o $@ $(SRC) $(LIBS)

# Both interpreters; each run prints busted's own summary. `.ci/run` adds them up.
test: all
	$(BUSTED_5_4) $(BUSTED_ARGS)
	$(BUSTED_5_1) $(BUSTED_ARGS)

test-5.4: $(SO54)
	$(BUSTED_5_4) $(BUSTED_ARGS)

test-5.1: $(SO51)
	$(BUSTED_5_1) $(BUSTED_ARGS)

# The whole suite with the module built under AddressSanitizer + UndefinedBehaviorSanitizer.
# The interpreter is not instrumented, so the runtime is preloaded; any report fails the run.
ASAN_RT := $(shell $(CC) -print-file-name=libasan.so)
$(ASAN): $(SRC) $(HDR)
	@mkdir -p $(@D)
	$(CC) $(BASE) -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	  -fno-sanitize-recover=all $(LUA54_INC) -shared -o $@ $(SRC) $(LIBS)

check: $(ASAN)
	LD_PRELOAD=$(ASAN_RT) ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/.lsan-suppressions:print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  B24_CPATH=$(CURDIR)/$(BUILD)/asan/?.so busted --lua=lua5.4 --run=lua54 $(BUSTED_ARGS)

# libFuzzer targets (clang): the form parser and the hex/base64 decoders.
FUZZ_TARGETS := form_decode base64_decode hex_decode
FUZZ_BIN := $(FUZZ_TARGETS:%=$(BUILD)/fuzz/%)
FUZZ_SECONDS ?= 60
FUZZ_FLAGS := -std=c11 -D_DEFAULT_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined $(LUA54_INC)

$(BUILD)/fuzz/%: fuzz/fuzz_%.c $(SRC) $(HDR)
	@mkdir -p $(@D)
	clang $(FUZZ_FLAGS) -Icsrc -o $@ $< $(SRC) $(LIBS) -llua5.4

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

format:
	clang-format -i csrc/*.c csrc/*.h fuzz/*.c

lint:
	cppcheck --quiet --enable=warning,performance,portability --std=c11 \
	  --suppress=missingIncludeSystem -I csrc $(LUA54_INC) csrc fuzz

clean:
	rm -rf $(BUILD)
