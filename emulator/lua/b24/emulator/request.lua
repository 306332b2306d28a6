-- b24.emulator.request: how the portal reads a webhook request. The path names the user, the
-- webhook code and the method (with an optional .json or .xml transport suffix); the parameters
-- are the query's fields and the body's, the body winning.
local core = require "bitrix24.core"
local json = require "b24.emulator.json"

local type = type
local pairs = pairs
local ipairs = ipairs
local tonumber = tonumber
local setmetatable = setmetatable
local string_byte = string.byte
local string_char = string.char
local string_gmatch = string.gmatch
local string_lower = string.lower
local string_gsub = string.gsub
local string_match = string.match
local string_find = string.find
local string_sub = string.sub
local form_decode = core.form_decode

local _M = {}

-- The top-level keys of each parameters table, in the order the request sent them (a decoded
-- table has lost it; PHP arrays keep it, and the legacy task.* methods read their parameters by
-- position). Weak, so a table's order lives as long as the table.
local ORDER = setmetatable({}, { __mode = "k" })

local function unescape(s)
   s = string_gsub(s, "+", " ")
   return (string_gsub(s, "%%(%x%x)", function(h) return string_char(tonumber(h, 16)) end))
end

-- The top-level names of a form or query string, first appearance first (parse_str: the part
-- of a key before its first "[").
local function form_keys(s)
   local keys = {}
   for pair in string_gmatch(s, "[^&]+") do
      local key = unescape(string_match(pair, "^[^=]*"))
      local top = string_match(key, "^([^%[]*)%[.*%]") or key
      if top ~= "" then keys[#keys + 1] = top end
   end
   return keys
end

local QUOTE = string_byte('"')

-- The keys of a JSON text's top-level object, in text order; nil when it is not an object.
local function json_keys(s)
   local i = string_find(s, "%S")
   if not i or string_sub(s, i, i) ~= "{" then return nil end
   local keys, depth, key_next = {}, 0, false
   local n = #s
   while i <= n do
      -- only strings, brackets and commas matter: jump to the next one
      i = string_find(s, '[{}%[%],"]', i)
      if not i then break end
      local c = string_sub(s, i, i)
      if c == '"' then
         local j = i + 1
         while true do
            j = string_find(s, '["\\]', j) or n + 1
            if j > n or string_byte(s, j) == QUOTE then break end
            j = j + 2 -- past an escape
         end
         if key_next and depth == 1 then
            local key = json.decode(string_sub(s, i, j))
            if type(key) == "string" then keys[#keys + 1] = key end
         end
         key_next = false
         i = j + 1
      else
         if c == "{" or c == "[" then
            depth = depth + 1
            key_next = c == "{"
         elseif c == "}" or c == "]" then
            depth = depth - 1
            if depth == 0 then break end
         elseif c == "," then
            key_next = true
         end
         i = i + 1
      end
   end
   return keys
end

-- Records keys (a list, duplicates allowed) as the order of params' top-level keys: the first
-- appearance of each key that params holds.
local function remember(params, keys)
   local order, seen = ORDER[params] or {}, {}
   for _, k in ipairs(order) do seen[k] = true end
   for _, k in ipairs(keys) do
      if not seen[k] and params[k] ~= nil then
         seen[k] = true
         order[#order + 1] = k
      end
   end
   ORDER[params] = order
end

-- The top-level keys of params in the order the request sent them; nil when unknown (a table
-- built another way).
function _M.keys_in_order(params)
   return ORDER[params]
end

-- Gives `to` the key order remembered for `from` (a copy of the parameters); returns to.
function _M.keep_order(to, from)
   local keys = ORDER[from]
   if keys then remember(to, keys) end
   return to
end

-- The parameters of a form or query string (a batch command's), their order remembered.
function _M.form_parameters(s)
   local params = form_decode(s or "") or {}
   remember(params, form_keys(s or ""))
   return params
end

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
   local keys = {}
   if request.query and request.query ~= "" then
      params = form_decode(request.query) or {}
      keys = form_keys(request.query)
   end
   local body = request.body
   if body and body ~= "" and (request.method == nil or request.method == "POST") then
      local fields
      if _M.is_json((request.headers or {})["content-type"]) then
         fields = json.decode(body)
         if type(fields) ~= "table" then fields = {} end
         for _, k in ipairs(json_keys(body) or {}) do keys[#keys + 1] = k end
      else
         fields = form_decode(body) or {}
         for _, k in ipairs(form_keys(body)) do keys[#keys + 1] = k end
      end
      -- array_replace: a key the query had keeps its place
      for k, v in pairs(fields) do params[k] = v end
   end
   remember(params, keys)
   return params
end

return _M
