-- b24.emulator.request: how the portal reads a webhook request. The path names the user, the
-- webhook code and the method (with an optional .json or .xml transport suffix); the parameters
-- are the query's fields and the body's, the body winning.
local core = require "bitrix24.core"
local json = require "b24.emulator.json"

local type = type
local pairs = pairs
local string_lower = string.lower
local string_gsub = string.gsub
local string_match = string.match
local string_find = string.find
local form_decode = core.form_decode

local _M = {}

-- The method of a URL's last segment or of a batch command, lower-cased, without its transport
-- suffix (.json or .xml).
function _M.method_name(s)
   s = string_lower(s)
   s = string_gsub(s, "%.json$", "")
   s = string_gsub(s, "%.xml$", "")
   return s
end

-- The user, webhook code and method name of a request path /rest/USER/CODE/METHOD; nil when the
-- path has another shape.
function _M.route(path)
   local user, code, name = string_match(path or "", "^/rest/([^/]+)/([^/]+)/([^/]+)/?$")
   if not user then return nil end
   return user, code, _M.method_name(name)
end

-- True when the request asks for the XML transport (METHOD.xml).
function _M.wants_xml(path)
   return string_find(path or "", "%.[xX][mM][lL]/?$") ~= nil
end

-- Request parameters as the portal reads them: query ∪ body fields, the body winning; a body is
-- JSON only under exactly `Content-Type: application/json` (invalid JSON gives no fields).
function _M.parameters(request)
   local params = {}
   if request.query and request.query ~= "" then params = form_decode(request.query) or {} end
   local body = request.body
   if body and body ~= "" then
      local fields
      if (request.headers or {})["content-type"] == "application/json" then
         fields = json.decode(body)
         if type(fields) ~= "table" then fields = {} end
      else
         fields = form_decode(body) or {}
      end
      for k, v in pairs(fields) do params[k] = v end
   end
   return params
end

return _M
