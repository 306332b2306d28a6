-- bench/reconcile.lua: a reconciliation pass (bitrix24.reconcile, issue 17) over N leads on
-- `b24 emulate`, with 1% of them changed since the checkpoint and with none changed. The leads are
-- seeded by the emulator (--seed-leads into a --data file whose dates are then moved a month
-- back, so only the changes fall inside the pass's window), the router reconciles crm.lead into
-- its memory state and counts its handler's runs. Prints, per pass, the REST requests (HTTP, as
-- the client sent them), the seconds, the rows listed and the deliveries synthesized; and, for
-- scale, a full keyset export of the same IDs and dates. The emulator runs with --time-scale 1000,
-- so its rate limit (2 requests/s after a burst of 50 on a real portal) does not count here.
--   lua5.4 bench/reconcile.lua [N [PERCENT]]      (100000; 1)
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/5.4/?.so;" .. package.cpath
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"

local n = tonumber(arg[1]) or 100000
local percent = tonumber(arg[2]) or 1
local TOKEN = "bench0reconcile0token000000001"
local OLD = "2026-11-01T10:00:00+03:00"

local dir = b24.tmpdir()
local data = dir .. "/portal.json"
local args = { "--code", emu.CODE, "--data", data, "--enterprise", "--time-scale", "1000" }

-- seed, then move every date a month back
local t0 = core.now()
local seeding = { "--seed-leads", tostring(n) }
for _, a in ipairs(args) do seeding[#seeding + 1] = a end
b24.emulate{ args = seeding }:stop()
local text = assert(b24.read(data))
text = text:gsub('"DATE_CREATE":"[^"]*"', '"DATE_CREATE":"' .. OLD .. '"')
text = text:gsub('"DATE_MODIFY":"[^"]*"', '"DATE_MODIFY":"' .. OLD .. '"')
b24.write(data, text)
text = nil -- luacheck: ignore
collectgarbage()
io.stderr:write(("seeded %d leads in %.1f s\n"):format(n, core.now() - t0))

local portal = b24.emulate{ args = args }
local client = bitrix24.client{ url = portal.base .. emu.path(""), limit = false }
local runs = 0
local router = bitrix24.router{ token = TOKEN, client = client, log = function() end,
                                reconcile = { "crm.lead", lookback = 0 } }
router:on("ONCRMLEAD*", function() runs = runs + 1 end)

local rows = {}
local function pass(label)
   runs = 0
   local s = assert(router:reconcile_once())
   local e = s.entities["crm.lead"]
   assert(e, "the pass failed: " .. tostring(s.failed["crm.lead"]))
   rows[#rows + 1] = { label, s.requests, s.seconds, e.listed, runs }
end

pass("first pass (no checkpoint, lookback 0)")
pass("no change")
local changed = math.floor(n * percent / 100)
local step = math.max(1, math.floor(n / math.max(1, changed)))
local calls = {}
for id = 1, n, step do
   if #calls == changed then break end
   calls[#calls + 1] = { "crm.lead.update", { id = id, fields = { TITLE = "changed" } } }
end
local _, errors = client:call_many(calls)
assert(errors == nil, "the updates failed")
-- into the portal's next second: a change in the second a pass starts is listed again by the
-- next pass (the same second counts), which a bench of changes made a moment before would show
local function portal_second() return math.floor(assert(client:request("server.time", {})).time.start) end
local s0 = portal_second()
while portal_second() == s0 do core.sleep(0.05) end
pass(percent .. "% changed (" .. #calls .. " leads)")
pass("no change since (the changes still inside the 120 s overlap)")

-- for scale: every ID and date once, the export's keyset scan
local requests0 = client.stats.requests
local t1 = core.now()
local all = assert(client:all("crm.lead.list", { select = { "ID", "DATE_MODIFY", "DATE_CREATE" } }))
rows[#rows + 1] = { "full export of IDs and dates (no reconciliation)", client.stats.requests - requests0,
                    core.now() - t1, #all, 0 }
portal:stop()
os.execute("rm -rf " .. b24.quote(dir))

print(("%d leads on b24 emulate (crm.lead, memory state)"):format(n))
print(("| %-62s | %8s | %8s | %7s | %11s |"):format("pass", "requests", "seconds", "listed", "synthesized"))
print("|" .. ("-"):rep(64) .. "|" .. ("-"):rep(10) .. "|" .. ("-"):rep(10) .. "|" .. ("-"):rep(9) .. "|" ..
      ("-"):rep(13) .. "|")
for _, r in ipairs(rows) do
   print(("| %-62s | %8d | %8.3f | %7d | %11d |"):format(r[1], r[2], r[3], r[4], r[5]))
end
