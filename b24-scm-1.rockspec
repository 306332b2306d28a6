rockspec_format = "3.0"
package = "b24"
version = "scm-1"

source = {
   url = "git+https://github.com/bitrix24-lua/bitrix24.git",
}

description = {
   summary = "b24: a Bitrix24 webhook receiver running Lua handler scripts, and a local portal",
   detailed = [[
The b24 program: `b24 serve` verifies Bitrix24 outgoing-webhook deliveries, commits them to a
SQLite inbox and runs Lua handler scripts with retries; `b24 call`, `b24 export` and `b24 run`
use the REST API from a shell; `b24 emulate` is a Bitrix24 portal for development and tests.
One executable on GNU libmicrohttpd and SQLite with its own Lua 5.4 and the bitrix24 library
built in, so it needs no Lua rock at run time. The library alone is bitrix24-scm-1.rockspec.]],
   homepage = "https://github.com/bitrix24-lua/bitrix24",
   license = "MIT",
}

-- b24 embeds Lua 5.4 whatever Lua luarocks runs for, and every module it runs.
dependencies = { "lua >= 5.4, < 5.5" }

external_dependencies = {
   -- Debian keeps curl/curl.h under a multiarch directory the compiler searches but luarocks
   -- does not, so the library alone locates libcurl.
   CURL = { library = "curl" },
   OPENSSL = { header = "openssl/hmac.h", library = "crypto" },
   LUA54 = { header = "lua5.4/lua.h", library = "lua5.4" },
   MICROHTTPD = { header = "microhttpd.h", library = "microhttpd" },
   SQLITE = { header = "sqlite3.h", library = "sqlite3" },
}

-- The Makefile's targets: `make b24` (build/b24), then `make install` into the rock's bin.
build = {
   type = "make",
   build_target = "b24",
   build_variables = {
      CFLAGS = "$(CFLAGS)",
   },
   install_target = "install",
   install_variables = {
      BINDIR = "$(BINDIR)",
   },
}
