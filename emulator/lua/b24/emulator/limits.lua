-- b24.emulator.limits: the portal's two limits of protocol.md §3 on a scaled clock. The leaky
-- bucket per client address (50 requests, 2 a second drained; 250/5 on enterprise) and the
-- operating budget per method (seconds of processing in a 10-minute window of one-minute baskets).
local pairs = pairs
local setmetatable = setmetatable
local math_floor = math.floor
local math_max = math.max
local math_ceil = math.ceil

local _M = {}
local mt = { __index = _M }

local WINDOW = 600

-- opts: enterprise, operating_limit (seconds per method per window), clock (scaled seconds),
-- wall (unix seconds now), scale (how much faster the clock runs than the wall).
function _M.new(opts)
   return setmetatable({
      capacity = opts.enterprise and 250 or 50,
      drain = opts.enterprise and 5 or 2,
      operating_limit = opts.operating_limit or 480,
      clock = opts.clock, wall = opts.wall, scale = opts.scale or 1,
      buckets = {}, operating = {},
   }, mt)
end

-- The leaky bucket: true when a request from `key` may run, and it then holds a drop.
function _M:admit(key)
   local t = self.clock()
   local b = self.buckets[key]
   if not b then b = { level = 0, at = t }; self.buckets[key] = b end
   b.level = math_max(0, b.level - (t - b.at) * self.drain)
   b.at = t
   if b.level + 1 > self.capacity then return false end
   b.level = b.level + 1
   return true
end

-- The operating seconds of a method in its window, and the unix time at which its oldest basket
-- expires.
function _M:operating_of(method)
   local t = self.clock()
   local current = math_floor(t / 60)
   local baskets = self.operating[method]
   local used, oldest = 0, current
   if baskets then
      for minute, seconds in pairs(baskets) do
         if minute <= current - WINDOW / 60 then
            baskets[minute] = nil
         else
            used = used + seconds
            if minute < oldest then oldest = minute end
         end
      end
   end
   local reset_scaled = (oldest * 60 + WINDOW)
   local reset_at = self.wall() + (reset_scaled - t) / self.scale
   return used, math_ceil(reset_at)
end

-- Adds the processing seconds of one call to its method's current basket.
function _M:bill(method, seconds)
   local minute = math_floor(self.clock() / 60)
   local baskets = self.operating[method]
   if not baskets then baskets = {}; self.operating[method] = baskets end
   baskets[minute] = (baskets[minute] or 0) + seconds
end

-- True when a method has spent its operating budget (the call that crossed it has completed).
function _M:blocked(method)
   return (self:operating_of(method)) > self.operating_limit
end

return _M
