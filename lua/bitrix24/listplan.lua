-- bitrix24.listplan: what bitrix24.export knows of a list method before it asks anything: how
-- it pages (LIST_SHAPES: the rows' wrapper, the ID field, the filter/order key, SORT/ORDER
-- strings, filter conditions at the top level), the caller's parameters split into what stays
-- and the ID bounds the export moves, and each request's parameters built from them
-- (plan:query). Read from the platform's PHP, yuliai/bitrix-modules, platform 26.250.100 (see
-- export.lua and docs/api.md "Built-in shapes").
local Error = require "bitrix24.error"

local type = type
local pairs = pairs
local ipairs = ipairs
local tonumber = tonumber
local tostring = tostring
local setmetatable = setmetatable
local next = next
local error = error
local string_format = string.format
local string_lower = string.lower
local string_upper = string.upper
local string_match = string.match
local math_floor = math.floor
local math_ceil = math.ceil
local math_min = math.min
local math_max = math.max
local math_huge = math.huge
local table_concat = table.concat

local _M = {}

-- How each list method pages: the wrapper key in result, the id field of a row, the filter/order
-- key, sort = true when the order goes as two strings (SORT = field, ORDER = direction), and
-- top_filter = true when filter conditions may also stand at the top level of the parameters.
local USER_GET = { id = "ID", key = "ID", sort = true, top_filter = true }
local LIST_SHAPES = {
   -- crm/lib/controller/item.php listAction: Page('items'), rows camelCased (id, an integer);
   -- filter and order keys go through the camelCase → UPPER_CASE converter (crm/lib/Service/
   -- Converter.php, main/lib/engine/response/converter.php TO_SNAKE_DIGIT): ">id" → ">ID", while
   -- "ID" becomes "I_D" unless the converter's cache already knows it.
   ["crm.item.list"] = { wrapper = "items", id = "id", key = "id" },
   -- crm/lib/controller/type.php listAction: Page('types'), the same converter on filter/order.
   ["crm.type.list"] = { wrapper = "types", id = "id", key = "id" },
   -- tasks/lib/rest/controllers/task.php listAction: Page('tasks'), rows camelCased (id, a
   -- string); the filter is CTasks' (tasks/classes/general/task.php GetSqlByFilter upper-cases
   -- the field after the operation), order keys are checked upper-cased (checkOrderKeys).
   ["tasks.task.list"] = { wrapper = "tasks", id = "id", key = "ID" },
   -- rest/lib/api/user.php userGet (user.search too): the query is upper-cased; SORT and ORDER
   -- are strings, used only when both are set (an ORDER table is not an order: without SORT no
   -- ORDER BY is sent at all, though the docs say ID ascending is the default); FILTER, when a
   -- table, replaces the whole query as the filter, otherwise the top-level keys are the filter;
   -- keys may carry a 1-2 character operation (">ID"); ORM paging: offset = start exactly,
   -- start = -1 counts nothing.
   ["user.get"] = USER_GET,
   ["user.search"] = USER_GET,
}

local function copy(t)
   local out = {}
   if type(t) == "table" then for k, v in pairs(t) do out[k] = v end end
   return out
end

-- The key of t that is name in any case (the exact spelling first), or nil.
local function find_key(t, name)
   if t[name] ~= nil then return name end
   local up = string_upper(name)
   for k in pairs(t) do
      if type(k) == "string" and string_upper(k) == up then return k end
   end
   return nil
end

local function id_of(row, field)
   if type(row) ~= "table" then return nil end
   return tonumber(row[field])
end

local function fmt_id(n)
   if n % 1 ~= 0 or n ~= n or n == math_huge or n == -math_huge then return tostring(n) end
   return string_format("%d", n)
end

local function export_error(code, method, description)
   return Error.new{ code = code, method = method, description = description }
end

-- The rows of a page | nil, err when the result is an object the shape does not name: rows in
-- a wrapper nobody told the export about would otherwise end it with no rows at all.
local function rows_of(result, shape, method)
   if shape.wrapper then result = type(result) == "table" and result[shape.wrapper] or nil end
   if type(result) ~= "table" then return {} end
   if result[1] == nil and next(result) ~= nil then
      local keys = {}
      for k in pairs(result) do
         keys[#keys + 1] = tostring(k)
         if #keys == 3 then break end
      end
      return nil, export_error("export_shape", method, "the result is an object (" .. table_concat(keys, ", ") ..
         (shape.wrapper and ") in " .. shape.wrapper or ")") .. ", not a list of rows: pass opts.wrapper")
   end
   return result
end

-- Takes the caller's ID bounds out of a filter: filter without them, lo (exclusive), hi (inclusive).
local function split_bounds(filter, key)
   local out, lo, hi = {}, nil, nil
   local ukey = string_upper(key)
   for k, v in pairs(filter) do
      local op, name = nil, nil
      if type(k) == "string" then op, name = string_match(k, "^([<>]=?)(.*)$") end
      local n = tonumber(v)
      if op and string_upper(name) == ukey and n then
         if op == ">" then lo = math_max(lo or -math_huge, math_floor(n))
         elseif op == ">=" then lo = math_max(lo or -math_huge, math_ceil(n) - 1)
         elseif op == "<" then hi = math_min(hi or math_huge, math_ceil(n) - 1)
         else hi = math_min(hi or math_huge, math_floor(n)) end
      else
         out[k] = v
      end
   end
   return out, lo, hi
end

local function with_id_select(select, id)
   if type(select) ~= "table" or #select == 0 then return select end
   for _, name in ipairs(select) do
      if name == "*" or (type(name) == "string" and string_upper(name) == string_upper(id)) then return select end
   end
   local out = copy(select)
   out[#out + 1] = id
   return out
end

-- What the caller asked for, in the method's terms: how to build each request (Plan:query), the
-- caller's order as one { field, direction } when it is one field (plan.order), and the mode.
local Plan = {}
local plan_mt = { __index = Plan }

local function make_plan(method, params, opts)
   local known = LIST_SHAPES[string_lower(method)] or {}
   local shape = { wrapper = known.wrapper, id = opts.id or known.id or "ID",
                   key = opts.key or opts.id or known.key or "ID" }
   if opts.wrapper ~= nil then shape.wrapper = opts.wrapper or nil end -- false: rows are the result
   if opts.sort ~= nil then shape.sort = opts.sort else shape.sort = known.sort end
   shape.top_filter = known.top_filter
   local base = copy(params)
   local names = {}
   for _, name in ipairs({ "filter", "order", "sort", "select", "start" }) do
      if name ~= "sort" or shape.sort then
         names[name] = find_key(base, name)
         if names[name] then base[names[name]] = nil end
      end
   end
   local plan = setmetatable({ method = method, shape = shape, base = base, names = names }, plan_mt)
   local order = names.order and params[names.order]
   if shape.sort then
      -- SORT/ORDER strings; a one-field ORDER table is read as the caller meant it
      local sort = names.sort and params[names.sort]
      if type(order) == "table" then
         local field, dir = next(order)
         if next(order, field) ~= nil then
            error("bitrix24.export: " .. method .. " sorts by one field: pass sort = FIELD, order = ASC|DESC", 0)
         end
         if field ~= nil then plan.order = { field, dir } end
      elseif type(sort) == "string" and type(order) == "string" and sort ~= "" and order ~= "" then
         plan.order = { sort, order }
      end
   elseif type(order) == "table" and next(order) ~= nil then
      plan.raw_order = order
      local field, dir = next(order)
      if next(order, field) == nil then plan.order = { field, dir } end
   elseif order ~= nil and type(order) ~= "table" then
      plan.raw_order = order -- passed on as given: the portal decides
   end
   local filter = names.filter and params[names.filter]
   if type(filter) ~= "table" then
      if names.filter then base[names.filter] = filter end
      filter = nil
   end
   if not filter and shape.top_filter then
      -- the top-level keys are the filter (user.get): bounds on the key are taken from there
      plan.top = true
      filter = base
   end
   -- select names the id as filter and order do (tasks.task.list: select ID, rows carry id;
   -- the controller intersects select with its upper-case field list)
   plan.select = with_id_select(names.select and params[names.select], shape.key)
   local mode
   if opts.keyset ~= false then
      if not plan.order and not plan.raw_order then
         mode = "any"
      elseif plan.order and type(plan.order[1]) == "string" and type(plan.order[2]) == "string"
         and string_upper(plan.order[1]) == string_upper(shape.key) and string_upper(plan.order[2]) == "ASC" then
         mode = "asc"
      end
   end
   plan.mode = mode
   if mode or opts.verify ~= false and opts.keyset ~= false then
      local rest, lo, hi = split_bounds(filter or {}, shape.key)
      plan.lo, plan.hi = lo, hi
      if plan.top then base = rest; plan.base = base; plan.filter = {} else plan.filter = rest end
      plan.bounded = true
   else
      plan.filter = (not plan.top) and filter or {}
   end
   return plan
end

-- The parameters of one request: the caller's, with filter (the caller's conditions and extra),
-- order ({ field, dir }, or the caller's own when nil and keep_order), start and select.
function Plan:query(extra, order, start, select, keep_order)
   local p = copy(self.base)
   local names, shape = self.names, self.shape
   local f = copy(self.filter)
   if self.bounded and not extra then
      if self.lo then f[">" .. shape.key] = fmt_id(self.lo) end
      if self.hi then f["<=" .. shape.key] = fmt_id(self.hi) end
   end
   for k, v in pairs(extra or {}) do f[k] = v end
   if self.top then
      for k, v in pairs(f) do p[k] = v end
   elseif next(f) then
      p[names.filter or "filter"] = f
   end
   if not order and keep_order then order = self.order end
   if order and self.shape.sort then
      p[names.sort or "sort"] = order[1]
      p[names.order or "order"] = order[2]
   elseif order and not (keep_order and self.raw_order) then
      p[names.order or "order"] = { [order[1]] = order[2] }
   elseif keep_order and self.raw_order ~= nil then
      p[names.order or "order"] = self.raw_order
   end
   if start then p[names.start or "start"] = start end
   if select ~= nil then p[names.select or "select"] = select end
   return p
end

_M.LIST_SHAPES = LIST_SHAPES
_M.copy = copy
_M.id_of = id_of
_M.fmt_id = fmt_id
_M.error = export_error
_M.rows_of = rows_of
_M.new = make_plan

return _M
