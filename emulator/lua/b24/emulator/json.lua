-- b24.emulator.json: JSON as the portal's PHP writes it (json_encode: every empty table is [],
-- a map keyed "0".."n-1" is a list, floats as the shortest text that reads back the same, as PHP
-- 7.1+ writes them with serialize_precision = -1) and the portal's JSON answers. The codec is
-- the core's, so every digit a client sends is kept (lua-cjson wrote 14).
local core = require "bitrix24.core"

local pcall = pcall
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local json_encode = core.json_encode
local json_decode = core.json_decode

local _M = {}

_M.null = core.json_null
-- rest/classes/general/rest_util.php CRestUtil::sendHeaders: every answer of the REST server
-- (CRestServer::process) carries these, whatever its status.
_M.CORS = { ["Access-Control-Allow-Origin"] = "*",
            ["Access-Control-Allow-Headers"] = "origin, content-type, accept",
            ["X-Content-Type-Options"] = "nosniff" }
-- The headers of an answer: CORS plus content_type (rest.php CRestServer::sendHeaders).
function _M.headers(content_type)
   local h = { ["Content-Type"] = content_type }
   for k, v in pairs(_M.CORS) do h[k] = v end
   return h
end
_M.HEADERS = _M.headers("application/json; charset=utf-8")
local INTERNAL_BODY = '{"error":"INTERNAL_SERVER_ERROR","error_description":"Internal server error"}'

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

-- The JSON text of v as PHP writes it (an empty table is []); nil when v cannot be encoded.
function _M.encode(v)
   local ok, body = pcall(json_encode, v)
   if not ok then return nil end
   return body
end

-- The JSON text of v as it is (empty tables as {}); nil when v cannot be encoded.
function _M.encode_plain(v)
   local ok, body = pcall(json_encode, v, { empty = "object" })
   if not ok then return nil end
   return body
end

-- The value of a JSON text (integers kept whole on Lua 5.4); nil, err when it is not JSON. A
-- request's size is the host's to bound (--max-body), so no limit of the codec's refuses it.
function _M.decode(s)
   local v, err = json_decode(s, { max_size = #s + 1, max_pairs = #s + 1, max_depth = 512,
                                   max_memory = 64 * #s + 1048576 })
   if v == nil then return nil, err end
   return v
end

-- An answer: status, headers, the JSON body of value.
function _M.respond(status, value)
   local body = _M.encode(value)
   if not body then status, body = 500, INTERNAL_BODY end
   return status, _M.HEADERS, body
end

-- An error answer from { status, error, error_description }.
function _M.respond_error(err)
   -- rest/lib/restexception.php output: error, error_description and the exception's
   -- additional fields (an ArgumentException's `argument`)
   return _M.respond(err.status, { error = err.error, error_description = err.error_description,
                                   argument = err.argument })
end

return _M
