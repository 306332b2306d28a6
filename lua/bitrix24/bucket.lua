-- bitrix24.bucket: the client's leaky bucket, mirroring the portal's own (protocol.md §3: 50
-- requests of burst draining 2 a second, 250/5 on Enterprise plans): requests take drops, and
-- a 503 QUERY_LIMIT_EXCEEDED fills it, as the portal says it is full.
local type = type
local error = error
local setmetatable = setmetatable
local math_floor = math.floor
local math_max = math.max

local _M = {}

local PRESETS = {
   standard = { capacity = 50, drain = 2 },
   enterprise = { capacity = 250, drain = 5 },
}

local Bucket = {}
local bucket_mt = { __index = Bucket }

-- A bucket of `capacity` drops draining `drain` a second on the clock now().
function _M.new(capacity, drain, now)
   return setmetatable({ capacity = capacity, drain = drain, level = 0, at = now(), now = now }, bucket_mt)
end

function Bucket:update()
   local t = self.now()
   self.level = math_max(0, self.level - (t - self.at) * self.drain)
   self.at = t
end

-- Takes up to n drops: how many fit now, and the seconds until the next one fits.
function Bucket:take(n)
   self:update()
   local k = math_floor(self.capacity - self.level + 1e-9)
   if k > n then k = n end
   if k < 0 then k = 0 end
   self.level = self.level + k
   local wait = 0
   if k == 0 then wait = (self.level + 1 - self.capacity) / self.drain end
   return k, wait
end

-- The portal said it is full (503): mirror that.
function Bucket:fill()
   self:update()
   self.level = math_max(self.level, self.capacity)
end

-- The client's `limit` option as {capacity, drain}, or false (no limiter); raises with prefix at
-- level for a bad one.
function _M.check_limit(limit, prefix, level)
   if limit == nil or limit == "standard" then return PRESETS.standard end
   if limit == "enterprise" then return PRESETS.enterprise end
   if limit == false then return false end
   if type(limit) == "table" and type(limit.capacity) == "number" and limit.capacity >= 1 and
      type(limit.drain) == "number" and limit.drain > 0 then
      return { capacity = limit.capacity, drain = limit.drain }
   end
   error(prefix .. "bad option 'limit' (\"standard\", \"enterprise\", false or {capacity, drain} expected)", level + 1)
end

return _M
