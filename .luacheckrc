-- luacheck (Debian lua-check): `make lint` runs it on lua/, b24/lua, emulator/lua, spec/,
-- examples/, bench/ and scripts/ with zero warnings.
-- max: the globals of every Lua from 5.1 to 5.4 and LuaJIT, since one source runs on all of them
-- and picks at run time (`table.unpack or unpack`, `setfenv` where it exists)
std = "max"
max_line_length = 120
codes = true

files["spec/"] = { std = "+busted" }
-- code that runs inside nginx (ngx_lua / OpenResty): its `ngx` and `ndk` globals
files["lua/bitrix24/ngx.lua"] = { std = "+ngx_lua" }
files["lua/bitrix24/transport/ngx.lua"] = { std = "+ngx_lua" }
files["examples/openresty/"] = { std = "+ngx_lua" }
-- ingest_token: set in the bench's init_by_lua_block (bench/ingest/nginx.conf.in)
files["bench/ingest/nginx_handler.lua"] = { std = "+ngx_lua", read_globals = { "ingest_token" } }

-- wrk scripts: wrk calls the global functions setup/init/request/response/done, reads and sets
-- fields of `wrk`, and shares only globals between a script's threads (thread:set/get)
stds.wrk = { globals = { "wrk", "setup", "init", "delay", "request", "response", "done" } }
files["bench/ingest/post.lua"] = { std = "+wrk" }
-- distinct.lua: tid set by setup(), the answer counters read back by done()
files["bench/ingest/distinct.lua"] = {
   globals = { "ok", "duplicate", "other" }, read_globals = { "tid" }, std = "+wrk",
}
