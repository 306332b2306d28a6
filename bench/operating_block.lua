-- bench/operating_block.lua: an export meeting the operating limit's block, against `b24 emulate`
-- (issue 13 item 1): rows (each once?), HTTP requests, waits. Run from the checkout after `make`:
--   lua5.4 bench/operating_block.lua [LEADS ROW_COST_US LIMIT_S TIME_SCALE [ORDER]]
-- TIME_SCALE 1 meets a real 10-minute block (about 600 s); 60 runs the window in about 10 s.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/5.4/?.so;" .. package.cpath
local b24 = require "helpers.b24"
local portal = require "helpers.portal"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"

local leads, cost, limit, scale, order = arg[1] or "3000", arg[2] or "1000", arg[3] or "2", arg[4] or "60", arg[5]
local srv = b24.emulate{ args = { "--code", portal.CODE, "--seed-leads", leads, "--row-cost", cost,
                                  "--operating-limit", limit, "--time-scale", scale } }
local waits, total_wait, longest = 0, 0, 0
local t0 = core.now()
local c = bitrix24.client{ url = portal.url(srv), log = function(_, msg, f)
   if msg == "bitrix24: retrying" then
      local d = tonumber(f.delay)
      waits, total_wait, longest = waits + 1, total_wait + d, math.max(longest, d)
      io.stderr:write(string.format("  %6.1f s  %s %s: wait %.1f s (%.0f s of portal time), %s command(s) again\n",
         core.now() - t0, f.error, f.method, d, d * tonumber(scale), tostring(f.commands or 1)))
   end
end }
local params = { select = { "ID", "TITLE" } }
if order then params.order = { [order] = "ASC" } end
local rows, err = c:all("crm.lead.list", params)
local elapsed = core.now() - t0
srv:stop()
if not rows then print("export failed: " .. tostring(err)) os.exit(1) end
local seen, dups, distinct = {}, 0, 0
for _, row in ipairs(rows) do
   local id = row.ID
   if seen[id] then dups = dups + 1 else distinct = distinct + 1 end
   seen[id] = true
end
local missing = 0
for id = 1, tonumber(leads) do if not seen[string.format("%d", id)] then missing = missing + 1 end end
print(string.format("rows %d (distinct %d, repeated %d, missing %d of %s)", #rows, distinct, dups, missing, leads))
print(string.format("HTTP requests %d (%d sent again after a block), waits %d: %.1f s in all, longest %.1f s" ..
   " = %.0f s of portal time at --time-scale %s", c.stats.requests, c.stats.retries, waits, total_wait, longest,
   longest * tonumber(scale), scale))
print(string.format("elapsed %.1f s", elapsed))
