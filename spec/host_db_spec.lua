-- A script's durable values, delivery marks and metrics under `b24 serve` (host.kv_get/kv_put,
-- host.inbox_mark/inbox_marks, host.metric): real servers on a real SQLite inbox file, kept across
-- a restart; every server runs under a watchdog, waits are on log lines.
local b24 = require "helpers.b24"
local json = require "cjson"

local WATCHDOG = "B24_SPEC_TIMEOUT=30 "

-- A server of script (source) on the inbox file dir/inbox.sqlite.
local function start(script, dir, args)
   local all = { "--workers", "2", "--inbox", dir .. "/inbox.sqlite" }
   for _, a in ipairs(args or {}) do all[#all + 1] = a end
   local srv = b24.start{ script = script, args = all, env = WATCHDOG }
   local pid = srv.pid
   finally(function()
      if not srv.stopped then srv:stop("KILL") end
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
   end)
   return srv
end

-- A router whose job, once at start, runs `body` (Lua source using host) and logs its
-- result `out` (a string) as msg=result.
local function script(body)
   return ([[
local host = require "b24.host"
local bitrix24 = require "bitrix24"
local router = bitrix24.router{ tokens = { x = "y" } }
host.job("once", 3600, function()
   local ok, out = pcall(function() %s end)
   host.log("info", "result", { out = ok and out or ("raised: " .. tostring(out)) })
end)
return router
]]):format(body)
end

-- The out= value of the job's first result line.
local function result(srv)
   local line = assert(srv:wait_log("msg=result"))
   local quoted = line:match('out="(.*)"$')
   return quoted and quoted:gsub('\\"', '"') or line:match("out=(%S+)")
end

describe("b24 serve: host.kv_get and host.kv_put", function()
   it("keeps a value durably across a restart, replaces it, and reads nil for a name never put", function()
      local dir = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local srv = start(script([[
         assert(host.kv_get("checkpoint") == nil)
         assert(host.kv_put("checkpoint", "first") == true)
         assert(host.kv_put("checkpoint", "2026-12-07T10:00:00+03:00\0binary") == true)
         return host.kv_get("checkpoint"):gsub("%z", "0")
      ]]), dir)
      assert.equal("2026-12-07T10:00:00+03:000binary", result(srv))
      srv:stop("KILL") -- no clean shutdown: the value was durable when kv_put returned
      local again = start(script([[ return host.kv_get("checkpoint"):gsub("%z", "0") ]]), dir)
      assert.equal("2026-12-07T10:00:00+03:000binary", result(again))
      assert.equal(0, again:stop("TERM"))
   end)

   it("refuses bad names and values with a clear error, and says why without an inbox", function()
      local dir = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local srv = start(script([[
         local out = {}
         for _, f in ipairs{
            function() return host.kv_put("", "v") end,
            function() return host.kv_put(string.rep("n", 257), "v") end,
            function() return host.kv_put("n", string.rep("v", 1048577)) end,
            function() return host.kv_get({}) end,
         } do
            local ok, err = pcall(f)
            out[#out + 1] = ok and "no error" or tostring(err):gsub("^[^ ]-:%d+: ", "", 1)
         end
         return table.concat(out, "|")
      ]]), dir)
      local got = result(srv)
      assert.truthy(got:find("host.kv_put: a name or object is 1 to 256 bytes|host.kv_put: a name or object "
         .. "is 1 to 256 bytes|host.kv_put: a value is at most 1048576 bytes|", 1, true), got)
      assert.truthy(got:find("bad argument #1", 1, true), got)
      assert.equal(0, srv:stop("TERM"))
      local run = b24.write(dir .. "/run.lua", [[
local host = require "b24.host"
print(host.kv_get("x"))
print(host.inbox_mark("o", 1))
]])
      local out, code = b24.exec(b24.quote(b24.bin) .. " run " .. b24.quote(run))
      assert.equal(0, code)
      assert.equal("nil\thost.kv_get: no inbox (only under b24 serve)\n"
         .. "nil\thost.inbox_mark: no inbox (only under b24 serve)\n", out)
   end)
end)

describe("b24 serve: host.kv_claim", function()
   it("gives a named claim to one host of those sharing the inbox database until it runs out", function()
      local dir = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local body = [[
         local a, b = host.kv_claim("pass", 3600), host.kv_claim("pass", 3600) -- renewed by its holder
         local ok, err = pcall(host.kv_claim, "pass", 0)
         return ("%s,%s,%s"):format(tostring(a), tostring(b), tostring(err):gsub("^[^ ]-:%d+: ", "", 1))
      ]]
      local first = start(script(body), dir, { "--listen", "127.0.0.1:" .. b24.free_port() })
      assert.equal("true,true,host.kv_claim: seconds must be > 0 and at most 86400", result(first))
      local second = start(script(body), dir, { "--listen", "127.0.0.1:" .. b24.free_port() })
      assert.equal("false,false,host.kv_claim: seconds must be > 0 and at most 86400", result(second))
      assert.equal(0, second:stop("TERM"))
      assert.equal(0, first:stop("TERM"))
      local short = start(script([[ return tostring(host.kv_claim("brief", 0.001)) ]]), dir)
      assert.equal("true", result(short))
      assert.equal(0, short:stop("TERM"))
      local later = start(script([[ return tostring(host.kv_claim("brief", 60)) ]]), dir) -- run out: free
      assert.equal("true", result(later))
      assert.equal(0, later:stop("TERM"))
   end)
end)

describe("b24 serve: host.inbox_mark and host.inbox_marks", function()
   it("keeps the newest time per object, durably, and answers only for marked objects", function()
      local dir = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local srv = start(script([[
         host.inbox_mark("p|crm.lead|1", 1000)
         host.inbox_mark("p|crm.lead|1", 1500)
         host.inbox_mark("p|crm.lead|1", 1200) -- older: the newest stays
         host.inbox_mark("p|crm.deal|7", 42.5)
         assert(host.kv_put("sync", "1")) -- a committed write after the marks: they are durable too
         local m = host.inbox_marks{ "p|crm.lead|1", "p|crm.deal|7", "p|crm.lead|2" }
         local n = 0
         for _ in pairs(m) do n = n + 1 end
         return ("%s,%s,%s,%d"):format(m["p|crm.lead|1"], m["p|crm.deal|7"], tostring(m["p|crm.lead|2"]), n)
      ]]), dir)
      assert.equal("1500.0,42.5,nil,2", result(srv))
      srv:stop("KILL")
      local again = start(script([[
         local m = host.inbox_marks{ "p|crm.lead|1" }
         return tostring(m["p|crm.lead|1"])
      ]]), dir)
      assert.equal("1500.0", result(again))
      assert.equal(0, again:stop("TERM"))
   end)

   it("forgets a mark after --dedup-ttl, and bounds a query at 10,000 objects", function()
      local dir = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local srv = start(script([[
         host.inbox_mark("gone", 1)
         assert(host.kv_put("sync", "1"))
         local before = host.inbox_marks{ "gone" }.gone
         local list = {}
         for i = 1, 10001 do list[i] = "o" .. i end
         local ok, err = pcall(host.inbox_marks, list)
         local ok2, err2 = pcall(host.inbox_marks, { "a", 5 })
         return ("%s|%s|%s|%s|%s"):format(tostring(before), tostring(ok), tostring(err):gsub("^[^ ]-:%d+: ", "", 1),
            tostring(ok2), tostring(err2):gsub("^[^ ]-:%d+: ", "", 1))
      ]]), dir, { "--dedup-ttl", "0" })
      assert.equal("nil|false|host.inbox_marks: at most 10000 objects a call|false|"
         .. "host.inbox_marks: object 2 is not a string", result(srv))
      assert.equal(0, srv:stop("TERM"))
   end)
end)

describe("b24 serve: host.metric", function()
   it("shows a script's gauges and counters in /metrics and /healthz, escaped, and removes one set to nil", function()
      local dir = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local srv = start(script([[
         host.metric("b24_offline_mode", { member_id = "m1", mode = "delete" }, 1)
         host.metric("b24_offline_mode", { member_id = "m2", mode = "confirm" }, 1)
         host.metric("b24_reconciled_total", { kind = "update", entity = 'crm."lead"\n' }, 12, "counter")
         host.metric("b24_gone", nil, 5)
         host.metric("b24_gone", nil, nil)
         local out = {}
         for _, f in ipairs{
            function() host.metric("bad name", nil, 1) end,
            function() host.metric("b24_offline_mode", { m = "x" }, 1, "counter") end,
            function() host.metric("b24_x", { ["1a"] = "x" }, 1) end,
            function() host.metric("b24_x", nil, 0 / 0) end,
            function() host.metric("b24_x", nil, 1, "histogram") end,
         } do
            local ok, err = pcall(f)
            out[#out + 1] = ok and "no error" or tostring(err):gsub("^[^ ]-:%d+: ", "", 1)
         end
         return table.concat(out, "|")
      ]]), dir)
      assert.equal("host.metric: a metric's name is [a-zA-Z_:][a-zA-Z0-9_:]*, at most 128 bytes|"
         .. "host.metric: b24_offline_mode is a gauge already|"
         .. "host.metric: a label's name is [a-zA-Z_][a-zA-Z0-9_]*|"
         .. "host.metric: the value must be a finite number|"
         .. "host.metric: the kind is \"counter\" or \"gauge\"", result(srv))
      local text = srv:request{ path = "/metrics" }.body
      assert.truthy(text:find('# TYPE b24_offline_mode gauge\nb24_offline_mode{member_id="m1",mode="delete"} 1\n'
         .. 'b24_offline_mode{member_id="m2",mode="confirm"} 1\n', 1, true), text)
      assert.truthy(text:find('# TYPE b24_reconciled_total counter\n'
         .. 'b24_reconciled_total{entity="crm.\\"lead\\"\\n",kind="update"} 12\n', 1, true), text)
      assert.falsy(text:find("b24_gone", 1, true))
      local health = json.decode(srv:request{ path = "/healthz" }.body)
      assert.equal("ok", health.status)
      assert.equal(1, health.script['b24_offline_mode{member_id="m1",mode="delete"}'])
      assert.equal(12, health.script['b24_reconciled_total{entity="crm.\\"lead\\"\\n",kind="update"}'])
      assert.equal(0, srv:stop("TERM"))
   end)
end)
