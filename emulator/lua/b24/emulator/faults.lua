-- b24.emulator.faults: the --faults option of the emulated portal, what fails and how often
-- ("503=0.2,500=0.05,reset=0.02,slow=0.01,drop=0.3"), and the dice rolled for each request and
-- each event delivery (drop: the portal sends an event the receiver never gets).
local type = type
local error = error
local tonumber = tonumber
local setmetatable = setmetatable
local string_gmatch = string.gmatch
local string_match = string.match
local string_lower = string.lower
local math_random = math.random

local _M = {}
local mt = { __index = _M }

local NAMES = { ["503"] = 503, ["500"] = 500, reset = "reset", slow = "slow", drop = "drop" }

-- Parses "503=0.2,500=0.05,reset=0.02,slow=0.01,drop=0.3" into { [503] = 0.2, [500] = 0.05, reset = …,
-- slow = …, drop = … };
-- nil, err for an unknown fault or a probability outside [0, 1].
function _M.parse(spec)
   local faults = {}
   for item in string_gmatch(spec or "", "[^,]+") do
      local name, p = string_match(item, "^%s*([%w_]+)%s*=%s*([%d.]+)%s*$")
      local key = name and NAMES[string_lower(name)]
      p = tonumber(p)
      if not key then return nil, "unknown fault '" .. item .. "' (503, 500, reset, slow or drop expected)" end
      if not p or p < 0 or p > 1 then return nil, "fault '" .. item .. "' needs a probability from 0 to 1" end
      faults[key] = p
   end
   return faults
end

-- The dice of a portal: spec is a string for parse or a table it returned (nil: no faults);
-- random is a [0,1) function (math.random by default). Raises error(err, 0) on a bad spec.
function _M.new(spec, random)
   local faults = spec
   if type(faults) ~= "table" then
      local err
      faults, err = _M.parse(faults)
      if not faults then error(err, 0) end
   end
   return setmetatable({ p = faults, random = random or math_random }, mt)
end

-- True when `fault` (503, 500, "reset" or "slow") happens to this request, or "drop" to this
-- event delivery.
function _M:roll(fault)
   local p = self.p[fault]
   return p ~= nil and p > 0 and self.random() < p
end

return _M
