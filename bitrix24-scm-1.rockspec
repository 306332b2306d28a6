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
Works on Lua 5.1-5.4, LuaJIT and OpenResty. The library only: the b24 program (webhook
receiver, shell commands, portal emulator) is its own rock, b24-scm-1.rockspec.]],
   homepage = "https://github.com/bitrix24-lua/bitrix24",
   license = "MIT",
}

dependencies = {
   "lua >= 5.1", -- JSON is the core's own (json_encode/json_decode): no lua-cjson
}

external_dependencies = {
   -- Debian keeps curl/curl.h under a multiarch directory the compiler searches but luarocks
   -- does not, so the library alone locates libcurl.
   CURL = { library = "curl" },
   OPENSSL = { header = "openssl/hmac.h", library = "crypto" },
}

-- The C module bitrix24.core from csrc/ (one source for every Lua: csrc/b24_compat.h) and the
-- Lua library from lua/bitrix24/. spec/rock_spec.lua checks that both lists name every file.
build = {
   type = "builtin",
   modules = {
      ["bitrix24.core"] = {
         sources = {
            "csrc/b24_arena.c", "csrc/b24_core.c", "csrc/b24_crypto.c", "csrc/b24_form.c",
            "csrc/b24_form_parse.c", "csrc/b24_http.c", "csrc/b24_json.c", "csrc/b24_json_decode.c",
            "csrc/b24_json_encode.c", "csrc/b24_json_form.c", "csrc/b24_json_number.c",
            "csrc/b24_json_scan.c", "csrc/b24_json_string.c", "csrc/b24_json_walk.c",
            "csrc/b24_logline.c", "csrc/b24_time.c",
         },
         defines = { "_DEFAULT_SOURCE" },
         incdirs = { "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)" },
         libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)" },
         libraries = { "curl", "ssl", "crypto", "m", "pthread" },
      },
      ["bitrix24"] = "lua/bitrix24/init.lua",
      ["bitrix24.error"] = "lua/bitrix24/error.lua",
      ["bitrix24.client"] = "lua/bitrix24/client.lua",
      ["bitrix24.export"] = "lua/bitrix24/export.lua",
      ["bitrix24.log"] = "lua/bitrix24/log.lua",
      ["bitrix24.router"] = "lua/bitrix24/router.lua",
      ["bitrix24.dedup"] = "lua/bitrix24/dedup.lua",
      ["bitrix24.event"] = "lua/bitrix24/event.lua",
      ["bitrix24.events"] = "lua/bitrix24/events.lua",
      ["bitrix24.webhook"] = "lua/bitrix24/webhook.lua",
      ["bitrix24.hints"] = "lua/bitrix24/hints.lua",
      ["bitrix24.commands"] = "lua/bitrix24/commands.lua",
      ["bitrix24.bucket"] = "lua/bitrix24/bucket.lua",
      ["bitrix24.listplan"] = "lua/bitrix24/listplan.lua",
      ["bitrix24.app"] = "lua/bitrix24/app.lua",
      ["bitrix24.appstore"] = "lua/bitrix24/appstore.lua",
      ["bitrix24.oauth"] = "lua/bitrix24/oauth.lua",
      ["bitrix24.offline"] = "lua/bitrix24/offline.lua",
      ["bitrix24.reconcile"] = "lua/bitrix24/reconcile.lua",
      ["bitrix24.ngx"] = "lua/bitrix24/ngx.lua",
      ["bitrix24.transport.curl"] = "lua/bitrix24/transport/curl.lua",
      ["bitrix24.transport.ngx"] = "lua/bitrix24/transport/ngx.lua",
   },
}

test = {
   type = "busted",
}
