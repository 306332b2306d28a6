rockspec_format = "3.0"
package = "bitrix24"
version = "scm-1"

source = {
   url = "git+https://github.com/bitrix24-lua/bitrix24.git",
}

description = {
   summary = "Bitrix24 REST API and events for Lua, with a C core",
   detailed = [[
A Bitrix24 client (incoming webhooks: calls, batches, fast exports under the portal's rate
limits) and event receiver (outgoing webhooks: parse, verify, route), with a C core on
libcurl and OpenSSL for HTTP, PHP-compatible form marshaling and HMAC.
Works on Lua 5.1-5.4, LuaJIT and OpenResty.]],
   homepage = "https://github.com/bitrix24-lua/bitrix24",
   license = "MIT",
}

dependencies = {
   "lua >= 5.1",
   "lua-cjson",
}

external_dependencies = {
   -- Debian keeps curl/curl.h under a multiarch directory the compiler searches but luarocks
   -- does not, so the library alone locates libcurl.
   CURL = { library = "curl" },
   OPENSSL = { header = "openssl/hmac.h", library = "crypto" },
   -- the b24 host program (it embeds its own Lua 5.4, whatever Lua the rock is for)
   MICROHTTPD = { header = "microhttpd.h", library = "microhttpd" },
   SQLITE = { header = "sqlite3.h", library = "sqlite3" },
}

-- The Makefile builds bitrix24.core for the Lua luarocks targets (its headers in LUA_INCDIR)
-- and the b24 program, and installs them with every module under lua/.
build = {
   type = "make",
   build_target = "rock",
   build_variables = {
      CFLAGS = "$(CFLAGS)",
      LIBFLAG = "$(LIBFLAG)",
      LUA_INCDIR = "$(LUA_INCDIR)",
   },
   install_target = "rock-install",
   install_variables = {
      INST_LIBDIR = "$(LIBDIR)",
      INST_LUADIR = "$(LUADIR)",
      INST_BINDIR = "$(BINDIR)",
   },
}

test = {
   type = "busted",
}
