-- Issue 12, items 3 and 4: no handler wedges b24 serve or its stop, and a clean stop leaves
-- nothing behind. Each server runs under a watchdog (its log streamer ends after
-- B24_SPEC_TIMEOUT seconds, and stop() then returns nil): never a timing assertion.
local b24 = require "helpers.b24"
local inbox = require "helpers.inbox"
local socket = require "socket"

local WATCHDOG = "B24_SPEC_TIMEOUT=90 "

local function start(script, args)
   return b24.start{ script = script, args = args, env = WATCHDOG }
end

-- A request sent from another process, its status written to a file.
local function background(srv, path, out, method)
   os.execute(("%scurl -s -m 80 -X %s -o /dev/null -w '%%{http_code}' %s > %s 2>/dev/null &")
      :format(b24.clean, method or "GET", b24.quote(srv:url(path)), b24.quote(out)))
end

local function healthz_ok(srv)
   local res = srv:request{ path = "/healthz" }
   return res and res.status == 200
end

-- Stops the server with SIGTERM; the exit status (nil when the watchdog fired), and the
-- process killed if it is still there.
local function stop(srv)
   local pid = srv.pid
   local code = srv:stop("TERM")
   os.execute("kill -KILL " .. pid .. " 2>/dev/null")
   return code
end

local ROUTER = [[
local bitrix24 = require "bitrix24"
local router = bitrix24.router{ tokens = %s }
router:on("*", function(event)
   local data = type(event.data) == "table" and event.data or {}
   if data.LOOP == "1" then
      require("b24.host").log("info", "looping") -- the spec stops the server once it is in the loop
      while true do pcall(function() while true do end end) end
   end
end)
%s
return router
]]

local function router_script(extra)
   local parts = {}
   for k, v in pairs(inbox.tokens()) do parts[#parts + 1] = ("[%q] = %q"):format(k, v) end
   return ROUTER:format("{ " .. table.concat(parts, ", ") .. " }", extra or "")
end

describe("b24 serve: no handler wedges the server or its stop", function()
   it("ends a handler inside the request that loops under pcall, or in a coroutine, with a 500", function()
      -- no hook runs while a call is in time: a watchdog signals the thread of one past its
      -- deadline, whatever state runs there (a coroutine resumed, wrapped or being closed)
      local srv = start([[
return function(req)
   if req.path == "/spin" then while true do pcall(function() while true do end end) end end
   if req.path == "/co" then coroutine.wrap(function() while true do end end)() end
   if req.path == "/xco" then
      while true do coroutine.resume(coroutine.create(function() while true do end end)) end
   end
   if req.path == "/close" then -- a coroutine's to-be-closed variable that loops when closed
      local co = coroutine.create(function()
         local _ <close> = setmetatable({}, { __close = function() while true do end end })
         coroutine.yield()
      end)
      coroutine.resume(co)
      while true do pcall(coroutine.close, co) end
   end
   -- blocking C calls of the library end once the call is late: a sleep, a request never answered
   if req.path == "/sleep" then require("bitrix24.core").sleep(600) end
   if req.path == "/rest" then
      local session = require("bitrix24.core").http{ timeout = 600 }
      session:request{ url = "http://127.0.0.1:" .. req.query .. "/" }
   end
   if req.path == "/wrapped" then -- coroutine.wrap as Lua's: values through, errors raised
      local f = coroutine.wrap(function(a) local b = coroutine.yield(a + 1) error("boom " .. b) end)
      local first = f(1)
      local ok, err = pcall(f, 5)
      return 200, {}, first .. " " .. tostring(ok) .. " " .. tostring(err)
   end
   return 200, {}, "ok"
end
]], { "--workers", "2", "--request-timeout", "1", "--drain-timeout", "1" })
      assert.equal(500, srv:request{ path = "/spin" }.status)
      assert.equal(500, srv:request{ path = "/co" }.status)
      assert.equal(500, srv:request{ path = "/xco" }.status)
      assert.equal(500, srv:request{ path = "/close" }.status)
      -- (the client's own timeout is 30 s: past that, no answer and the assertion fails)
      assert.equal(500, srv:request{ path = "/sleep" }.status)
      local silent = assert(socket.bind("127.0.0.1", 0)) -- accepts in the kernel, never answers
      local _, port = silent:getsockname()
      assert.equal(500, srv:request{ path = "/rest?" .. port }.status)
      silent:close()
      assert.matches("^2 false .*:%d+: boom 5$", srv:request{ path = "/wrapped" }.body)
      assert.equal("ok", srv:request{ path = "/" }.body)
      assert(srv:wait_log("ran past its deadline"))
      assert.equal(0, stop(srv))
   end)

   it("ends at once with the script's code when a handler calls os.exit", function()
      -- Lua's os.exit ran exit(3) beside the server's live threads: a thread crashed on a lock
      -- OpenSSL's exit handler had freed, and under the sanitizers the process hung
      local srv = start([[
return function(req)
   if req.path == "/exit" then os.exit(3) end
   if req.path == "/badexit" then os.exit("soon") end -- a bad code: the handler fails, nothing ends
   return 200, {}, "ok"
end
]], { "--workers", "2" })
      assert.equal("ok", srv:request{ path = "/" }.body)
      assert.equal(500, srv:request{ path = "/badexit" }.status)
      assert.matches("bad argument #1 to '[%w.]*exit'", assert(srv:wait_log("bad argument #1 to")))
      srv:request{ path = "/exit" } -- no answer: the process is gone
      local line = assert(srv:wait_log("b24-exit="))
      assert.equal("b24-exit=3", line)
      assert.matches("the script called os.exit", srv:log(), 1, true)
      assert.equal(3, srv:stop())
   end)

   it("answers /healthz while a worker loops, and SIGTERM ends it with status 0", function()
      local srv = start("return function(req) while true do pcall(function() while true do end end) end end",
         { "--workers", "2", "--request-timeout", "600", "--drain-timeout", "1" })
      local out = os.tmpname()
      background(srv, "/spin", out)
      local busy
      for _ = 1, 2000 do -- the looping request is in flight once /healthz counts it
         local res = srv:request{ path = "/healthz" }
         assert.equal(200, res.status)
         busy = res.body:match('"in_flight":1')
         if busy then break end
         os.execute("sleep 0.01")
      end
      assert(busy, "the looping request is in flight")
      assert.equal(0, stop(srv))
      os.remove(out)
   end)

   it("ends a router's accept that loops with a 500 and keeps serving", function()
      local srv = start(router_script([[
local accept = router.accept
router.accept = function(self, req)
   if req.path == "/loop" then while true do end end
   return accept(self, req)
end]]), { "--workers", "2", "--request-timeout", "1", "--sync" })
      assert.equal(500, srv:request{ method = "POST", path = "/loop", body = "x" }.status)
      assert.is_true(healthz_ok(srv))
      assert.equal(0, stop(srv))
   end)

   it("refuses a script whose top level loops, at start and on SIGHUP", function()
      local dir = b24.tmpdir()
      local path = b24.write(dir .. "/loop.lua", "while true do pcall(function() while true do end end) end\n")
      local out, code = b24.exec(b24.quote(b24.bin) .. " serve --listen 127.0.0.1:0 --request-timeout 1 " ..
         b24.quote(path))
      assert.equal(1, code)
      assert.matches("deadline", out, 1, true)
      b24.write(path, "return function() return 200, {}, 'v1' end\n")
      local srv = b24.start{ script_path = path, args = { "--request-timeout", "1" }, env = WATCHDOG }
      b24.write(path, "while true do end\n")
      srv:signal("HUP")
      assert(srv:wait_log("reload failed; keeping the previous script"))
      assert.equal("v1", srv:request{ path = "/" }.body)
      assert.equal(0, stop(srv))
      os.execute("rm -rf " .. b24.quote(dir))
   end)

   it("stops with status 0 while an inbox handler loops under pcall, and releases its delivery", function()
      local dir = b24.tmpdir()
      local db = dir .. "/inbox.sqlite"
      local srv = start(router_script(), { "--inbox", db, "--handler-threads", "1",
         "--handler-timeout", "600", "--drain-timeout", "1", "--max-attempts", "1" })
      local looping = inbox.form{ name = "ONCRMDEALUPDATE", id = "1", data = { LOOP = "1" } }
      assert.equal(200, inbox.post(srv, looping).status)
      for i = 2, 20 do
         assert.equal(200, inbox.post(srv, inbox.form{ name = "ONCRMDEALUPDATE", id = tostring(i) }).status)
      end
      assert.is_true(healthz_ok(srv))
      assert(srv:wait_log("msg=looping")) -- its handler thread is in the loop now
      assert.equal(0, stop(srv))
      assert.matches("delivery released", srv:log(), 1, true)
      -- nothing the stop left may be a dead letter on the next start, with --max-attempts 1
      local out = b24.exec("sqlite3 " .. b24.quote(db) ..
         " \"SELECT (SELECT count(*) FROM dead),"
         .. " (SELECT count(*) FROM deliveries WHERE state = 'running' OR attempts > 0)\"")
      assert.equal("0|0", (out:gsub("%s+$", "")))
      os.execute("rm -rf " .. b24.quote(dir))
   end)
end)

describe("b24 serve: a clean stop leaves nothing behind", function()
   it("answers 503 to a delivery waiting for an inbox another writer holds, and exits 0", function()
      local dir = b24.tmpdir()
      local db = dir .. "/inbox.sqlite"
      local srv = start(router_script(), { "--inbox", db, "--drain-timeout", "2" })
      assert.equal(200, inbox.post(srv, inbox.form{ name = "ONCRMDEALADD", id = "1" }).status)
      local held = dir .. "/held"
      -- the CLI waits for the lock (the server may be writing the first delivery's outcome) and,
      -- with -bail, touches `held` only once BEGIN IMMEDIATE succeeded
      local hold = "(printf '.timeout 20000\\nBEGIN IMMEDIATE;\\n.shell touch %s\\n'; sleep 60)"
         .. " | sqlite3 -bail %s >/dev/null 2>&1"
         .. " & echo $! > %s"
      os.execute(hold:format(held, b24.quote(db), b24.quote(dir .. "/holder")))
      for _ = 1, 2000 do
         if b24.read(held) then break end
         os.execute("sleep 0.01")
      end
      assert(b24.read(held), "the other writer holds the inbox")
      local out = dir .. "/status"
      b24.write(dir .. "/body", inbox.form{ name = "ONCRMDEALADD", id = "2" })
      local post = "%scurl -s -m 80 -H 'Content-Type: %s' --data-binary @%s -o /dev/null"
         .. " -w '%%{http_code}' %s > %s 2>/dev/null &"
      os.execute(post:format(b24.clean, inbox.FORM, b24.quote(dir .. "/body"), b24.quote(srv:url("/hook")),
         b24.quote(out)))
      for _ = 1, 2000 do -- the request is in flight once /healthz counts it
         local res = srv:request{ path = "/healthz" }
         if res and res.body:match('"in_flight":1') then break end
         os.execute("sleep 0.01")
      end
      local code = stop(srv)
      -- the holder is sqlite3 (the pipeline's last command); its feeder's sleep ends by itself.
      -- No pkill: under the sanitizer run every child inherits LD_PRELOAD, and pkill hung there.
      os.execute("kill $(cat " .. b24.quote(dir .. "/holder") .. ") 2>/dev/null")
      assert.equal(0, code)
      assert.not_matches("Fatal error", srv:log(), 1, true)
      local status
      for _ = 1, 2000 do
         status = b24.read(out)
         if status and status ~= "" then break end
         os.execute("sleep 0.01")
      end
      assert.equal("503", status)
      os.execute("rm -rf " .. b24.quote(dir))
   end)
end)
