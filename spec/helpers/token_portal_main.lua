-- A b24 serve handler (run with --workers 1) for spec/client_refresh_spec.lua: an application's
-- REST endpoint (/rest/METHOD) that takes one access token at a time from the JSON body's auth,
-- as a portal does: the valid one runs the method, an earlier one answers 401 expired_token,
-- anything else 401 invalid_token (protocol.md §2; settings/oauth/auto-renewal.md).
--   spec.valid {token}   makes token the valid one (the previous one expires)
--   spec.count           calls by outcome: { ok, expired, invalid }
--   batch                each command's method runs, or the whole batch answers expired_token
--   anything else        { result = { method, n } } where n counts the method's good calls
local cjson = require("cjson.safe").new()

local valid = "token0first0000"
local expired = {}
local counts = { ok = 0, expired = 0, invalid = 0 }
local per_method = {}

local JSON = { ["Content-Type"] = "application/json" }

local function answer(status, t)
   return status, JSON, cjson.encode(t)
end

return function(req)
   local method = req.path:match("^/rest/([^/]+)$")
   if not method then return answer(404, { error = "NOT_FOUND" }) end
   local p = req.body and req.body ~= "" and cjson.decode(req.body) or {}
   if method == "spec.valid" then
      expired[valid] = true
      valid = p.token
      return answer(200, { result = true })
   end
   if method == "spec.count" then return answer(200, { result = counts }) end
   if p.auth ~= valid then
      if expired[p.auth] then
         counts.expired = counts.expired + 1
         return answer(401, { error = "expired_token", error_description = "The access token provided has expired." })
      end
      counts.invalid = counts.invalid + 1
      return answer(401, { error = "invalid_token", error_description = "The access token provided is invalid." })
   end
   counts.ok = counts.ok + 1
   local t = os.time() + 0.0
   local time = { start = t, finish = t, duration = 0, processing = 0 }
   if method == "batch" then
      local result = {}
      for label, cmd in pairs(p.cmd or {}) do result[label] = { method = cmd:match("^[^?]+") } end
      return answer(200, { result = { result = result, result_error = {}, result_total = {}, result_next = {},
                                      result_time = {} }, time = time })
   end
   per_method[method] = (per_method[method] or 0) + 1
   return answer(200, { result = { method = method, n = per_method[method] }, time = time })
end
