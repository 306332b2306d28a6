-- b24.emulator.limits: the portal's two limits of protocol.md §3 on a scaled clock. The leaky
-- bucket per client address (50 requests, 2 a second drained; 250/5 on enterprise) and the
-- operating budget per method: seconds of processing summed over a window (10 minutes) of ten
-- baskets, as rest/lib/engine/access/loadlimiter.php (yuliai/bitrix-modules, platform 26.250.100)
-- keeps it: $bucketCount = 10 baskets of $bucketSize = 60 s, a method blocked while its sum is
-- over the limit (getLimitTime: $limitTime = 420 s, replaced by the plan's
-- rest_load_limiter_seconds when set, the docs say 480 s; --operating-limit), `batch` in $ignoreMethod
-- neither blocked nor billed (its sub-calls are billed to their own methods).
local pairs = pairs
local setmetatable = setmetatable
local math_floor = math.floor
local math_max = math.max
local math_ceil = math.ceil

local _M = {}
local mt = { __index = _M }

local WINDOW = 600
local BASKETS = 10

-- Methods the portal never blocks nor bills: loadlimiter.php $ignoreMethod = [Client::METHOD_BATCH].
local IGNORED = { batch = true }

-- opts: enterprise, operating_limit (seconds per method per window), operating_window (seconds of
-- the limits' clock, 600), clock (scaled seconds), wall (unix seconds now), scale (how much faster
-- the clock runs than the wall).
function _M.new(opts)
   local window = opts.operating_window or WINDOW
   return setmetatable({
      capacity = opts.enterprise and 250 or 50,
      drain = opts.enterprise and 5 or 2,
      operating_limit = opts.operating_limit or 420, -- loadlimiter.php $limitTime
      window = window, basket = window / BASKETS,
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

-- The unix time (an integer, rounded up) of a moment of the limits' clock.
function _M:unix(t)
   return math_ceil(self.wall() + (t - self.clock()) / self.scale)
end

-- The operating seconds of a method in its window (what `time.operating` reports), and when its
-- block lifts at the latest (`time.operating_reset_at`, unix seconds): the expiry of its oldest
-- basket, which is the first billing into that basket plus the window (loadlimiter.php
-- finalize/getResetTime); with nothing in the window (batch, or a method not yet billed), `since`
-- (the clock when the request began: getResetTime falls back on the request's first registered
-- call, which for a batch is the batch itself) plus the window.
function _M:operating_of(method, since)
   local t = self.clock()
   local current = math_floor(t / self.basket)
   local baskets = self.operating[method]
   local used, oldest = 0, nil
   if baskets then
      for index, b in pairs(baskets) do
         if index <= current - BASKETS then
            baskets[index] = nil
         else
            used = used + b.seconds
            if not oldest or index < oldest then oldest = index end
         end
      end
   end
   local expires = oldest and baskets[oldest].expires or (since or t) + self.window
   return used, self:unix(expires)
end

-- Adds the processing seconds of one call to its method's current basket (batch is not billed).
function _M:bill(method, seconds)
   if IGNORED[method] then return end
   local t = self.clock()
   local index = math_floor(t / self.basket)
   local baskets = self.operating[method]
   if not baskets then baskets = {}; self.operating[method] = baskets end
   local b = baskets[index]
   -- a basket expires a window after its first billing: never before it leaves the window
   if not b then b = { seconds = 0, expires = t + self.window }; baskets[index] = b end
   b.seconds = b.seconds + seconds
end

-- True when a method has spent its operating budget (the call that crossed it has completed);
-- never for batch.
function _M:blocked(method)
   if IGNORED[method] then return false end
   return (self:operating_of(method)) > self.operating_limit
end

return _M
