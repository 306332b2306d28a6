-- b24.emulator.xml: the XML transport (METHOD.xml) of the portal's REST server. The same envelope
-- inside <response>, every key an element, integer keys (list items) as <item>, scalars as PHP
-- prints them (true "1", false and null empty, floats to 14 digits), XML special characters
-- escaped; no declaration.
local json = require "b24.emulator.json"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local string_format = string.format
local string_gsub = string.gsub
local string_find = string.find
local table_sort = table.sort
local table_concat = table.concat
local math_floor = math.floor
local null = json.null

local _M = {}

local HEADERS = json.headers("text/xml; charset=utf-8")
local ENVELOPE_ORDER = { result = 1, next = 2, total = 3, time = 4, error = 1, error_description = 2 }
local TIME_ORDER = { start = 1, finish = 2, duration = 3, processing = 4, date_start = 5, date_finish = 6,
                     operating_reset_at = 7, operating = 8 }
local ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#039;" }

local function scalar(v)
   if v == true then return "1" end
   if v == false or v == nil or v == null then return "" end
   if type(v) == "number" then
      if v == math_floor(v) and v > -1e15 and v < 1e15 then return string_format("%d", v) end
      -- PHP's precision-14 print: 2.2649765014648E-5, 1.0E+25
      local f = string_gsub(string_format("%.14g", v), "e([+-])0*(%d)", "E%1%2")
      if string_find(f, "E", 1, true) and not string_find(f, ".", 1, true) then
         f = string_gsub(f, "E", ".0E")
      end
      return f
   end
   return (string_gsub(tostring(v), "[&<>\"']", ESCAPES))
end

-- The keys of t: list items first in index order, then the names in `order`, then the rest sorted.
local function keys_of(t, order)
   local keys = {}
   for k in pairs(t) do keys[#keys + 1] = k end
   table_sort(keys, function(a, b)
      local na, nb = type(a) == "number", type(b) == "number"
      if na ~= nb then return na end
      if na then return a < b end
      local oa, ob = order and order[a], order and order[b]
      if oa and ob then return oa < ob end
      if oa or ob then return oa ~= nil end
      return a < b
   end)
   return keys
end

local function elements(v, out, order)
   for _, k in ipairs(keys_of(v, order)) do
      local name = type(k) == "number" and "item" or tostring(k)
      local item = v[k]
      out[#out + 1] = "<" .. name .. ">"
      if type(item) == "table" and item ~= null then
         elements(item, out, k == "time" and TIME_ORDER or nil)
      else
         out[#out + 1] = scalar(item)
      end
      out[#out + 1] = "</" .. name .. ">"
   end
   return out
end

-- The XML text of an envelope (a decoded JSON answer).
function _M.encode(v)
   return "<response>" .. table_concat(elements(v, {}, ENVELOPE_ORDER)) .. "</response>"
end

-- A JSON answer of the portal (status, headers, body, extra) as the XML transport gives it.
function _M.answer(status, headers, body, extra)
   local value = json.decode(body or "")
   if type(value) ~= "table" then return status, headers, body, extra end
   return status, HEADERS, _M.encode(value), extra
end

return _M
