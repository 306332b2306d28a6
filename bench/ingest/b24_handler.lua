-- bench/ingest: the b24 side. Decodes a Bitrix24 event delivery (PHP-style form body) and
-- checks its application token in constant time: 200 {"success":true}, 401 otherwise.
local core = require "bitrix24.core"

local expected = assert(os.getenv("INGEST_TOKEN"), "INGEST_TOKEN is not set")
local FORM = "application/x-www-form-urlencoded"
local JSON = { ["Content-Type"] = "application/json" }

return function(request)
   if request.method ~= "POST" then
      return 405, JSON, '{"error":"method not allowed"}'
   end
   local ctype = request.headers["content-type"] or ""
   if ctype:sub(1, #FORM):lower() ~= FORM then
      return 415, JSON, '{"error":"unsupported media type"}'
   end
   local event = core.form_decode(request.body)
   local auth = event and event.auth
   local token = type(auth) == "table" and auth.application_token
   if type(token) == "string" and core.equal(token, expected) then
      return 200, JSON, '{"success":true}'
   end
   return 401, JSON, '{"error":"unauthorized"}'
end
