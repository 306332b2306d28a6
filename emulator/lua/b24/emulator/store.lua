-- b24.emulator.store: the rows of one entity type (leads, deals, contacts, companies, tasks) in
-- memory, as the portal's database holds them, and the list semantics of protocol.md §4: filter
-- prefixes, order, 50 rows a page, start/next/total and start=-1. Rows are tables of strings keyed
-- by upper-case field name, kept by numeric id with an ascending index of ids.
--
-- Dates. A field compares as a date when the store's def marks it one: an entry of def.fields
-- whose type is "datetime" or "date" (an entry is { "NAME", "type", … } or { name =, type = }),
-- or def.dates = { NAME = true }. In a filter, both the row's value and the filter's value are
-- read as b24.emulator.dates.parse reads them (CRestUtil::unConvertDateTime's strtotime) in
-- opts.timezone, the zone the caller passes to query ("+03:00" when absent), and compared as
-- unix times, as main/classes/general/sql_util.php CSqlUtil::PrepareWhere compares a datetime
-- column: an operation other than =, <, >, <=, >= is "="; a value that is empty or does not
-- parse (unConvertDateTime returns false, and false == '') means "IS NULL", "NOT (IS NULL)"
-- with "!"; "!" before a comparison is "IS NULL OR NOT (…)".
--
-- Order. params.order is a map, which has lost the caller's key order: opts.order_keys (the
-- keys of params.order as sent, b24.emulator.order) gives it back; keys it does not name go
-- after, alphabetically. opts.sort_value = { NAME = fn(value) -> number|nil } sorts a field by
-- a value of its own (a lead's STATUS_ID by its status's SORT); nil sorts as NULL, first when
-- ascending, as MySQL does.
local dates = require "b24.emulator.dates"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local string_format = string.format
local string_lower = string.lower
local string_upper = string.upper
local string_sub = string.sub
local table_concat = table.concat
local string_find = string.find
local string_match = string.match
local table_sort = table.sort
local table_remove = table.remove
local math_floor = math.floor
local math_type = math.type -- nil on LuaJIT
local math_min = math.min
local math_max = math.max
local math_ceil = math.ceil
local math_huge = math.huge

local parse_date = dates.parse

local _M = {}
local mt = { __index = _M }

local PAGE = 50
_M.PAGE = PAGE

-- A scalar as the string a row holds; nil for null and tables.
local function to_text(v)
   local t = type(v)
   if t == "string" then return v end
   if t == "number" then
      -- PHP's json_decode gives an int for an integer that fits 64 bits (kept whole), a float
      -- otherwise, which PHP turns into text with precision = 14
      if math_type and math_type(v) == "integer" then return string_format("%d", v) end
      if v == math_floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return string_format("%d", v) end
      return string_format("%.14g", v)
   end
   if t == "boolean" then return v and "Y" or "N" end
   return nil
end
_M.to_text = to_text

-- PHP's intval of a request value: the integer a string starts with ("49.9" → 49, "abc" → 0),
-- a number truncated toward zero, true 1, anything else 0.
local function php_int(v)
   local t = type(v)
   if t == "string" then
      local num = string_match(v, "^%s*([+-]?%d+%.?%d*[eE][+-]?%d+)") or string_match(v, "^%s*([+-]?%d+)")
      v = tonumber(num or "") or 0
   elseif t == "boolean" then
      return v and 1 or 0
   elseif t ~= "number" then
      return 0
   end
   if v ~= v or v == math_huge or v == -math_huge then return 0 end
   if v < 0 then return -math_floor(-v) end
   return math_floor(v)
end
_M.php_int = php_int

-- Ordering on strings that hold numbers is numeric, as MySQL compares the typed columns.
local function compare(a, b)
   local na, nb = tonumber(a), tonumber(b)
   if na and nb then
      if na < nb then return -1 elseif na > nb then return 1 else return 0 end
   end
   a, b = tostring(a), tostring(b)
   if a < b then return -1 elseif a > b then return 1 else return 0 end
end
_M.compare = compare

-- longest first: "=%"/"%=" (and their negations) are LIKE with the caller's own wildcards
-- (main/classes/general/sql_util.php GetFilterOperation RLIKE/LLIKE; sqlwhere.php operation M)
local PREFIXES = { "!=%", "!%=", "=%", "%=", ">=", "<=", "!=", "!@", "!%", ">", "<", "=", "!", "@", "%" }
local LIKE = { ["=%"] = true, ["%="] = true, ["!=%"] = true, ["!%="] = true }

-- A SQL LIKE pattern (% any run, _ one character) as an anchored Lua pattern.
local function like_pattern(want)
   local out = { "^" }
   for i = 1, #want do
      local ch = string_sub(want, i, i)
      if ch == "%" then out[#out + 1] = ".*"
      elseif ch == "_" then out[#out + 1] = "."
      elseif string_find(ch, "^[%^%$%(%)%%%.%[%]%*%+%-%?]$") then out[#out + 1] = "%" .. ch
      else out[#out + 1] = ch end
   end
   out[#out + 1] = "$"
   return table_concat(out)
end

-- The names of def's date fields: NAME -> "date" or "datetime" (cached in def; def.dates
-- entries count as "datetime" unless they say "date").
local function date_fields(def)
   if type(def) ~= "table" then return {} end
   if def.date_set then return def.date_set end
   local set = {}
   for _, f in ipairs(type(def.fields) == "table" and def.fields or {}) do
      if type(f) == "table" then
         local name, kind = f.name or f[1], f.type or f[2]
         if type(name) == "string" and (kind == "datetime" or kind == "date") then set[name] = kind end
      end
   end
   for name, on in pairs(type(def.dates) == "table" and def.dates or {}) do
      if on then set[name] = on == "date" and "date" or "datetime" end
   end
   def.date_set = set
   return set
end
_M.date_fields = date_fields

-- A filter value of a date field as the time it names: its unix time, or false for one that is
-- empty or does not parse (unConvertDateTime's false, which PrepareWhere reads as ''). For a
-- "date" field the day alone counts (CRestUtil::unConvertDate: ConvertTimeStamp 'SHORT'): the
-- time of that day's midnight in tz.
local function filter_time(v, tz, kind)
   if type(v) ~= "string" or v == "" then return false end
   local t = parse_date(v, tz)
   if not t then return false end
   if kind == "date" then t = parse_date(dates.format_date(t, tz), tz) end
   return t
end

local function parse_filter(filter, name_of, date_set, tz)
   local out = {}
   if type(filter) ~= "table" then return out end
   for k, v in pairs(filter) do
      if type(k) == "string" then
         local op, name = "", k
         for _, p in ipairs(PREFIXES) do
            if string_sub(k, 1, #p) == p then op, name = p, string_sub(k, #p + 1); break end
         end
         name = name_of(name)
         if op == "" then op = "=" end
         if type(v) == "table" then
            local set = {}
            for _, item in pairs(v) do set[#set + 1] = to_text(item) end
            if op == "=" or op == "@" then op = "@" elseif op == "!" or op == "!=" or op == "!@" then op = "!@" end
            v = set
         else
            v = to_text(v) or ""
         end
         local c = { op = op, name = name, value = v }
         if date_set[name] then
            c.tz, c.memo = tz, {}
            if type(v) == "table" then
               c.times = {}
               for i, item in ipairs(v) do c.times[i] = filter_time(item, tz, date_set[name]) end
            else
               c.time = filter_time(v, tz, date_set[name])
            end
         end
         out[#out + 1] = c
      end
   end
   return out
end

local function in_set(have, set)
   for _, item in ipairs(set) do
      if have ~= nil and compare(have, item) == 0 then return true end
   end
   return false
end

-- sql_util.php PrepareWhere on a datetime column: see the top of this file.
local function date_matches(have, c)
   local t
   if type(have) == "string" and have ~= "" then
      -- rows share their dates (a second's adds): each distinct text is parsed once per query
      local memo = c.memo
      t = memo[have]
      if t == nil then
         t = parse_date(have, c.tz) or false
         memo[have] = t
      end
      if t == false then t = nil end
   end
   local op, negative = c.op, false
   if op == "!@" or op == "!" or op == "!=" or op == "!%" then negative = true end
   if op == "@" or op == "!@" then
      local any = false
      for _, want in ipairs(c.times) do
         if want == false then
            if t == nil then any = true end
         elseif t ~= nil and t == want then
            any = true
         end
      end
      if negative then return not any end
      return any
   end
   local want = c.time
   if want == false then
      if negative then return t ~= nil end
      return t == nil
   end
   if t == nil then return negative end
   local ok
   if op == ">" then ok = t > want
   elseif op == ">=" then ok = t >= want
   elseif op == "<" then ok = t < want
   elseif op == "<=" then ok = t <= want
   else ok = t == want end
   if negative then return not ok end
   return ok
end

local NEGATIVE = { ["!"] = true, ["!="] = true, ["!@"] = true, ["!%"] = true, ["!=%"] = true, ["!%="] = true }

-- Whether one value (a string, or nil for none) meets condition c.
local function meets(have, c)
   local want, op = c.value, c.op
   if c.tz then return date_matches(have, c) end
   if op == "@" then return in_set(have, want) end
   if op == "!@" then return not in_set(have, want) end
   if LIKE[op] then
      -- MySQL's collations compare without case
      local ok = have ~= nil and string_find(string_lower(have), like_pattern(string_lower(want))) ~= nil
      if NEGATIVE[op] then return not ok end
      return ok
   end
   if op == "%" or op == "!%" then
      local ok = have ~= nil and string_find(string_lower(have), string_lower(want), 1, true) ~= nil
      if op == "!%" then return not ok end
      return ok
   end
   if op == "=" then
      if want == "" then return have == nil or have == "" end
      return have ~= nil and compare(have, want) == 0
   end
   if op == "!" or op == "!=" then
      if want == "" then return have ~= nil and have ~= "" end
      return have == nil or compare(have, want) ~= 0
   end
   if have == nil or have == "" then return false end
   local r = compare(have, want)
   return (op == ">" and r > 0) or (op == ">=" and r >= 0) or (op == "<" and r < 0) or (op == "<=" and r <= 0)
end

-- A row meets every condition. A field holding a list (a multiple user field) meets a condition
-- when one of its values does, a negative one when all do (the values are rows of a joined
-- table); an empty list is no value.
local function matches(row, conditions)
   for _, c in ipairs(conditions) do
      local have = row[c.name]
      local ok
      if type(have) == "table" and have[1] ~= nil and type(have[1]) ~= "table" then
         local negative = NEGATIVE[c.op]
         ok = negative
         for _, item in ipairs(have) do
            local one = meets(item, c)
            if negative and not one then ok = false; break end
            if not negative and one then ok = true; break end
         end
      else
         if type(have) == "table" then have = nil end
         ok = meets(have, c)
      end
      if not ok then return false end
   end
   return true
end

local function parse_order(order, name_of, sent)
   local keys = {}
   if type(order) ~= "table" then return keys end
   local rank = {}
   for i, k in ipairs(sent or {}) do rank[k] = rank[k] or i end
   for k, v in pairs(order) do
      if type(k) == "string" then
         keys[#keys + 1] = { key = k, name = name_of(k), desc = string_upper(to_text(v) or "") == "DESC" }
      end
   end
   -- the keys in the order sent when known; a decoded map has lost it: the rest alphabetically
   table_sort(keys, function(a, b)
      local ra, rb = rank[a.key] or math_huge, rank[b.key] or math_huge
      if ra ~= rb then return ra < rb end
      return a.key < b.key
   end)
   return keys
end

-- A new store for one entity type; def is the entity's field definition (kept for its methods).
function _M.new(kind, def)
   return setmetatable({ kind = kind, def = def, rows = {}, ids = {}, next_id = 1, multi_id = 0 }, mt)
end

-- The id the next row gets (ids are never reused).
function _M:take_id()
   local id = self.next_id
   self.next_id = id + 1
   return id
end

-- Keeps row under id, a new id from take_id (so the index stays ascending).
function _M:put(id, row)
   self.rows[id] = row
   self.ids[#self.ids + 1] = id
end

-- Removes the row with id: true, or false when there is none.
function _M:remove(id)
   if not self.rows[id] then return false end
   self.rows[id] = nil
   local ids = self.ids
   local lo, hi = 1, #ids
   while lo <= hi do
      local mid = math_floor((lo + hi) / 2)
      if ids[mid] == id then table_remove(ids, mid); break
      elseif ids[mid] < id then lo = mid + 1 else hi = mid - 1 end
   end
   return true
end

-- The rows matching params.filter, in params.order, a page of 50 chosen by params.start as the
-- platform pages (rest/classes/general/rest.php CRestServer::processCall takes intval(start)):
--  * opts.paging "legacy" (crm.lead.list …; IRestService::getNavData): a negative start counts
--    nothing (nTopCount: the first 50, total 0, no next); otherwise page intval(start/50)+1 of a
--    CDBResult (main/classes/general/dbresult.php NavQuery), and a page past the last one is
--    page 1 (calculatePageNumber's default); next = page*50 while pages remain (setNavData).
--  * opts.paging "orm" (crm.item.list, tasks.task.list; rest/lib/engine/restmanager.php):
--    start -1 (DONT_CALCULATE_COUNT) counts nothing; otherwise PageNavigation's page
--    intval(start/50)+1 read at offset (page-1)*50, empty past the end; next = offset + rows
--    while rows remain (getNavigationData).
-- Returns the page (raw rows) and meta {total, next, rows, counted} (nothing counted without a
-- count). opts.name maps a filter/order key to a row field (upper case by default);
-- opts.timezone, opts.order_keys and opts.sort_value are described at the top of this file.
function _M:query(params, opts)
   opts = opts or {}
   local name_of = opts.name or string_upper
   local orm = opts.paging == "orm"
   local conditions = parse_filter(params.filter, name_of, date_fields(self.def), opts.timezone or "+03:00")
   local order = parse_order(params.order, name_of, opts.order_keys)
   local start = php_int(params.start)
   local count = start >= 0
   if orm then count = start ~= -1 end
   -- uncounted in ID order: a page read from the ID index, as a database does (self.ids ascends)
   local by_id = #order == 0 or (#order == 1 and order[1].name == "ID" and not order[1].desc)
   if not count and by_id then
      local first = 1
      for _, c in ipairs(conditions) do
         local n = c.name == "ID" and type(c.value) == "string" and tonumber(c.value)
         if n and (c.op == ">" or c.op == ">=") then
            local lo, hi = first, #self.ids + 1
            while lo < hi do
               local mid = math_floor((lo + hi) / 2)
               local id = self.ids[mid]
               if id > n or (c.op == ">=" and id == n) then hi = mid else lo = mid + 1 end
            end
            first = lo
         end
      end
      local page = {}
      for i = first, #self.ids do
         local row = self.rows[self.ids[i]]
         if matches(row, conditions) then
            page[#page + 1] = row
            if #page == PAGE then break end
         end
      end
      return page, { total = 0, rows = #page, counted = 0 }
   end
   local rows = {}
   for _, id in ipairs(self.ids) do
      local row = self.rows[id]
      if matches(row, conditions) then rows[#rows + 1] = row end
   end
   if #order > 0 then
      local sort_value = opts.sort_value or {}
      for _, key in ipairs(order) do
         -- a sort value is computed once per distinct field value, not per comparison
         local value_of = sort_value[key.name]
         if value_of then
            local memo, none = {}, {}
            key.value_of = function(v)
               if v == nil then return nil end
               local got = memo[v]
               if got == nil then
                  got = value_of(v)
                  memo[v] = got == nil and none or got
               elseif got == none then
                  got = nil
               end
               return got
            end
         end
      end
      table_sort(rows, function(a, b)
         for _, key in ipairs(order) do
            local va, vb = a[key.name], b[key.name]
            if key.value_of then va, vb = key.value_of(va), key.value_of(vb) end
            local r = compare(va or "", vb or "")
            if r ~= 0 then if key.desc then return r > 0 else return r < 0 end end
         end
         return tonumber(a.ID) < tonumber(b.ID)
      end)
   end
   local number = 1
   if start > 0 then number = math_floor(start / PAGE) + 1 end
   local pages = math_ceil(#rows / PAGE)
   if not orm and count and number > pages then number = 1 end
   local offset = (number - 1) * PAGE
   local page = {}
   for i = offset + 1, math_min(offset + PAGE, #rows) do page[#page + 1] = rows[i] end
   if not count then return page, { total = 0, rows = #page, counted = 0 } end
   local meta = { total = #rows, rows = #page, counted = #rows }
   if orm then
      if offset + #page < #rows then meta.next = offset + #page end
   elseif number < pages then
      meta.next = number * PAGE
   end
   return page, meta
end

-- The state of the store as plain data (for --data).
function _M:export()
   local rows = {}
   for i, id in ipairs(self.ids) do rows[i] = self.rows[id] end
   return { next_id = self.next_id, multi_id = self.multi_id, rows = rows }
end

-- Replaces the rows and counters with those of export()'s data.
function _M:import(data)
   self.rows, self.ids = {}, {}
   for _, row in ipairs(type(data.rows) == "table" and data.rows or {}) do
      local id = tonumber(row.ID)
      if id and not self.rows[id] then
         self.rows[id] = row
         self.ids[#self.ids + 1] = id
      end
   end
   table_sort(self.ids)
   local top = self.ids[#self.ids] or 0
   self.next_id = math_max(tonumber(data.next_id) or 1, top + 1)
   self.multi_id = tonumber(data.multi_id) or self.multi_id or 0
end

return _M
