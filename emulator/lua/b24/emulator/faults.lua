-- b24.emulator.faults: the --faults option of the emulated portal, what fails and how often
-- ("503=0.2,500=0.05,reset=0.02,slow=0.01,drop=0.3"), and the dice rolled for each request and
-- each event delivery (drop: the portal sends an event the receiver never gets); and the answers
-- held per method (--method-latency, --method-stall: "event.offline.get@3=600000").
local type = type
local ipairs = ipairs
local error = error
local tonumber = tonumber
local setmetatable = setmetatable
local string_gmatch = string.gmatch
local string_match = string.match
local string_lower = string.lower
local math_random = math.random
local math_floor = math.floor

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

-- Parses "METHOD[@N]=MS,…" (a method as the portal names it, lower case; @N: only its N-th
-- call; MS: milliseconds) into a list of { method, call (nil: every call), seconds }; nil, err
-- when an item does not read so.
function _M.parse_methods(spec)
   local out = {}
   for item in string_gmatch(spec or "", "[^,]+") do
      local method, call, ms = string_match(item, "^%s*([%w_%.]+)@?(%d*)%s*=%s*([%d.]+)%s*$")
      local n = tonumber(ms)
      if not method or not n or n >= 3600000 then
         return nil, "'" .. item .. "' is not METHOD[@N]=MS (milliseconds below 3600000)"
      end
      call = tonumber(call)
      if call and (call < 1 or call ~= math_floor(call)) then
         return nil, "'" .. item .. "' is not METHOD[@N]=MS: N counts from 1"
      end
      out[#out + 1] = { method = string_lower(method), call = call, seconds = n / 1000 }
   end
   return out
end

local Holds = {}
local holds_mt = { __index = Holds }

-- The held answers of a portal: latency (rules of parse_methods: the call runs, its answer
-- leaves that much later) and stall (the call is held, then refused 503 QUERY_LIMIT_EXCEEDED
-- without running, as a request stuck in front of the portal).
function _M.holds(latency, stall)
   return setmetatable({ latency = latency or {}, stall = stall or {}, calls = {} }, holds_mt)
end

-- Counts a call of method name (one that passed the credentials and the limits) and returns
-- its hold { seconds, call, stall = true|nil } or nil; a stall rule wins over a latency one.
function Holds:take(name)
   local n = (self.calls[name] or 0) + 1
   self.calls[name] = n
   for _, kind in ipairs({ "stall", "latency" }) do
      for _, r in ipairs(self[kind]) do
         if r.method == name and (r.call == nil or r.call == n) then
            return { seconds = r.seconds, call = n, stall = kind == "stall" or nil }
         end
      end
   end
   return nil
end

return _M
