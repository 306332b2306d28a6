-- b24.emulator.order: the keys of a request's `order` parameter in the order the caller sent
-- them. A portal applies a multi-key order in that order (PHP arrays keep insertion order, for a
-- JSON body and a form alike; main/classes/general/sql_util.php CSqlUtil::PrepareSql walks
-- $arOrder with foreach); a decoded Lua table has lost it, so it is read back from the raw
-- request text the portal keeps in portal.request while a request runs (or, inside a batch,
-- from the command's query string in portal.batch_command when batch sets it).
local cjson = require("cjson.safe")
local core = require "bitrix24.core"
local request_of = require "b24.emulator.request"

local type = type
local ipairs = ipairs
local tonumber = tonumber
local tostring = tostring
local string_sub = string.sub
local string_byte = string.byte
local string_find = string.find
local string_match = string.match
local string_gsub = string.gsub
local string_gmatch = string.gmatch
local string_char = string.char
local table_concat = table.concat
local form_decode = core.form_decode
local next = next
local pairs = pairs

local _M = {}

local function unescape(s)
   s = string_gsub(s, "+", " ")
   return (string_gsub(s, "%%(%x%x)", function(h) return string_char(tonumber(h, 16)) end))
end

-- The keys of `NAME[KEY]=…` pairs of a form or query string, first appearance first, for the
-- first of names that has any (names: the parameter's spellings, in the order the method tries
-- them); nil when none has.
function _M.form(s, names)
   local found = {}
   for pair in string_gmatch(s, "[^&]+") do
      local key = unescape(string_match(pair, "^[^=]*"))
      local name, sub = string_match(key, "^%s*([^%[]+)%[([^%]]*)%]")
      if name and sub ~= "" then
         local list = found[name]
         if not list then list = { seen = {} }; found[name] = list end
         if not list.seen[sub] then
            list.seen[sub] = true
            list[#list + 1] = sub
         end
      end
   end
   for _, name in ipairs(names) do
      local list = found[name]
      if list then list.seen = nil; return list end
   end
   return nil
end

local QUOTE, BACKSLASH = string_byte('"'), string_byte("\\")

-- The end of the JSON string starting at i (its closing quote).
local function string_end(s, i)
   local j, n = i + 1, #s
   while j <= n do
      local b = string_byte(s, j)
      if b == BACKSLASH then j = j + 2
      elseif b == QUOTE then return j
      else j = j + 1 end
   end
   return n
end

-- The keys of each object member of the top-level JSON object, in text order: name -> list;
-- members whose value is not an object are left out.
local function json_members(s)
   local out = {}
   local depth, kinds = 0, {}
   local key_next, member, current = false, nil, nil
   local i, n = 1, #s
   while i <= n do
      local c = string_sub(s, i, i)
      if c == '"' then
         local j = string_end(s, i)
         if key_next and kinds[depth] == "{" then
            local key = cjson.decode(string_sub(s, i, j))
            key = type(key) == "string" and key or tostring(key)
            if depth == 1 then member = key
            elseif depth == 2 and current then current[#current + 1] = key end
         end
         key_next = false
         i = j + 1
      elseif c == "{" or c == "[" then
         depth = depth + 1
         kinds[depth] = c
         if depth == 2 and c == "{" and member and not out[member] then
            current = {}
            out[member] = current
         end
         key_next = c == "{"
         i = i + 1
      elseif c == "}" or c == "]" then
         if depth == 2 then current, member = nil, nil end
         depth = depth - 1
         i = i + 1
      elseif c == "," then
         key_next = true
         if depth == 1 then member = nil end
         i = i + 1
      else
         local _, e = string_find(s, "^[^\"{}%[%],]+", i)
         i = (e or i) + 1
      end
   end
   return out
end

-- The keys of the object under the first of names in a JSON text; nil when none is an object.
function _M.json(s, names)
   local members = json_members(s)
   for _, name in ipairs(names) do
      if members[name] then return members[name] end
   end
   return nil
end

-- The spellings crm/classes/general/restservice.php CCrmRestHelper::resolveArrayParam tries for
-- a parameter: as given, upper case, lower case, capitalized, Hungarian ("arOrder").
function _M.spellings(name)
   local lower = name:lower()
   local capitalized = lower:sub(1, 1):upper() .. lower:sub(2)
   return { name, name:upper(), lower, capitalized, "ar" .. capitalized }
end

-- Whether list holds exactly the string keys of map.
local function same_keys(list, map)
   local n = 0
   for k in pairs(map) do
      if type(k) ~= "string" then return false end
      n = n + 1
   end
   if n ~= #list then return false end
   for _, k in ipairs(list) do
      if map[k] == nil then return false end
   end
   return true
end

-- Whether two decoded parameter tables hold the same values (scalars compared as text).
local function same(a, b)
   if type(a) == "table" and type(b) == "table" then
      for k, v in pairs(a) do
         if not same(v, b[k]) then return false end
      end
      for k in pairs(b) do
         if a[k] == nil then return false end
      end
      return true
   end
   if type(a) == "table" or type(b) == "table" then return false end
   return tostring(a) == tostring(b)
end

-- The one sequence all candidates agree on; nil when there is none or they disagree.
local function agreed(candidates)
   local found
   for _, keys in ipairs(candidates) do
      if found and table_concat(found, "\0") ~= table_concat(keys, "\0") then return nil end
      found = keys
   end
   return found
end

-- Inside a batch: the keys as the running command's query string sends them. The command is
-- not named to the method, so it is recognised: the commands whose parameters are exactly the
-- method's (current), else those whose order has exactly the keys of current's; their
-- sequence when they all agree, nil otherwise.
local function batch_keys(request, names, current)
   if type(current) ~= "table" then return nil end
   local params = request_of.parameters(request)
   local cmd
   for k, v in pairs(params) do
      if type(k) == "string" and k:upper() == "CMD" then cmd = v end
   end
   if type(cmd) ~= "table" then return nil end
   local order
   for _, name in ipairs(names) do
      if type(current[name]) == "table" then order = current[name]; break end
   end
   if not order or next(order) == nil then return nil end
   local exact, by_keys = {}, {}
   for _, command in pairs(cmd) do
      if type(command) == "string" then
         local query = string_match(command, "%?(.*)$") or ""
         local keys = _M.form(query, names)
         if keys and same_keys(keys, order) then
            by_keys[#by_keys + 1] = keys
            if same(form_decode(query) or {}, current) then exact[#exact + 1] = keys end
         end
      end
   end
   if #exact > 0 then return agreed(exact) end
   return agreed(by_keys)
end

-- The keys of parameter `name` (default "order", in its spellings) of the request portal is
-- answering, in the order sent: the body's (which replaces the query's, array_replace), else
-- the query string's; inside a batch, the running command's (portal.batch_command when batch
-- names it, else recognised by current, the method's decoded parameters); nil when unknown.
function _M.keys(portal, names, current)
   names = names or _M.spellings("order")
   if type(portal.batch_command) == "string" then
      local query = string_match(portal.batch_command, "%?(.*)$") or ""
      return _M.form(query, names)
   end
   local request = portal.request
   if type(request) ~= "table" then return nil end
   local _, _, method = request_of.route(request.path)
   if method == "batch" then return batch_keys(request, names, current) end
   local body = request.body
   if type(body) == "string" and body ~= "" and (request.method == nil or request.method == "POST") then
      local got
      if request_of.is_json((request.headers or {})["content-type"]) then
         got = _M.json(body, names)
      else
         got = _M.form(body, names)
      end
      if got then return got end
   end
   if type(request.query) == "string" and request.query ~= "" then return _M.form(request.query, names) end
   return nil
end

return _M
