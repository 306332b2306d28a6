-- bench/app_refresh.lua: N application processes meeting an expired access token at once on one
-- portal (issue 15), against `b24 emulate --app`: how many refreshes the OAuth server made, how
-- many it refused (invalid_grant: a spent refresh token), how many processes failed. Each round
-- runs N `b24 run spec/helpers/app_run.lua … call` processes on one SQLite store, with the
-- refresh lease (single flight) and with a lease that runs out at once (no single flight).
-- Run from the checkout after `make`:
--   lua5.4 bench/app_refresh.lua [N…]          (8 32 by default)
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/5.4/?.so;" .. package.cpath
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"
local cjson = require "cjson"

local CLIENT_ID, SECRET = "local.bench0app0000001", "bench0app0secret0value0000000001"
local counts = {}
for i = 1, select("#", ...) do counts[#counts + 1] = tonumber((select(i, ...))) end
if #counts == 0 then counts = { 8, 32 } end

local dir = b24.tmpdir()
local store = dir .. "/inbox.sqlite"
-- the Enterprise bucket (250 at once): the figures are the refreshes', not the rate limit's; an
-- OAuth server that takes 300 ms, so refreshes started together overlap
local portal = b24.emulate{ args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET, "--seed-leads", "50",
                                     "--enterprise", "--oauth-latency", "300" } }
local env = "APP_CLIENT_ID=" .. CLIENT_ID .. " APP_CLIENT_SECRET=" .. SECRET .. " APP_OAUTH=" .. portal.base
local receiver = b24.start{ script_path = b24.root .. "/spec/helpers/app_receiver_main.lua",
                            args = { "--workers", "2", "--inbox", store }, env = env .. " " }
local admin = bitrix24.client(portal.base .. emu.path(""))
assert(admin:call("emulator.app.install", { url = receiver.base .. "/" }))
assert(receiver:wait_log("app installed"))
local out = b24.exec(env .. " " .. b24.quote(b24.bin) .. " run spec/helpers/app_run.lua " .. b24.quote(store)
   .. " portal")
local member_id = assert(cjson.decode(out:match("({[^\n]*})%s*$")).member_id)

local function round(n, lease)
   assert(admin:call("emulator.tokens.expire"))
   local before = assert(admin:call("emulator.oauth.stats"))
   local cmds = {}
   for i = 1, n do
      cmds[i] = ("APP_LEASE=%s %s %s run spec/helpers/app_run.lua %s call %s crm.lead.get '{\"id\":%d}' "
         .. "> %s/out.%d 2>&1"):format(lease, env, b24.quote(b24.bin), b24.quote(store), member_id,
                                       (i - 1) % 50 + 1, dir, i)
   end
   local t0 = core.now()
   b24.exec("( " .. table.concat(cmds, " & ") .. " & wait )")
   local elapsed = core.now() - t0
   local failed = 0
   for i = 1, n do
      local got = cjson.decode((b24.read(dir .. "/out." .. i) or ""):match("({[^\n]*})%s*$") or "{}")
      if not (got and got.result) then failed = failed + 1 end
   end
   local after = assert(admin:call("emulator.oauth.stats"))
   return after.refreshes - before.refreshes, after.invalid_grant - before.invalid_grant, failed, elapsed
end

print(("%-10s %-22s %10s %14s %9s %9s"):format("processes", "lease", "refreshes", "invalid_grant", "failed",
                                              "seconds"))
for _, n in ipairs(counts) do
   for _, mode in ipairs({ { "30 (single flight)", "30" }, { "0.000001 (none)", "0.000001" } }) do
      local refreshes, refused, failed, elapsed = round(n, mode[2])
      print(("%-10d %-22s %10d %14d %9d %9.2f"):format(n, mode[1], refreshes, refused, failed, elapsed))
   end
end
receiver:stop()
portal:stop()
os.execute("rm -rf " .. b24.quote(dir))
