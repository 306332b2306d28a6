-- Background jobs under `b24 serve` (host.job, host.wake) and host.inbox_put (issue 16, host side):
-- real servers, real SQLite inbox files, waits on log lines. A job that must be caught in the middle
-- of a run waits for a file the spec creates; every server runs under a watchdog (its log streamer
-- ends after B24_SPEC_TIMEOUT seconds), never a timing assertion.
local b24 = require "helpers.b24"
local inbox = require "helpers.inbox"
local core = require "bitrix24.core"

local WATCHDOG = "B24_SPEC_TIMEOUT=30 "

-- A server of script (source), its inbox in a fresh directory unless args say otherwise.
local function start(script, args, dir)
   dir = dir or b24.tmpdir()
   local all = { "--workers", "2", "--inbox", dir .. "/inbox.sqlite" }
   for _, a in ipairs(args or {}) do all[#all + 1] = a end
   local srv = b24.start{ script = script, args = all, env = WATCHDOG }
   local pid = srv.pid
   finally(function() -- a failed test leaves no server behind
      if not srv.stopped then srv:stop("KILL") end
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      os.execute("rm -rf " .. b24.quote(dir))
   end)
   return srv
end

-- Stops the server with SIGTERM: its exit status (nil when the watchdog fired).
local function stop(srv)
   local pid = srv.pid
   local code = srv:stop("TERM")
   os.execute("kill -KILL " .. pid .. " 2>/dev/null")
   return code
end

local function count(text, needle)
   local n, from = 0, 1
   while true do
      local at = text:find(needle, from, true)
      if not at then return n end
      n, from = n + 1, at + #needle
   end
end

-- The value of one line of /metrics (nil when absent).
local function metric(srv, line)
   local text = srv:request{ path = "/metrics" }.body
   local value = text:match("\n" .. line:gsub("%p", "%%%0") .. " (%S+)")
   return tonumber(value)
end

-- Lua source: wait until the file at path exists (a job or handler held mid-run by the spec).
local function wait_file(path)
   return ("do local p = %q; while true do local f = io.open(p) if f then f:close() break end end end"):format(path)
end

describe("b24 serve: host.job and host.wake", function()
   it("runs a job on its interval, and at once after host.wake from a request handler", function()
      local srv = start([[
local host = require "b24.host"
local ticks, woken = 0, 0
host.job("tick", 0.05, function() ticks = ticks + 1; host.log("info", "tick", { n = ticks }) end)
host.job("woken", 3600, function() woken = woken + 1; host.log("info", "woken", { n = woken }) end)
return function(req)
   return 200, {}, tostring(host.wake(req.query:match("name=([^&]*)") or ""))
end
]])
      assert(srv:wait_log("msg=tick n=1"))
      assert(srv:wait_log("msg=tick n=2")) -- the interval, again
      assert(srv:wait_log("msg=woken n=1")) -- the first run at start; the next in an hour
      assert.equal("true", srv:request{ path = "/?name=woken" }.body)
      assert(srv:wait_log("msg=woken n=2"))
      assert.equal("false", srv:request{ path = "/?name=nope" }.body)
      assert.is_true(metric(srv, 'b24_job_runs_total{job="woken",outcome="ok"}') >= 2)
      assert.equal(0, metric(srv, 'b24_job_runs_total{job="woken",outcome="error"}'))
      assert.is_true(metric(srv, 'b24_job_last_run_seconds{job="tick"}') > 1.7e9)
      assert.equal(0, stop(srv))
   end)

   it("coalesces wakes during a run into one more run after it", function()
      local dir = b24.tmpdir()
      local srv = start(([[
local host = require "b24.host"
local runs = 0
host.job("slow", 3600, function()
   runs = runs + 1
   host.log("info", "slow", { n = runs })
   %s
end)
host.job("marker", 3600, function() host.log("info", "marker") end)
return function(req) return 200, {}, tostring(host.wake(req.query:match("name=([^&]*)") or "")) end
]]):format(wait_file(dir .. "/go")), { "--handler-timeout", "50" }, dir)
      assert(srv:wait_log("msg=slow n=1"))
      for _ = 1, 3 do assert.equal("true", srv:request{ path = "/?name=slow" }.body) end
      b24.write(dir .. "/go", "")
      assert(srv:wait_log("msg=slow n=2"))
      -- woken after slow's second run began: a third run of slow, had a wake been left over,
      -- would be due as early and comes first (jobs due together run in registration order)
      assert.equal("true", srv:request{ path = "/?name=marker" }.body)
      assert(srv:wait_log("msg=marker"))
      assert.equal(0, count(srv:log(), "msg=slow n=3"))
      assert.equal(2, metric(srv, 'b24_job_runs_total{job="slow",outcome="ok"}'))
      assert.equal(0, stop(srv))
   end)

   it("runs a job that returns 0 again at once, and one that raises again at its next time", function()
      local srv = start([[
local host = require "b24.host"
local again, raised = 0, 0
host.job("again", 3600, function()
   again = again + 1
   host.log("info", "again", { n = again })
   if again < 5 then return 0 end
end)
host.job("raiser", 0.05, function()
   raised = raised + 1
   host.log("info", "raiser", { n = raised })
   if raised == 1 then error("boom access_token=0123456789abcdef0123456789abcdef") end
end)
return function() return 200, {}, "ok" end
]])
      assert(srv:wait_log("msg=again n=5")) -- an interval of an hour: only the 0s bring these
      local failed = assert(srv:wait_log("job failed"))
      assert.truthy(failed:find("job=raiser", 1, true))
      assert.truthy(failed:find("boom", 1, true))
      assert.falsy(failed:find("0123456789abcdef0123456789abcdef", 1, true)) -- masked
      assert(srv:wait_log("msg=raiser n=2"))
      assert.equal(1, metric(srv, 'b24_job_runs_total{job="raiser",outcome="error"}'))
      assert.equal(0, stop(srv))
   end)

   it("cuts an endless loop in a job at the handler deadline; the server stays healthy", function()
      local srv = start([[
local host = require "b24.host"
local runs = 0
host.job("loop", 0.05, function()
   runs = runs + 1
   if runs == 1 then while true do pcall(function() while true do end end) end end
   host.log("info", "survived", { n = runs })
end)
return function() return 200, {}, "ok" end
]], { "--handler-timeout", "0.3" })
      local failed = assert(srv:wait_log("job failed"))
      assert.truthy(failed:find("job=loop", 1, true))
      assert.truthy(failed:find("--handler-timeout", 1, true))
      assert(srv:wait_log("msg=survived n=2"))
      local res = srv:request{ path = "/healthz" }
      assert.equal(200, res.status)
      assert.equal("ok", srv:request{ path = "/" }.body)
      assert.equal(0, stop(srv))
   end)

   it("lets the run under way finish on SIGTERM, starts no new one, and exits 0", function()
      local dir = b24.tmpdir()
      local srv = start(([[
local host = require "b24.host"
host.job("long", 0.05, function()
   host.log("info", "long_started")
   %s
   host.log("info", "long_finished")
end)
return function() return 200, {}, "ok" end
]]):format(wait_file(dir .. "/go")), { "--handler-timeout", "50", "--drain-timeout", "50" }, dir)
      assert(srv:wait_log("long_started"))
      srv:signal("TERM")
      assert(srv:wait_log("stopping"))
      b24.write(dir .. "/go", "")
      assert(srv:wait_log("long_finished"))
      local pid = srv.pid
      local exit = assert(srv:wait_log("b24-exit="))
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      assert.equal("b24-exit=0", exit)
      local log = srv:log()
      assert.equal(1, count(log, "long_started"))
      assert.equal(0, count(log, "job failed"))
      assert.equal(0, stop(srv))
   end)

   it("keeps running jobs in the new state after SIGHUP, with the new script's jobs", function()
      local dir = b24.tmpdir()
      local path = dir .. "/jobs.lua"
      local script = [[
local host = require "b24.host"
host.job("tick", 0.05, function() host.log("info", "tick_%s") end)
host.job("%s", 3600, function() end)
host.job("every", %s, function() host.log("info", "every_%s") end)
return function(req) return 200, {}, tostring(host.wake(req.query:match("name=([^&]*)") or "")) end
]]
      b24.write(path, script:format("v1", "old", "3600", "v1"))
      local srv = b24.start{ script_path = path, env = WATCHDOG,
         args = { "--workers", "1", "--inbox", dir .. "/inbox.sqlite" } }
      finally(function()
         if not srv.stopped then srv:stop("KILL") end
         os.execute("rm -rf " .. b24.quote(dir))
      end)
      assert(srv:wait_log("msg=tick_v1"))
      assert.equal("true", srv:request{ path = "/?name=old" }.body)
      b24.write(path, script:format("v2", "new", "0.05", "v2"))
      srv:signal("HUP")
      assert(srv:wait_log("jobs reloaded"))
      assert(srv:wait_log("msg=tick_v2"))
      assert(srv:wait_log("msg=every_v1")) -- its first run, at start
      assert(srv:wait_log("msg=every_v2")) -- its interval shortened from an hour: due at once
      assert.equal("false", srv:request{ path = "/?name=old" }.body) -- gone with v1
      assert.equal("true", srv:request{ path = "/?name=new" }.body)
      assert.equal(0, stop(srv))
   end)

   it("runs jobs of distinct threads at once (--jobs 2), each job always in its own Lua state", function()
      -- a and b each create their file, then wait for the other's: both finish only when they run
      -- at the same time (one thread would wait forever: the watchdog ends the server, no log line)
      local dir = b24.tmpdir()
      local fa, fb = dir .. "/a", dir .. "/b"
      local srv = start(([[
local host = require "b24.host"
local runs = 0
host.job("a", 3600, function()
   runs = runs + 1
   io.open(%q, "w"):close()
   %s
   host.log("info", "a done", { runs = runs })
end)
host.job("b", 3600, function()
   io.open(%q, "w"):close()
   %s
   host.log("info", "b done")
end)
return function(req) return 200, {}, tostring(host.wake(req.query:match("name=([^&]*)") or "")) end
]]):format(fa, wait_file(fb), fb, wait_file(fa)), { "--jobs", "2" }, dir)
      assert(srv:wait_log("msg=\"a done\" runs=1"))
      assert(srv:wait_log("msg=\"b done\""))
      for i = 2, 4 do -- the same state each time: its upvalue counts every run
         assert.equal("true", srv:request{ path = "/?name=a" }.body)
         assert(srv:wait_log("msg=\"a done\" runs=" .. i))
      end
      assert.equal(0, stop(srv))
      local out, code = b24.exec(b24.quote(b24.bin) .. " serve --jobs 0 x.lua")
      assert.equal(2, code)
      assert.truthy(out:find("bad value '0' for --jobs", 1, true), out)
   end)

   it("raises under b24 run, and on bad arguments under b24 serve", function()
      local dir = b24.tmpdir()
      local run = b24.write(dir .. "/run.lua", [[
local host = require "b24.host"
print(select(2, pcall(host.job, "a", 1, function() end)))
print(host.wake("a"))
print(host.inbox_put{ key = "k", event = "E", body = "" })
]])
      local out, code = b24.exec(b24.quote(b24.bin) .. " run " .. b24.quote(run))
      assert.equal(0, code)
      assert.equal("host.job: only under b24 serve\nfalse\nnil\thost.inbox_put: no inbox (only under b24 serve)\n", out)
      local srv = start([[
local host = require "b24.host"
local function f() end
local function why(fn, ...)
   local ok, err = pcall(fn, ...)
   return ok and "no error" or tostring(err)
end
return function(req)
   local lines = {
      why(host.job, "", 1, f), why(host.job, "a b", 1, f), why(host.job, "x", 0, f),
      why(host.job, "x", -1, f), why(host.job, "x", 0 / 0, f), why(host.job, "x", 1 / 0, f),
      why(host.job, "x", "soon", f), why(host.job, "x", 1, "f"), why(host.job, {}, 1),
      why(host.job, "twice", 1, f), why(host.job, "twice", 1, f), why(host.wake),
      why(host.inbox_put, "k"), why(host.inbox_put, { key = "k", body = "" }),
      why(host.inbox_put, { key = "k", event = "ONCRMLEADADD", body = "", kind = "update" }),
      why(host.inbox_put, { key = "k", event = "ONCRMLEADADD", body = "", kind = "new" }),
      why(host.inbox_put, { key = 1, event = "ONCRMLEADADD", body = "" }),
   }
   return 200, {}, table.concat(lines, "\n")
end
]])
      local lines = {}
      for line in srv:request{ path = "/" }.body:gmatch("[^\n]+") do lines[#lines + 1] = line end
      local want = {
         "host.job: a job's name is 1 to 128 characters",
         "host.job: a job's name is printable ASCII without spaces",
         "host.job: the interval of job x must be a number of seconds > 0",
         "host.job: the interval of job x must be a number of seconds > 0",
         "host.job: the interval of job x must be a number of seconds > 0",
         "host.job: the interval of job x must be a number of seconds > 0",
         "bad argument #2 to", "bad argument #3 to", "bad argument #1 to",
         "no error", "host.job: job twice is already registered", "bad argument #1 to",
         "bad argument #1 to", "host.inbox_put: key, event and body are required strings",
         "host.inbox_put: kind update does not match event ONCRMLEADADD, an event of kind add",
         "host.inbox_put: kind must be add, update, delete or other",
         "host.inbox_put: key must be a string, not a number",
      }
      assert.equal(#want, #lines)
      for i = 1, #want do
         assert.truthy(lines[i]:find(want[i], 1, true), ("line %d: %q lacks %q"):format(i, lines[i], want[i]))
      end
      assert.equal(0, stop(srv))
   end)
end)

describe("b24 serve: host.inbox_put", function()
   -- A router whose handler logs each event; the job puts the deliveries once: A (its handler holds
   -- the only handler thread until the spec releases it), then B (an update) twice while pending,
   -- and C (an add) twice, and logs what each put returned.
   local function put_script(dir)
      local function body(name, id)
         return core.form_encode(inbox.event{ name = name, id = id })
      end
      return ([[
local host = require "b24.host"
local bitrix24 = require "bitrix24"
local router = bitrix24.router{ tokens = { [%q] = %q } }
local FORM = "application/x-www-form-urlencoded"
router:on("*", function(event)
   host.log("info", "handled", { name = event.name, id = event.id })
   if event.id == "1" then
      io.open(%q, "w"):close()
      %s
   end
end)
local done = false
host.job("puts", 3600, function()
   if done then return end
   done = true
   local a = host.inbox_put{ key = "k-a", event = "ONCRMDEALUPDATE", content_type = FORM, body = %q }
   %s
   local results = { a }
   local b, c = %q, %q
   results[#results + 1] = host.inbox_put{ key = "k-b", event = "ONCRMDEALUPDATE", kind = "update",
      content_type = FORM, body = b }
   results[#results + 1] = host.inbox_put{ key = "k-b", event = "ONCRMDEALUPDATE", kind = "update",
      content_type = FORM, body = b }
   results[#results + 1] = host.inbox_put{ key = "k-c", event = "ONCRMDEALADD", kind = "add",
      content_type = FORM, body = c }
   results[#results + 1] = host.inbox_put{ key = "k-c", event = "ONCRMDEALADD", kind = "add",
      content_type = FORM, body = c }
   host.log("info", "puts", { results = table.concat(results, ",") })
end)
return router
]]):format(inbox.deal.member_id, inbox.deal.token, dir .. "/a-running", wait_file(dir .. "/go"),
         body("ONCRMDEALUPDATE", "1"), wait_file(dir .. "/a-running"),
         body("ONCRMDEALUPDATE", "2"), body("ONCRMDEALADD", "3"))
   end

   it("stores deliveries the router dispatches; a pending update's key merges, an add's is a duplicate", function()
      local dir = b24.tmpdir()
      local srv = start(put_script(dir), { "--handler-threads", "1", "--handler-timeout", "50" }, dir)
      local puts = assert(srv:wait_log("msg=puts"))
      assert.truthy(puts:find('results=stored,stored,merged,stored,duplicate', 1, true), puts)
      assert(srv:wait_log("handled id=1 name=ONCRMDEALUPDATE"))
      b24.write(dir .. "/go", "")
      assert(srv:wait_log("handled id=2 name=ONCRMDEALUPDATE"))
      assert(srv:wait_log("handled id=3 name=ONCRMDEALADD"))
      assert.equal(1, metric(srv, 'b24_deliveries_total{result="merged"}'))
      assert.equal(1, metric(srv, 'b24_deliveries_total{result="duplicate"}'))
      assert.equal(0, stop(srv))
      local log = srv:log()
      assert.equal(1, count(log, "handled id=2 "))
      assert.equal(1, count(log, "handled id=3 "))
   end)

   it("says nil, err without an inbox (--sync), a key over 1 KiB, a body over --max-body", function()
      local script = [[
local host = require "b24.host"
local bitrix24 = require "bitrix24"
local router = bitrix24.router{ tokens = { x = "y" } }
local function put(key, size)
   local r, err = host.inbox_put{ key = key, event = "ONCRMDEALADD", body = string.rep("x", size) }
   return tostring(r) .. " " .. tostring(err)
end
host.job("bounds", 3600, function()
   host.log("info", "bounds", { big_key = put(string.rep("k", 1025), 1), big_body = put("k", 2049),
      fits = put(string.rep("k", 1024), 2048) })
end)
return router
]]
      local sync = start(script, { "--sync", "--max-body", "2048" })
      local line = assert(sync:wait_log("msg=bounds"))
      assert.truthy(line:find("no inbox (--sync)", 1, true), line)
      assert.equal(0, stop(sync))
      local srv = start(script, { "--max-body", "2048" })
      line = assert(srv:wait_log("msg=bounds"))
      assert.truthy(line:find('big_key="nil host.inbox_put: the key is 1025 bytes (1 to 1024)"', 1, true), line)
      assert.truthy(line:find('big_body="nil host.inbox_put: the body is over --max-body (2048 bytes)"', 1, true), line)
      assert.truthy(line:find('fits="stored nil"', 1, true), line)
      assert.equal(0, stop(srv))
      local memory = start(script, { "--max-body", "2048", "--inbox", "memory" })
      line = assert(memory:wait_log("msg=bounds"))
      assert.truthy(line:find('fits="stored nil"', 1, true), line)
      -- dispatched from the memory inbox (its body of x's is no event, so the run fails)
      assert(memory:wait_log([[failed" event=ONCRMDEALADD attempt=1]]))
      assert.equal(0, stop(memory))
   end)
end)
