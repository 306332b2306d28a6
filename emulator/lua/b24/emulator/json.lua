-- b24.emulator.json: JSON as the portal's PHP writes it (json_encode: every empty table is [],
-- a map keyed "0".."n-1" is a list, floats to 14 digits) and the portal's JSON answers.
local cjson = require("cjson.safe").new()

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local tostring = tostring
local string_gsub = string.gsub

cjson.encode_number_precision(14)

local _M = {}

_M.null = cjson.null
_M.HEADERS = { ["Content-Type"] = "application/json; charset=utf-8" }
local INTERNAL_BODY = '{"error":"INTERNAL_SERVER_ERROR","error_description":"Internal server error"}'
-- lua-cjson 2.1.0 has no encode_empty_table_as_object: empty tables become this marker, which the
-- encoder's output then turns into PHP's [].
local EMPTY = "__b24_emulator_empty_array__"
local EMPTY_JSON = '"' .. EMPTY .. '"'

-- A copy of v as PHP's json_encode would shape it: every empty table is [].
local function php(v)
   if type(v) ~= "table" then return v end
   if next(v) == nil then return EMPTY end
   local out = {}
   for k, item in pairs(v) do out[k] = php(item) end
   return out
end

-- A map keyed by labels (in their run order) as PHP shapes it: keys exactly "0".."n-1" make a list.
function _M.php_map(map, labels)
   local used, is_list = {}, true
   for _, label in ipairs(labels) do
      if map[label] ~= nil then
         used[#used + 1] = label
         if label ~= tostring(#used - 1) then is_list = false end
      end
   end
   if #used == 0 or not is_list then return map end
   local list = {}
   for i, label in ipairs(used) do list[i] = map[label] end
   return list
end

-- The JSON text of v as PHP writes it; nil when v cannot be encoded.
function _M.encode(v)
   local body = cjson.encode(php(v))
   if not body then return nil end
   return (string_gsub(body, EMPTY_JSON, "[]"))
end

-- The JSON text of v as it is (empty tables as {}); nil when v cannot be encoded.
function _M.encode_plain(v)
   return cjson.encode(v)
end

-- The value of a JSON text; nil, err when it is not JSON.
function _M.decode(s)
   return cjson.decode(s)
end

-- An answer: status, headers, the JSON body of value.
function _M.respond(status, value)
   local body = _M.encode(value)
   if not body then status, body = 500, INTERNAL_BODY end
   return status, _M.HEADERS, body
end

-- An error answer from { status, error, error_description }.
function _M.respond_error(err)
   return _M.respond(err.status, { error = err.error, error_description = err.error_description })
end

return _M
