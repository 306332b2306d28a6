-- b24.emulator.labels: the batch labels in the order the caller sent them. A portal runs batch
-- commands in that order (PHP arrays keep insertion order, for a JSON body and a query string
-- alike); a decoded Lua table has lost it, so it is read back from the raw request text.
local cjson = require("cjson.safe")
local request_of = require "b24.emulator.request"

local string_sub = string.sub
local string_byte = string.byte
local string_find = string.find
local string_match = string.match
local string_gsub = string.gsub
local string_char = string.char
local string_gmatch = string.gmatch
local tonumber = tonumber
local tostring = tostring
local type = type
local string_lower = string.lower

local _M = {}

local function unescape(s)
   s = string_gsub(s, "+", " ")
   return (string_gsub(s, "%%(%x%x)", function(h) return string_char(tonumber(h, 16)) end))
end

-- Labels of `cmd[label]=…` pairs of a form or query string, first appearance first; nil when
-- there are none or one is PHP's auto-index `cmd[]`.
function _M.form(s)
   local labels, seen = {}, {}
   for pair in string_gmatch(s, "[^&]+") do
      local key = unescape(string_match(pair, "^[^=]*"))
      -- rest_provider.php methodsBatch upper-cases the top-level keys: cmd, CMD, Cmd
      local name, label = string_match(key, "^%s*(...)%[([^%]]*)%]")
      if name and string_lower(name) ~= "cmd" then label = nil end
      if label == "" then return nil end
      if label and not seen[label] then
         seen[label] = true
         labels[#labels + 1] = label
      end
   end
   if #labels == 0 then return nil end
   return labels
end

local QUOTE, BACKSLASH = string_byte('"'), string_byte("\\")

-- The keys of the top-level "cmd" object of a JSON text, in text order; nil when cmd is not an
-- object (a JSON list keeps its order when decoded).
function _M.json(s)
   local depth, cmd_depth, pending = 0, nil, false
   local labels = {}
   local key_next = false -- the next string at this depth is a key (after "{" or ",")
   local kinds = {}
   local i, n = 1, #s
   while i <= n do
      local c = string_sub(s, i, i)
      if c == '"' then
         local j = i + 1
         while j <= n do
            local b = string_byte(s, j)
            if b == BACKSLASH then j = j + 2
            elseif b == QUOTE then break
            else j = j + 1 end
         end
         if key_next and kinds[depth] == "{" then
            local key = cjson.decode(string_sub(s, i, j))
            if cmd_depth and depth == cmd_depth then
               labels[#labels + 1] = tostring(key)
            elseif depth == 1 and type(key) == "string" and string_lower(key) == "cmd" then
               pending = true
            end
         else
            pending = false
         end
         key_next = false
         i = j + 1
      elseif c == "{" or c == "[" then
         depth = depth + 1
         kinds[depth] = c
         if pending and c == "{" and depth == 2 then cmd_depth = 2 end
         pending = false
         key_next = c == "{"
         i = i + 1
      elseif c == "}" or c == "]" then
         if cmd_depth and depth == cmd_depth then
            if #labels == 0 then return nil end
            return labels
         end
         depth = depth - 1
         i = i + 1
      elseif c == "," then
         key_next = true
         i = i + 1
      else
         -- whitespace and ":" keep a pending "cmd"; a scalar value ends it
         local _, e = string_find(s, "^[%s:]+", i)
         if e then
            i = e + 1
         else
            pending = false
            i = i + 1
         end
      end
   end
   return nil
end

-- The labels of a request's batch in the order sent, from the body (which wins over the query
-- string, as its fields do) or the query string; nil when unknown.
function _M.of(request)
   local body = request.body
   if body and body ~= "" then
      local got
      if request_of.is_json((request.headers or {})["content-type"]) then
         got = _M.json(body)
      else
         got = _M.form(body)
      end
      if got then return got end
   end
   if request.query and request.query ~= "" then return _M.form(request.query) end
   return nil
end

return _M
