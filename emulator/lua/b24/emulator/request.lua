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
local string_sub = string.sub
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

-- The method of a path /rest/METHOD, which names no webhook (no user, no code); nil for another
-- shape.
function _M.bare_method(path)
   local name = string_match(path or "", "^/rest/([^/]+)/?$")
   if not name then return nil end
   return _M.method_name(name)
end

-- True for a CORS preflight the REST module answers itself: OPTIONS on a path under /rest/,
-- compared in lower case (rest/include.php CRestEventHandlers::OnBeforeProlog).
function _M.is_preflight(request)
   return request.method == "OPTIONS" and string_sub(string_lower(request.path or ""), 1, 6) == "/rest/"
end

-- True when the request asks for the XML transport (METHOD.xml).
function _M.wants_xml(path)
   return string_find(path or "", "%.[xX][mM][lL]/?$") ~= nil
end

-- The media type of a Content-Type header as the portal compares it: the part before the first
-- ";", trimmed and lower-cased (main/lib/web/httpheaders.php HttpHeaders::getContentType).
function _M.media_type(content_type)
   if type(content_type) ~= "string" then return nil end
   local media = string_match(content_type, "^([^;]*)")
   return string_lower((string_gsub(media, "^%s+", ""):gsub("%s+$", "")))
end

-- True when the portal decodes the body as JSON: the media type is application/json or contains
-- "+json" (main/lib/httprequest.php HttpRequest::isJson).
function _M.is_json(content_type)
   local media = _M.media_type(content_type)
   if not media or media == "" then return false end
   return media == "application/json" or string_find(media, "+json", 1, true) ~= nil
end

-- Request parameters as the portal reads them (rest/classes/general/rest_util.php
-- CRestUtil::getRequestData): the query's fields, and for a POST the body's replacing them
-- (array_replace). A JSON body (is_json) that does not decode to an object or a list adds
-- nothing (decodeJsonStrict throws, the SystemException is swallowed); any other body is read
-- as a form (parse_str). Only a POST has its body read (HttpRequest::isPost).
function _M.parameters(request)
   local params = {}
   if request.query and request.query ~= "" then params = form_decode(request.query) or {} end
   local body = request.body
   if body and body ~= "" and (request.method == nil or request.method == "POST") then
      local fields
      if _M.is_json((request.headers or {})["content-type"]) then
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
