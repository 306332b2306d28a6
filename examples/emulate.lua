-- A Bitrix24 portal in memory for tests and development (protocol.md §1–§6), for hosts that run a
-- script (`b24 emulate` takes the same options on its command line):
--   B24_EMU_SEED_LEADS=120 b24 serve --workers 1 examples/emulate.lua
-- then call http://HOST:PORT/rest/1/<B24_EMU_CODE>/crm.lead.list.json. State lives in one Lua
-- state per server thread, so run one worker. Options come from the environment, each the
-- `b24 emulate` option of the same name:
--   B24_EMU_USER_ID (1), B24_EMU_CODE (the webhook code; a fixed dev code by default),
--   B24_EMU_TOKEN (the application token of events), B24_EMU_EVENTS_TO (URLs, space-separated),
--   B24_EMU_DOMAIN, B24_EMU_MEMBER_ID, B24_EMU_SEED_LEADS (0), B24_EMU_SEED_TASKS (0),
--   B24_EMU_ENTERPRISE=1 (bucket 250/5 instead of 50/2), B24_EMU_LATENCY_MS (0),
--   B24_EMU_ROW_COST_US (0), B24_EMU_COUNT_COST_US (0),
--   B24_EMU_FAULTS ("503=0.2,500=0.05,reset=0.02,slow=0.01"), B24_EMU_SLOW_DELAY (10 s),
--   B24_EMU_OPERATING_LIMIT (480 s), B24_EMU_TIME_SCALE (1; how much faster than real time the
--   limits' clock runs), B24_EMU_DATA (a JSON file to persist to), B24_EMU_RANDOM_SEED.
-- The emulator is handed b24's services: its log, delayed answers (b24 serve honours a handler's
-- { delay = seconds }) and, when this b24 has it, b24.emulator.post to send events.
local dir = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "."
-- modules not embedded into the host load from the checkout
package.path = dir .. "/../lua/?.lua;" .. dir .. "/../lua/?/init.lua;" .. dir .. "/../emulator/lua/?.lua;"
    .. package.path

local emulator = require "b24.emulator"

local argv = {}
local function option(env, name)
   local v = os.getenv(env)
   if v == nil or v == "" then return end
   argv[#argv + 1] = name
   argv[#argv + 1] = v
end

option("B24_EMU_USER_ID", "--user-id")
option("B24_EMU_CODE", "--code")
option("B24_EMU_TOKEN", "--token")
for url in (os.getenv("B24_EMU_EVENTS_TO") or ""):gmatch("%S+") do
   argv[#argv + 1] = "--events-to"
   argv[#argv + 1] = url
end
option("B24_EMU_DOMAIN", "--domain")
option("B24_EMU_MEMBER_ID", "--member-id")
option("B24_EMU_SEED_LEADS", "--seed-leads")
option("B24_EMU_SEED_TASKS", "--seed-tasks")
if os.getenv("B24_EMU_ENTERPRISE") == "1" then argv[#argv + 1] = "--enterprise" end
option("B24_EMU_LATENCY_MS", "--latency")
option("B24_EMU_ROW_COST_US", "--row-cost")
option("B24_EMU_COUNT_COST_US", "--count-cost")
option("B24_EMU_FAULTS", "--faults")
option("B24_EMU_SLOW_DELAY", "--slow-delay")
option("B24_EMU_OPERATING_LIMIT", "--operating-limit")
option("B24_EMU_TIME_SCALE", "--time-scale")
option("B24_EMU_DATA", "--data")
option("B24_EMU_RANDOM_SEED", "--random-seed")

local host = require "b24.host"
local has_post, post = pcall(require, "b24.emulator.post")

return emulator.main(argv, { log = host.log, post = has_post and post.post or nil, delay = true })
