-- b24 serve over real HTTP on loopback: the request table, answers, limits, errors, the
-- built-in endpoints, logs, reload and drain.
local b24 = require "helpers.b24"
local core = require "bitrix24.core"
local cjson = require "cjson"

local ECHO = [[
local cjson = require "cjson"
return function(req)
  if req.path == "/boom" then error("kaboom, application_token=secret0token0value") end
  if req.path == "/table" then error({ code = 42 }) end
  if req.path == "/badstatus" then return "ok" end
  if req.path == "/halfstatus" then return 200.5, {}, "" end
  if req.path == "/floatstatus" then return 202.0, {}, "float" end
  if req.path == "/badheader" then return 200, { ["X-Evil"] = "a\r\nInjected: 1" }, "" end
  return 201, { ["Content-Type"] = "application/json", ["X-Handler"] = "echo" },
    cjson.encode{ method = req.method, path = req.path, query = req.query, body = req.body,
                  headers = req.headers, remote_addr = req.remote_addr }
end
]]

describe("b24 serve", function()
   local srv
   setup(function() srv = b24.start{ script = ECHO, args = { "--max-body", "1000" } } end)
   teardown(function() if srv then srv:stop() end end)

   it("hands the handler the request table and returns its status, headers and body", function()
      local res = assert(srv:request{ method = "POST", path = "/hook/x?a=1&b=%20",
         headers = { ["Content-Type"] = "application/x-www-form-urlencoded", ["X-Custom"] = "Yes" },
         body = "event=ONCRMLEADADD&data[FIELDS][ID]=7" })
      assert.equal(201, res.status)
      assert.equal("echo", res.headers["x-handler"])
      local got = cjson.decode(res.body)
      assert.equal("POST", got.method)
      assert.equal("/hook/x", got.path)
      assert.equal("a=1&b=%20", got.query)
      assert.equal("event=ONCRMLEADADD&data[FIELDS][ID]=7", got.body)
      assert.equal("127.0.0.1", got.remote_addr)
      assert.equal("Yes", got.headers["x-custom"])
      assert.equal("application/x-www-form-urlencoded", got.headers["content-type"])
      assert.is_nil(got.headers["X-Custom"])
   end)

   it("passes any method and an empty query and body", function()
      local res = assert(srv:request{ method = "DELETE", path = "/thing" })
      local got = cjson.decode(res.body)
      assert.equal("DELETE", got.method)
      assert.equal("", got.query)
      assert.equal("", got.body)
   end)

   it("keeps a binary body byte for byte", function()
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local body = table.concat(bytes)
      local res = assert(srv:request{ method = "PUT", path = "/bin", body = body })
      assert.equal(body, cjson.decode(res.body).body)
   end)

   it("answers 413 to a body over --max-body without calling the handler", function()
      local res = assert(srv:request{ method = "POST", path = "/big", body = string.rep("x", 1001) })
      assert.equal(413, res.status)
      assert.equal("request body too large", cjson.decode(res.body).error)
   end)

   it("answers 413 to a chunked body that grows over --max-body", function()
      local res = assert(srv:request{ method = "POST", path = "/big",
         headers = { ["Transfer-Encoding"] = "chunked" }, body = string.rep("y", 5000) })
      assert.equal(413, res.status)
   end)

   it("accepts a body of exactly --max-body bytes", function()
      local res = assert(srv:request{ method = "POST", path = "/edge", body = string.rep("z", 1000) })
      assert.equal(201, res.status)
      assert.equal(1000, #cjson.decode(res.body).body)
   end)

   it("answers 500 with a generic body when the handler raises, and logs the traceback masked", function()
      local from = #srv.lines + 1
      local res = assert(srv:request{ path = "/boom" })
      assert.equal(500, res.status)
      assert.equal('{"error":"internal error"}', res.body)
      assert.not_matches("kaboom", res.body, 1, true)
      local line = assert(srv:wait_log('msg="handler failed"'))
      assert.matches("kaboom", line, 1, true)
      assert.matches("stack traceback", line, 1, true)
      assert.not_matches("secret0token0value", srv:log(from), 1, true)
   end)

   it("answers 500 when the handler raises a non-string error", function()
      assert.equal(500, assert(srv:request{ path = "/table" }).status)
   end)

   it("answers 500 when the handler returns a bad status or a header with CR/LF", function()
      assert.equal(500, assert(srv:request{ path = "/badstatus" }).status)
      assert.equal(500, assert(srv:request{ path = "/halfstatus" }).status)
      -- an integral float (a JSON decoder's 202.0) is that status
      local float = assert(srv:request{ path = "/floatstatus" })
      assert.equal(202, float.status)
      assert.equal("float", float.body)
      local res = assert(srv:request{ path = "/badheader" })
      assert.equal(500, res.status)
      assert.is_nil(res.headers["injected"])
   end)

   it("serves /healthz itself", function()
      local res = assert(srv:request{ path = "/healthz" })
      assert.equal(200, res.status)
      local h = cjson.decode(res.body)
      assert.equal("ok", h.status)
      assert.equal(0, h.in_flight)
   end)

   it("serves /metrics in the Prometheus text format with counts by status", function()
      assert(srv:request{ path = "/counted" })
      local res = assert(srv:request{ path = "/metrics" })
      assert.equal(200, res.status)
      assert.matches("^text/plain", res.headers["content-type"])
      local n201 = tonumber(res.body:match('b24_requests_total{code="201"} (%d+)'))
      assert.is_true(n201 >= 1)
      assert.matches("# TYPE b24_request_duration_seconds histogram", res.body, 1, true)
      assert.matches('b24_request_duration_seconds_bucket{le="+Inf"} ', res.body, 1, true)
      assert.matches("b24_handler_errors_total %d+", res.body)
      -- this very request; an earlier one may still be finishing (its answer is out before the
      -- server's completion callback counts it down), so ask again until only this one is left
      local in_flight = tonumber(res.body:match("b24_in_flight_requests (%d+)"))
      for _ = 1, 200 do
         if in_flight == 1 then break end
         local r = assert(srv:request{ path = "/metrics" })
         in_flight = tonumber(r.body:match("b24_in_flight_requests (%d+)"))
      end
      assert.equal(1, in_flight)
      local again = assert(srv:request{ path = "/counted" })
      assert.equal(201, again.status)
      local res2 = assert(srv:request{ path = "/metrics" })
      assert.equal(n201 + 1, tonumber(res2.body:match('b24_requests_total{code="201"} (%d+)')))
   end)

   it("logs one logfmt line per request with a masked webhook code", function()
      assert(srv:request{ path = "/rest/1/abcdef0123456789/crm.lead.add?auth=x" })
      local line = assert(srv:wait_log('path="/rest/1/***/crm.lead.add?auth=x"'))
      assert.matches("level=info msg=request method=GET", line, 1, true)
      assert.matches("status=201", line, 1, true)
      assert.not_matches("abcdef0123456789", srv:log(), 1, true)
      assert(srv:request{ path = "/rest/12/odd_code-with-dash9/user.current" })
      assert(srv:wait_log("path=/rest/12/***/user.current"))
      assert.not_matches("odd_code", srv:log(), 1, true)
      assert.not_matches("with-dash9", srv:log(), 1, true)
   end)

   it("logs a request whose path is longer than a log field holds, and goes on serving", function()
      local long = "/rest/1/abcdef123456/batch?" .. string.rep("cmd%5Bc0%5D=crm.lead.list%3Fstart%3D5000&", 150)
      assert.is_true(#long > 6000)
      local res = assert(srv:request{ path = long })
      assert.equal(201, res.status)
      assert(srv:wait_log("path=\"/rest/1/***/batch?cmd"))
      assert.equal(201, (assert(srv:request{ path = "/after-long" })).status)
      assert(srv:wait_log("path=/after-long"))
   end)

   it("refuses malformed HTTP in the server library, never reaching the handler", function()
      local socket = require "socket"
      local c = assert(socket.connect("127.0.0.1", srv.port))
      c:settimeout(10)
      assert(c:send("THIS IS NOT HTTP\r\n\r\n"))
      local status = c:receive("*l")
      c:close()
      assert.matches("^HTTP/1%.1 4%d%d", status)
      local ok = assert(srv:request{ path = "/healthz" })
      assert.equal(200, ok.status)
   end)
end)

describe("b24 serve timeouts", function()
   it("closes the connection of a client that stalls mid-request", function()
      local srv = b24.start{ script = ECHO, args = { "--client-timeout", "1" } }
      finally(function() srv:stop() end)
      local socket = require "socket"
      local c = assert(socket.connect("127.0.0.1", srv.port))
      c:settimeout(20)
      assert(c:send("POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial"))
      local data, err, partial = c:receive("*a")
      c:close()
      -- the server hung up on us (closed), it did not answer 201 for a half-sent body
      assert.is_not_nil(data or partial)
      assert.not_matches("201", data or partial or "", 1, true)
      assert.is_nil(err == "timeout" and err or nil)
   end)
end)

describe("b24 serve start-up", function()
   local dir
   setup(function() dir = b24.tmpdir() end)
   teardown(function() os.execute("rm -rf " .. b24.quote(dir)) end)

   local function serve(args)
      return b24.exec(b24.quote(b24.bin) .. " serve --listen 127.0.0.1:0 " .. args)
   end

   it("exits 1 naming file and line when the script has a syntax error", function()
      local path = b24.write(dir .. "/broken.lua", "return function(req)\n  return 200,, 'x'\nend\n")
      local out, code = serve(b24.quote(path))
      assert.equal(1, code)
      assert.matches("broken.lua:2:", out, 1, true)
   end)

   it("exits 1 when the script raises while loading", function()
      local path = b24.write(dir .. "/raises.lua", "local x = nil\nreturn x.field\n")
      local out, code = serve(b24.quote(path))
      assert.equal(1, code)
      assert.matches("raises.lua:2:", out, 1, true)
   end)

   it("exits 1 when the script returns neither a function nor a router", function()
      local path = b24.write(dir .. "/number.lua", "return 42\n")
      local out, code = serve(b24.quote(path))
      assert.equal(1, code)
      assert.matches("must return a function handler(request) or a table with a handle method", out, 1, true)
   end)

   it("accepts a router table whose handle comes from a metatable", function()
      local path = b24.write(dir .. "/router.lua", [[
local Router = {}
Router.__index = Router
function Router:handle(req) return 200, {}, "routed " .. req.path end
return setmetatable({}, Router)
]])
      local srv = b24.start{ script_path = path }
      finally(function() srv:stop() end)
      local res = assert(srv:request{ path = "/r" })
      assert.equal("routed /r", res.body)
   end)

   it("exits 1 when the script file is missing", function()
      local out, code = serve(b24.quote(dir .. "/absent.lua"))
      assert.equal(1, code)
      assert.matches("absent.lua", out, 1, true)
   end)

   it("prints usage and exits 2 on a bad option", function()
      local path = b24.write(dir .. "/ok.lua", "return function() return 200 end\n")
      for _, args in ipairs{ "--workers 0 ", "--max-body lots ", "--bogus ", "--log-format xml ", "" } do
         local out, code = serve(args .. (args == "" and "" or b24.quote(path)))
         assert.equal(2, code, args)
         assert.matches("usage: b24 serve", out, 1, true)
      end
      local out, code = b24.exec("B24_WORKERS=zero " .. b24.quote(b24.bin) .. " serve " .. b24.quote(path))
      assert.equal(2, code)
      assert.matches("B24_WORKERS", out, 1, true)
   end)

   it("writes JSON log lines with --log-format json", function()
      local srv = b24.start{ script = ECHO, args = { "--log-format", "json" } }
      finally(function() srv:stop() end)
      assert(srv:request{ path = "/j" })
      local line = assert(srv:wait_log('"path":"/j"'))
      local rec = cjson.decode(line)
      assert.equal("request", rec.msg)
      assert.equal("info", rec.level)
      assert.equal("201", rec.status)
   end)

   it("takes its options from the environment", function()
      local srv = b24.start{ script = ECHO, env = "B24_MAX_BODY=10" }
      finally(function() srv:stop() end)
      assert.equal(413, assert(srv:request{ method = "POST", path = "/e", body = string.rep("a", 11) }).status)
   end)

   it("takes an empty B24_LOG_FORMAT or B24_LOG_LEVEL as unset", function()
      local srv = b24.start{ script = ECHO, env = "B24_LOG_FORMAT= B24_LOG_LEVEL=" }
      finally(function() srv:stop() end)
      assert.equal(201, assert(srv:request{ path = "/empty-env" }).status)
      assert(srv:wait_log("level=info msg=request method=GET path=/empty-env")) -- logfmt at info
      local _, code = b24.exec(b24.clean .. "B24_LOG_FORMAT=yaml " .. b24.quote(b24.bin) .. " serve x.lua")
      assert.equal(2, code)
   end)
end)

describe("b24 serve signals", function()
   it("blocks its signals in every thread, one the script starts while it loads included", function()
      -- a post at load time starts the post thread before anything listens: were it to take
      -- SIGHUP (unblocked), the process would end instead of reloading
      local dir = b24.tmpdir()
      local path = b24.write(dir .. "/p.lua", 'require("b24.emulator.post").post("http://127.0.0.1:9/x", "a=1", '
         .. '{ ["Content-Type"] = "application/x-www-form-urlencoded" })\n'
         .. "return function() return 200, {}, 'ok' end\n")
      local srv = b24.start{ script_path = path }
      finally(function() srv:stop(); os.execute("rm -rf " .. b24.quote(dir)) end)
      assert(srv:wait_log("post failed; not retried"))
      local masks, n = {}, 0
      local tasks = assert(io.popen("ls /proc/" .. srv.pid .. "/task"))
      for tid in tasks:lines() do
         if tid ~= srv.pid then -- the main thread waits in sigwait, which unblocks what it waits for
            local f = io.open("/proc/" .. srv.pid .. "/task/" .. tid .. "/status")
            if f then
               local blk = f:read("a"):match("SigBlk:%s*(%x+)")
               f:close()
               n = n + 1
               -- SIGHUP (1), SIGINT (2), SIGTERM (15): bits 0, 1 and 14
               local bits = tonumber(blk:sub(-4), 16)
               for _, bit in ipairs{ 0, 1, 14 } do
                  if math.floor(bits / 2 ^ bit) % 2 ~= 1 then masks[#masks + 1] = tid .. ":" .. blk end
               end
            end
         end
      end
      tasks:close()
      assert.is_true(n >= 2, "threads: " .. n)
      assert.same({}, masks)
      for _ = 1, 3 do srv:signal("HUP") end
      assert(srv:wait_log("msg=\"script reloaded\""))
      assert.equal("ok", assert(srv:request{ path = "/" }).body)
   end)

   it("reloads the script on SIGHUP without dropping a request under traffic", function()
      local dir = b24.tmpdir()
      local path = b24.write(dir .. "/v.lua", "return function() return 200, {}, 'v1' end\n")
      local srv = b24.start{ script_path = path }
      finally(function() srv:stop(); os.execute("rm -rf " .. b24.quote(dir)) end)
      -- 400 requests from another process while the script is replaced and reloaded
      local loop = ("for i in $(seq 400); do curl -s -o /dev/null -w '%%{http_code}\\n' %s; done")
         :format(srv:url("/x"))
      local load = assert(io.popen(b24.clean .. "sh -c " .. b24.quote(loop)))
      b24.write(path .. ".new", "return function() return 200, {}, 'v2' end\n")
      os.rename(path .. ".new", path)
      srv:signal("HUP")
      assert(srv:wait_log("msg=\"script reloaded\""))
      local body
      for _ = 1, 100 do -- every thread picks the new generation up before its next request
         body = assert(srv:request{ path = "/x" }).body
         if body == "v2" then break end
      end
      assert.equal("v2", body)
      local codes = load:read("a")
      load:close()
      local n, bad = 0, {}
      for code in codes:gmatch("%d+") do
         n = n + 1
         if code ~= "200" then bad[#bad + 1] = code end
      end
      assert.equal(400, n)
      assert.same({}, bad)
      -- a script that now fails to load keeps the old one, and says why
      b24.write(path, "return function( oops\n")
      srv:signal("HUP")
      assert(srv:wait_log("reload failed; keeping the previous script"))
      assert.equal("v2", assert(srv:request{ path = "/x" }).body)
      local m = assert(srv:request{ path = "/metrics" }).body
      assert.matches('b24_reloads_total{result="ok"} 1', m, 1, true)
      assert.matches('b24_reloads_total{result="failed"} 1', m, 1, true)
   end)

   it("on SIGTERM stops accepting, finishes the request in flight, and exits 0", function()
      local dir = b24.tmpdir()
      os.execute("mkfifo " .. b24.quote(dir .. "/started") .. " " .. b24.quote(dir .. "/release"))
      local script = ([[
return function(req)
  if req.path == "/slow" then
    local f = assert(io.open(%q, "w")); f:write("in\n"); f:close()   -- tell the spec we are in
    local g = assert(io.open(%q, "r")); g:read("a"); g:close()        -- wait for the spec
    return 200, {}, "finished"
  end
  return 200, {}, "fast"
end
]]):format(dir .. "/started", dir .. "/release")
      local srv = b24.start{ script = script }
      finally(function() srv:stop("KILL"); os.execute("rm -rf " .. b24.quote(dir)) end)
      local slow = assert(io.popen(b24.clean .. ("curl -s -w ' %%{http_code}' %s"):format(srv:url("/slow"))))
      local started = assert(io.open(dir .. "/started", "r")) -- blocks until the handler runs
      assert.equal("in\n", started:read("a"))
      started:close()
      srv:signal("TERM")
      assert(srv:wait_log("msg=stopping in_flight=1"))
      -- no new connections once stopping
      local _, _, kind = core.http{ timeout = 5 }:request{ url = srv:url("/fast") }
      assert.equal("connect", kind)
      local release = assert(io.open(dir .. "/release", "w"))
      release:write("go")
      release:close()
      assert.equal("finished 200", slow:read("a"))
      slow:close()
      assert(srv:wait_log("msg=stopped unfinished=0"))
      assert.equal(0, srv:stop())
   end)

   it("exits 0 on SIGINT", function()
      local srv = b24.start{ script = ECHO }
      assert(srv:request{ path = "/x" })
      assert.equal(0, srv:stop("INT"))
   end)
end)

describe("b24 serve handler options", function()
   local socket = require "socket"
   local SCRIPT = [[
return function(req)
  if req.path == "/held" then
    require("b24.host").log("info", "holding")
    return 200, { ["X-Held"] = "yes" }, "held answer", { delay = 3600 } end
  if req.path == "/short" then return 202, {}, "short", { delay = 0.05 } end
  if req.path == "/drop" then return 200, {}, "never sent", { close = true } end
  if req.path == "/baddelay" then return 200, {}, "", { delay = -1 } end
  if req.path == "/badopts" then return 200, {}, "", "delay" end
  return 200, {}, "fast"
end
]]
   local function raw(srv, path)
      local c = assert(socket.connect("127.0.0.1", srv.port))
      assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
      return c
   end

   it("holds a delayed answer without holding the only worker, and sends it on SIGTERM", function()
      local srv = b24.start{ script = SCRIPT, args = { "--workers", "1" } }
      finally(function() srv:stop("KILL") end)
      local held = raw(srv, "/held")
      assert(srv:wait_log("msg=holding")) -- the handler has run; its answer now waits
      -- the single worker answers others while /held waits out its hour
      for _ = 1, 3 do assert.equal("fast", (assert(srv:request{ path = "/fast" })).body) end
      local res = assert(srv:request{ path = "/short" })
      assert.equal(202, res.status)
      assert.equal("short", res.body)
      held:settimeout(0)
      local got, err = held:receive("*a")
      assert.is_nil(got)
      assert.equal("timeout", err)
      held:settimeout(10)
      srv:signal("TERM")
      local all = held:receive("*a")
      held:close()
      assert.matches("^HTTP/1.1 200", all)
      assert.matches("X%-Held: yes", all)
      assert.matches("held answer$", all)
      assert.equal(0, srv:stop())
   end)

   it("drops the connection without an answer on { close = true }", function()
      local srv = b24.start{ script = SCRIPT }
      finally(function() srv:stop("KILL") end)
      local c = raw(srv, "/drop")
      c:settimeout(10)
      local got, err, partial = c:receive("*a")
      c:close()
      assert.equal("", got or partial)
      assert.is_true(got == "" or err == "closed")
      assert(srv:wait_log("\"request aborted\" method=GET path=/drop"))
      assert.equal("fast", (assert(srv:request{ path = "/fast" })).body)
   end)

   it("answers 500 to bad options", function()
      local srv = b24.start{ script = SCRIPT }
      finally(function() srv:stop("KILL") end)
      assert.equal(500, (assert(srv:request{ path = "/baddelay" })).status)
      assert.equal(500, (assert(srv:request{ path = "/badopts" })).status)
      assert(srv:wait_log("bad delay"))
   end)
end)

describe("b24 run", function()
   local dir
   setup(function() dir = b24.tmpdir() end)
   teardown(function() os.execute("rm -rf " .. b24.quote(dir)) end)

   local function run(src, args)
      local path = b24.write(dir .. "/script.lua", src)
      return b24.exec(b24.quote(b24.bin) .. " run " .. b24.quote(path) .. " " .. (args or ""))
   end

   it("runs a script with bitrix24 preloaded and arg set", function()
      local out, code = run([[
local bitrix24 = require "bitrix24"
print(bitrix24.core.form_encode{ a = { 1, 2 } }, arg[0]:match("script.lua$"), arg[1], arg[2], select("#", ...))
]], "one 'two words'")
      assert.equal(0, code)
      assert.equal("a%5B0%5D=1&a%5B1%5D=2\tscript.lua\tone\ttwo words\t2\n", out)
   end)

   it("posts through b24.emulator.post once, in order, before it exits; failures only logged", function()
      local recorder = b24.start{ script = [[
local host = require "b24.host"
return function(req)
  host.log("info", "recorded", { body = req.body, type = req.headers["content-type"] or "" })
  if req.body == "fail=1" then return 500, {}, "no" end
  return 200, {}, "ok"
end
]] }
      finally(function() recorder:stop() end)
      local out, code = run(([[
local host = require "b24.host"
local post = require("b24.emulator.post").post
assert(post(%q, "a=1&b=2", { ["Content-Type"] = "application/x-www-form-urlencoded" }))
assert(post(%q, "fail=1"))
assert(post("http://127.0.0.1:1/rest/1/secretcode123/x", "c=3"))
assert(not pcall(post, "ftp://x/", "d"))
assert(not pcall(post, %q, "d", { ["X-Bad"] = "a\r\nb" }))
print(host.isatty(1), host.post)
assert(post(%q, "last=1"))
os.exit(0) -- still sends what was queued
]]):format(recorder:url("/in"), recorder:url("/in"), recorder:url("/in"), recorder:url("/in")), "2>&1")
      assert.equal(0, code)
      assert.matches("false\tnil", out) -- b24.host has no post: it is the emulator's
      assert.matches("post refused; not retried.*status=500", out)
      assert.matches("post failed; not retried.*url=http://127.0.0.1:1/%.%.%.", out)
      assert.not_matches("secretcode123", out)
      local first = assert(recorder:wait_log("body=\"a=1&b=2\" type=application/x-www-form-urlencoded"))
      assert(recorder:wait_log("body=\"fail=1\""))
      assert(recorder:wait_log("body=\"last=1\""))
      local n = 0
      for _, line in ipairs(recorder.lines) do if line:find("msg=recorded", 1, true) then n = n + 1 end end
      assert.equal(3, n) -- the refused one is not retried
      assert.truthy(first)
   end)

   it("sends what b24.emulator.post queued when the script just ends, too", function()
      local recorder = b24.start{ script = [[
return function(req)
  require("b24.host").log("info", "recorded", { body = req.body })
  return 200, {}, "ok"
end
]] }
      finally(function() recorder:stop() end)
      local _, code = run(("assert(require('b24.emulator.post').post(%q, 'ended=1')) return 0")
         :format(recorder:url("/in")))
      assert.equal(0, code)
      assert(recorder:wait_log("body=\"ended=1\""))
   end)

   it("exits with the status the script gives", function()
      local _, code = run("os.exit(7)")
      assert.equal(7, code)
      _, code = run("return 3")
      assert.equal(3, code)
      _, code = run("return false")
      assert.equal(1, code)
   end)

   it("exits 1 with the error and traceback when the script raises, secrets masked", function()
      local out, code = run("error('no luck calling https://p.bitrix24.ru/rest/1/abcdef0123456789/x')")
      assert.equal(1, code)
      assert.matches("script.lua:1: no luck", out, 1, true)
      assert.matches("stack traceback", out, 1, true)
      assert.matches("/rest/1/***/x", out, 1, true)
      assert.not_matches("abcdef0123456789", out, 1, true)
   end)

   it("exits 1 on a missing script and 2 without one", function()
      local out, code = b24.exec(b24.quote(b24.bin) .. " run " .. b24.quote(dir .. "/nope.lua"))
      assert.equal(1, code)
      assert.matches("nope.lua", out, 1, true)
      local _, code2 = b24.exec(b24.quote(b24.bin) .. " run")
      assert.equal(2, code2)
   end)
end)

describe("b24", function()
   it("prints its version and help, and refuses unknown commands with status 2", function()
      local out, code = b24.exec(b24.quote(b24.bin) .. " --version")
      assert.equal(0, code)
      assert.matches("^b24 %d+%.%d+%.%d+", out)
      out, code = b24.exec(b24.quote(b24.bin) .. " help")
      assert.equal(0, code)
      assert.matches("b24 serve", out, 1, true)
      out, code = b24.exec(b24.quote(b24.bin) .. " frobnicate")
      assert.equal(2, code)
      assert.matches("unknown command 'frobnicate'", out, 1, true)
   end)
end)
