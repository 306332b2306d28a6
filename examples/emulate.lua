-- A Bitrix24 portal in memory for tests and development (protocol.md §1–§5):
--   B24_EMU_SEED_LEADS=120 b24 serve --workers 1 examples/emulate.lua
-- then call http://HOST:PORT/rest/1/<B24_EMU_CODE>/crm.lead.list.json. State lives in one Lua
-- state per server thread, so run one worker. Options come from the environment:
--   B24_EMU_USER_ID (1), B24_EMU_CODE (the webhook code; a fixed dev code by default),
--   B24_EMU_SEED_LEADS (0), B24_EMU_ENTERPRISE=1 (bucket 250/5 instead of 50/2),
--   B24_EMU_LATENCY_MS (0), B24_EMU_FAULTS ("503=0.2,500=0.05"),
--   B24_EMU_TIME_SCALE (1; how much faster than real time the leaky bucket drains),
--   B24_EMU_RANDOM_SEED (seeds the fault dice).
local dir = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "."
-- modules not embedded into b24 (lua/bitrix24/emulator/*) load from the checkout
package.path = dir .. "/../lua/?.lua;" .. dir .. "/../lua/?/init.lua;" .. package.path

local emulator = require "bitrix24.emulator"

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

if env("B24_EMU_RANDOM_SEED") then math.randomseed(tonumber(env("B24_EMU_RANDOM_SEED"))) end

return emulator.handler{
  user_id = tonumber(env("B24_EMU_USER_ID", "1")),
  code = env("B24_EMU_CODE", emulator.DEFAULT_CODE),
  seed_leads = tonumber(env("B24_EMU_SEED_LEADS", "0")),
  enterprise = env("B24_EMU_ENTERPRISE", "0") == "1",
  latency_ms = tonumber(env("B24_EMU_LATENCY_MS", "0")),
  faults = env("B24_EMU_FAULTS", ""),
  time_scale = tonumber(env("B24_EMU_TIME_SCALE", "1")),
}
