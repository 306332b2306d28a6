-- A b24 serve handler (run with --workers 1) for spec/client_redirect_spec.lua: a portal that
-- answers what the spec asks of it, so the client meets redirects and terminal errors over real
-- HTTP. Every call is counted by method (spec.count reads the counts, not counting itself).
--
--   spec.redirect {location, status = 301, once}  a 3xx with that Location (once: only the first
--                                                 time; afterwards {result = "ran"})
--   spec.error {status, error, error_description}  that error body with that status
--   anything else                                  {result = "ran"}
local cjson = require("cjson.safe").new()

local counts = {}
local redirected = {}

local JSON = { ["Content-Type"] = "application/json" }

local function answer(result)
   local t = os.time() + 0.0
   return 200, JSON, cjson.encode({ result = result, time = { start = t, finish = t, duration = 0, processing = 0 } })
end

return function(req)
   local method = req.path:match("^/rest/%d+/[^/]+/([^/]+)$")
   if not method then return 404, JSON, '{"error":"NOT_FOUND"}' end
   local p = req.body and req.body ~= "" and cjson.decode(req.body) or {}
   if method == "spec.count" then return answer(counts) end
   counts[method] = (counts[method] or 0) + 1
   if method == "spec.redirect" and not (p.once and redirected[p.location]) then
      redirected[p.location] = true
      return tonumber(p.status) or 301, { Location = p.location, ["Content-Type"] = "text/html" }, "Moved"
   end
   if method == "spec.error" then
      return tonumber(p.status) or 400, JSON,
         cjson.encode({ error = p.error, error_description = p.error_description })
   end
   return answer("ran")
end
