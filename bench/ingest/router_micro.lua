-- bench/ingest/router_micro.lua: the CPU time of bitrix24.router's hot path on one event, per call,
-- without HTTP (os.clock, one Lua state): form_decode, event.auth, event.parse, router:accept, and
-- router:handle with a no-op handler on distinct deliveries (the in-memory store); the best of 5 runs.
--   lua5.4 bench/ingest/router_micro.lua [N]     (LUA_PATH/CPATH: ./lua and ./build/5.4)
--   luajit bench/ingest/router_micro.lua [N]     (./build/5.1)
local n = tonumber(arg[1]) or 100000
local core = require "bitrix24.core"
local event = require "bitrix24.event"
local bitrix24 = require "bitrix24"

local f = assert(io.open("bench/ingest/app-oncrmcontactadd.form", "rb"))
local body = f:read("*a")
f:close()
local token = body:match("auth%%5Bapplication_token%%5D=([^&]*)")
local head, tail = body:match("^(.-data%%5BFIELDS%%5D%%5BID%%5D=)%d+(.*)$")
local FORM = "application/x-www-form-urlencoded"

local bodies = {}
for i = 1, 1000 do bodies[i] = head .. (1000000 + i) .. tail end

-- The best of 5 runs of n calls (the machine is shared: the least disturbed run).
local function time(name, fn)
   fn(1) -- warm
   local best = math.huge
   for run = 1, 5 do
      collectgarbage()
      local t0 = os.clock()
      for i = 1, n do fn(run * n + i) end
      best = math.min(best, (os.clock() - t0) / n * 1e6)
   end
   print(string.format("%-44s %8.2f us/call", name, best))
end

local router = bitrix24.router{ token = token }
router:on("*", function() end)
local quiet = function() end
router.log = quiet

time("core.form_decode", function(i) return core.form_decode(bodies[i % 1000 + 1]) end)
time("event.auth", function(i) return event.auth(bodies[i % 1000 + 1], FORM) end)
time("event.parse", function(i) return event.parse(bodies[i % 1000 + 1], FORM) end)
local function request(i)
   return { method = "POST", path = "/", query = "", remote_addr = "127.0.0.1",
            body = head .. i .. tail,
            headers = { host = "127.0.0.1", ["content-type"] = FORM, ["content-length"] = "662" } }
end
time("request table + body", request)
time("router:accept", function(i) return router:accept(request(i)) end)
-- a store that keeps nothing (b24 serve's is in C): the router's own Lua, without the memory store
local plain = bitrix24.router{ token = token, store = { begin = function() return "run" end,
                                                       finish = function() return false end } }
plain:on("*", function() end)
plain.log = quiet
time("router:handle (a store that keeps nothing)", function(i) return plain:handle(request(i)) end)
local off = 10 * n
time("router:handle (memory store, distinct)", function(i) return router:handle(request(off + i)) end)
