-- bitrix24.transport.curl: the REST client's transport outside nginx, on one libcurl session of
-- bitrix24.core (keep-alive across requests; request_many runs requests at once). A request
-- marked `fresh` (a write) goes on a connection of its own: libcurl silently sends a request
-- again when a reused keep-alive connection dies before any answer, which would repeat a write
-- the portal may already have run. The shape every transport has (docs/api.md "Transports"):
--   transport:request(req) → res | nil, msg, kind, sent
--   transport:request_many(reqs) → { res | { error, kind, sent }, … } in the order given
--   transport.now() → monotonic seconds, transport.sleep(s), transport:close()
local core = require "bitrix24.core"

local tostring = tostring
local setmetatable = setmetatable
local math_min = math.min

local _M = {}
local mt = { __index = _M }

-- What one session:request_many takes (the core raises beyond it).
local MANY = core.http_many_max

-- new(opts) → transport. opts: timeout (65), connect_timeout (5), verify, ca_file, proxy,
-- user_agent ("bitrix24-lua/VERSION"); the session raises on bad values.
function _M.new(opts)
   opts = opts or {}
   local session = core.http{
      connect_timeout = opts.connect_timeout or 5, timeout = opts.timeout or 65,
      verify = opts.verify, ca_file = opts.ca_file, proxy = opts.proxy,
      user_agent = opts.user_agent or ("bitrix24-lua/" .. tostring(core._VERSION)),
   }
   return setmetatable({ session = session }, mt)
end

-- One request on the session: res { status, headers, body } | nil, msg, kind, sent.
function _M.request(self, req)
   return self.session:request(req)
end

-- Several requests at once, in calls of at most MANY to the session; answers in order.
function _M.request_many(self, reqs)
   local session = self.session
   if #reqs <= MANY then return session:request_many(reqs) end
   local out = {}
   for first = 1, #reqs, MANY do
      local part = {}
      for i = first, math_min(#reqs, first + MANY - 1) do part[#part + 1] = reqs[i] end
      local got = session:request_many(part)
      for j = 1, #part do out[first + j - 1] = got[j] end
   end
   return out
end

function _M.close(self)
   self.session:close()
end

-- The library's one monotonic clock and its blocking sleep, called as plain functions.
_M.now = core.now
_M.sleep = core.sleep

return _M
