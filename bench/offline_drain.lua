-- bench/offline_drain.lua: a drain of N queued offline events (issue 16): `b24 emulate --app`
-- queues N lead adds while the application's `b24 serve` receiver is down; the receiver starts
-- and its puller (bitrix24.offline) takes them into the inbox and its handlers run. Prints the
-- pulls, the REST requests they took (get + clear each, and the one event.offline.list at start)
-- and the seconds until the last lead was handled, per pull size. The emulator runs with
-- --time-scale 1000, so its rate limit (2 requests/s after a burst of 50 on a real portal) does
-- not count here: on a portal, requests beyond the burst take half a second each.
--   lua5.4 bench/offline_drain.lua [N [LIMIT…]]      (10000; 50 and 1000)
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/5.4/?.so;" .. package.cpath
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"
local cjson = require "cjson"

local n = tonumber(arg[1]) or 10000
local limits = {}
for i = 2, #arg do limits[#limits + 1] = tonumber(arg[i]) end
if #limits == 0 then limits = { 50, 1000 } end
local CLIENT_ID, SECRET = "local.bench0offline00001", "bench0offline0secret0value00001"

local function drain(limit)
   local dir = b24.tmpdir()
   local store = dir .. "/inbox.sqlite"
   local port = b24.free_port()
   local portal = b24.emulate{ args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET, "--time-scale", "1000",
                                        "--token-ttl", "360000000" } }
   local env = "APP_CLIENT_ID=" .. CLIENT_ID .. " APP_CLIENT_SECRET=" .. SECRET .. " APP_OAUTH=" .. portal.base
   local function receiver()
      return b24.start{ script_path = b24.root .. "/spec/helpers/app_offline_main.lua",
                        args = { "--listen", "127.0.0.1:" .. port, "--workers", "4", "--inbox", store },
                        env = env .. " APP_OFFLINE_INTERVAL=60 APP_OFFLINE_LIMIT=" .. limit .. " " }
   end
   local admin = bitrix24.client(portal.base .. emu.path(""))
   local srv = receiver()
   assert(admin:call("emulator.app.install", { url = srv.base .. "/" }))
   assert(srv:wait_log("app installed"))
   local run = env .. " " .. b24.quote(b24.bin) .. " run spec/helpers/app_run.lua " .. b24.quote(store)
   local member_id = cjson.decode(b24.exec(run .. " portal"):match("({[^\n]*})%s*$")).member_id
   b24.exec(run .. " bind_offline " .. member_id .. " ONCRMLEADADD")
   srv:stop()
   local calls = {}
   for i = 1, n do calls[i] = { "crm.lead.add", { fields = { TITLE = "Queued " .. i } } } end
   local _, errors = admin:call_many(calls)
   assert(errors == nil, "adding the leads failed")
   local t0 = core.now()
   local from = #portal.lines + 1
   srv = receiver()
   local seen, count, pulls = {}, 0, 0
   local i = 1
   while count < n do
      local line = srv.lines[i]
      if not line then
         line = assert(srv.stream:read("l"), "the receiver ended")
         srv.lines[#srv.lines + 1] = line
      end
      local id = line:match('msg="lead handled" id=(%d+)')
      if id and not seen[id] then seen[id], count = true, count + 1 end
      i = i + 1
   end
   -- the last pull's line may come after its rows were handled: wait for every pull's
   local want = math.ceil(n / limit)
   for _, line in ipairs(srv.lines) do
      if line:find('msg="bitrix24.offline: pulled"', 1, true) then pulls = pulls + 1 end
   end
   while pulls < want do
      local line = assert(srv.stream:read("l"), "the receiver ended")
      srv.lines[#srv.lines + 1] = line
      if line:find('msg="bitrix24.offline: pulled"', 1, true) then pulls = pulls + 1 end
   end
   local elapsed = core.now() - t0
   srv:stop()
   local stats = assert(admin:call("emulator.offline.stats"))
   -- the requests the drain made: the portal's request lines for event.offline.* (its log is
   -- read up to the stats call, which came after the receiver stopped)
   assert(portal:wait_log("emulator.offline.stats"))
   local requests = 0
   for k = from, #portal.lines do
      if portal.lines[k]:find("path=/rest/event.offline.", 1, true) then requests = requests + 1 end
   end
   portal:stop()
   os.execute("rm -rf " .. b24.quote(dir))
   return pulls, requests, elapsed, stats.rows
end

print(("%-8s %-6s %6s %9s %9s %6s"):format("events", "limit", "pulls", "requests", "seconds", "left"))
for _, limit in ipairs(limits) do
   local pulls, requests, elapsed, left = drain(limit)
   print(("%-8d %-6d %6d %9d %9.2f %6d"):format(n, limit, pulls, requests, elapsed, left))
end
