-- A b24 serve handler (run with --workers 1) that pages list methods as the platform's PHP does
-- (yuliai/bitrix-modules, platform 26.250.100), for spec/export_paging_spec.lua. Started by
-- spec/helpers/paging_portal.lua; the spec sets it up with `spec.setup` and reads `spec.state`.
--
--   crm.lead.list   legacy CRM (crm/classes/general/restservice.php getList → CDBResult NavQuery):
--                   rest/classes/general/rest.php getNavData: start = intval(start); start >= 0 →
--                   page intval(start/50)+1, rows (page-1)*50 …; main/classes/general/dbresult.php
--                   calculatePageNumber: a page past the last one is page 1; next = page*50 while
--                   pages remain; start < 0 → nTopCount 50, total 0, no next
--   crm.item.list   rest/lib/engine/restmanager.php: page intval(start/50)+1 for start > 0, start
--                   = -1 counts nothing (no total, no next), next = offset + rows; result.items,
--                   rows camelCased with an integer id (crm/lib/controller/item.php listAction);
--                   filter/order keys through Response\Converter TO_UPPER|TO_SNAKE_DIGIT as
--                   crm/lib/Service/Converter.php applies it to a name it has not cached: ">id" →
--                   ">ID", but "ID" → "I_D" and ">ID" → ">_ID", unknown fields, which are refused
--   crm.type.list   the same, result.types (crm/lib/controller/type.php listAction)
--   tasks.task.list restmanager paging; result.tasks, rows camelCased with a string id; filter
--                   field upper-cased after the operation (tasks/classes/general/task.php
--                   GetSqlByFilter), order keys checked upper-cased (checkOrderKeys)
--   user.get        rest/lib/api/user.php userGet: query keys upper-cased; SORT and ORDER used
--                   only when both are set (an ORDER table alone sorts nothing: rows come in
--                   the table's own order, not by ID); FILTER (a table) replaces the query as
--                   the filter; keys "^(\W{1,2})(.+)" of allowed fields; ORM paging: offset =
--                   start exactly, start = -1 → the first 50 rows, total 0, no next; an empty
--                   page is [] with neither total nor next
--   batch           rest/classes/general/rest_provider.php + rest_util.php processBatchElement:
--                   commands in order, $result[label][path…] replaced (a whole-value reference
--                   keeps the referenced value; a path that does not exist stops at the deepest
--                   value found)
--
-- spec.setup { seed = { lead = n, … }, mutations = {…}, count_cap = n (crm.lead.list counts at
-- most n rows: the CRM row-count threshold), uncounted = true (crm.lead.list sends no total) }.
-- Mutations planned by spec.setup happen before the list call they name is served (calls are
-- counted over every list read, direct or inside a batch), so rows appear, vanish or move while
-- an export runs.
local core = require "bitrix24.core"
local cjson = require("cjson.safe").new()

local PAGE = 50
local NULL = cjson.null

-- JSON as PHP's json_encode writes it: an empty table is [], a sequence is a list.
local function encode(v, out)
   local t = type(v)
   if v == nil or v == NULL then
      out[#out + 1] = "null"
   elseif t == "table" then
      local n, count = #v, 0
      for _ in pairs(v) do count = count + 1 end
      if count == 0 then
         out[#out + 1] = "[]"
      elseif n == count then
         out[#out + 1] = "["
         for i = 1, n do
            if i > 1 then out[#out + 1] = "," end
            encode(v[i], out)
         end
         out[#out + 1] = "]"
      else
         out[#out + 1] = "{"
         local first = true
         for k, x in pairs(v) do
            if not first then out[#out + 1] = "," end
            first = false
            out[#out + 1] = cjson.encode(tostring(k))
            out[#out + 1] = ":"
            encode(x, out)
         end
         out[#out + 1] = "}"
      end
   elseif t == "number" then
      out[#out + 1] = (v % 1 == 0) and string.format("%d", v) or string.format("%.17g", v)
   elseif t == "boolean" then
      out[#out + 1] = tostring(v)
   else
      out[#out + 1] = cjson.encode(tostring(v))
   end
   return out
end

local function json(v) return table.concat(encode(v, {})) end

-- PHP intval of a request value.
local function intval(v)
   local n = tonumber(v)
   if not n then return 0 end
   return n >= 0 and math.floor(n) or math.ceil(n)
end

local state

-- A seeded table: rows 1..n in `order` (a function of the id giving a sort key for the table's
-- own order), titles that sort in another order than the IDs.
local function seed(n, name_field, scramble)
   local rows = {}
   for id = 1, n do
      rows[id] = { ID = id, [name_field] = string.format("%s%07d", name_field:sub(1, 1), (id * 7919) % 10007),
                   ACTIVE = id % 5 ~= 0 }
   end
   if scramble then table.sort(rows, function(a, b) return a[name_field] < b[name_field] end) end
   return { rows = rows, next_id = n + 1, field = name_field }
end

local function setup(p)
   state = { tables = {}, calls = 0, starts = {}, mutations = p.mutations or {},
             count_cap = tonumber(p.count_cap), uncounted = p.uncounted }
   local n = p.seed or {}
   state.tables.lead = seed(tonumber(n.lead) or 0, "TITLE")
   state.tables.item = seed(tonumber(n.item) or 0, "TITLE")
   state.tables.task = seed(tonumber(n.task) or 0, "TITLE")
   state.tables.type = seed(tonumber(n.type) or 0, "TITLE")
   state.tables.user = seed(tonumber(n.user) or 0, "NAME", true) -- its own order is not by ID
   return true
end
setup({})

local function mutate()
   for _, m in ipairs(state.mutations) do
      if not m.done and state.calls > (tonumber(m.after) or 0) then
         m.done = true
         local tbl = state.tables[m.table]
         for _, id in ipairs(m.delete or {}) do
            for i, row in ipairs(tbl.rows) do
               if row.ID == tonumber(id) then table.remove(tbl.rows, i); break end
            end
         end
         for _, fields in ipairs(m.insert or {}) do
            local row = { ID = tbl.next_id, ACTIVE = true }
            tbl.next_id = tbl.next_id + 1
            for k, v in pairs(fields) do row[k] = v end
            table.insert(tbl.rows, math.floor(#tbl.rows / 2) + 1, row) -- in the middle of its own order
         end
      end
   end
end

local function fail(code, description)
   return { error = code, error_description = description }
end

-- A filter key: operation, field.
local function split_op(key, pattern)
   local op, field = key:match(pattern or "^([^%w_]*)(.*)$")
   if not op then return "", key end
   return op, field
end

local function compare(row_value, op, value, field)
   if field == "ID" then row_value, value = tonumber(row_value), tonumber(value)
   elseif field == "ACTIVE" then
      row_value = row_value and "Y" or "N"
      value = (value and value ~= "N" and value ~= false and value ~= 0 and value ~= "0" and value ~= "") and "Y" or "N"
   end
   if type(value) == "table" then -- PHP builds SQL no row matches for what the spec sends
      return false
   end
   if row_value == nil or value == nil then return false end
   if op == ">" then return row_value > value end
   if op == ">=" then return row_value >= value end
   if op == "<" then return row_value < value end
   if op == "<=" then return row_value <= value end
   if op == "!" or op == "!=" then return row_value ~= value end
   return row_value == value
end

-- The rows of tbl matching conds ({op, FIELD, value}), sorted by sorts ({FIELD, "ASC"|"DESC"});
-- without a sort, in the table's own order.
local function select_rows(tbl, conds, sorts)
   local out = {}
   for pos, row in ipairs(tbl.rows) do
      local ok = true
      for _, c in ipairs(conds) do
         if not compare(row[c[2]], c[1], c[3], c[2]) then ok = false; break end
      end
      if ok then out[#out + 1] = { row = row, pos = pos } end
   end
   if #sorts > 0 then
      table.sort(out, function(a, b)
         for _, s in ipairs(sorts) do
            local x, y = a.row[s[1]], b.row[s[1]]
            if x ~= y then
               if s[2] == "DESC" then return x > y end
               return x < y
            end
         end
         return a.pos < b.pos
      end)
   end
   local rows = {}
   for i, r in ipairs(out) do rows[i] = r.row end
   return rows
end

local function slice(rows, offset)
   local page = {}
   for i = offset + 1, math.min(offset + PAGE, #rows) do page[#page + 1] = rows[i] end
   return page
end

local function note_start(method, start)
   local list = state.starts[method] or {}
   state.starts[method] = list
   list[#list + 1] = start == nil and "none" or tostring(intval(start))
end

-- Output of a row: the selected fields (all when select is empty or "*").
local function project(row, select, name_of, id_value)
   local out = {}
   local all = type(select) ~= "table" or #select == 0
   local want = {}
   if not all then for _, f in ipairs(select) do if f == "*" then all = true end; want[f] = true end end
   for k, v in pairs(row) do
      if all or want[k] then
         local name = name_of(k)
         if k == "ID" then out[name] = id_value(v) elseif k == "ACTIVE" then out[name] = v
         else out[name] = v end
      end
   end
   return out
end

local function upper_name(k) return k end
local function camel_name(k) return string.lower(k) end
local function id_string(v) return string.format("%d", v) end
local function id_integer(v) return v end

local CRM_ITEM_FIELDS = { ID = true, TITLE = true }
-- Response\Converter TO_UPPER | TO_SNAKE_DIGIT on a name the cache does not hold.
local function item_upper(name)
   local s = name:gsub("(%d+)(%a)", "%1_%2"):gsub("(%a)(%d)", "%1_%2"):gsub("([^_])(%u)", "%1_%2")
   return s:upper()
end

local handlers = {}

-- crm.lead.list: legacy CRM over CDBResult.
function handlers.lead(p, start)
   local conds, sorts = {}, {}
   for k, v in pairs(type(p.filter) == "table" and p.filter or {}) do
      local op, field = split_op(k)
      conds[#conds + 1] = { op, field:upper(), v }
   end
   for k, v in pairs(type(p.order) == "table" and p.order or {}) do
      sorts[#sorts + 1] = { k:upper(), tostring(v):upper() }
   end
   local rows = select_rows(state.tables.lead, conds, sorts)
   local shown, total, nxt
   if start >= 0 then
      -- crm/classes/general/crm_entity_list_builder.php GetRowCountSql: with the SQL restriction's
      -- row-count threshold the count is SELECT COUNT(*) over the first `threshold` rows
      local count = state.count_cap and math.min(#rows, state.count_cap) or #rows
      local pages = math.ceil(count / PAGE)
      local page = math.floor(start / PAGE) + 1
      if page > pages then page = 1 end
      shown = slice(rows, (page - 1) * PAGE)
      total = count
      if page < pages then nxt = page * PAGE end
      if state.uncounted then total, nxt = nil, nil end
   else
      shown, total = slice(rows, 0), 0
   end
   local out = {}
   for i, row in ipairs(shown) do out[i] = project(row, p.select, upper_name, id_string) end
   return out, total, nxt
end

-- The paging of rest/lib/engine/restmanager.php: rows for start, total, next.
local function engine_page(rows, start)
   local page = start > 0 and (math.floor(start / PAGE) + 1) or 1
   local offset = (page - 1) * PAGE
   local shown = slice(rows, offset)
   if start == -1 then return shown end
   local nxt
   if offset + #shown < #rows then nxt = offset + #shown end
   return shown, #rows, nxt
end

-- crm.item.list, and crm.type.list (crm/lib/controller/type.php: the same converter, Page('types')).
local function crm_controller(p, start, tbl, wrapper)
   local conds, sorts = {}, {}
   for k, v in pairs(type(p.filter) == "table" and p.filter or {}) do
      local op, field = split_op(item_upper(k))
      if not CRM_ITEM_FIELDS[field] then return nil, fail("INVALID_FILTER", "unknown field " .. field) end
      conds[#conds + 1] = { op, field, v }
   end
   for k, v in pairs(type(p.order) == "table" and p.order or {}) do
      local field = item_upper(k)
      if not CRM_ITEM_FIELDS[field] then return nil, fail("INVALID_ORDER", "unknown field " .. field) end
      sorts[#sorts + 1] = { field, tostring(v):upper() }
   end
   local select = p.select
   if type(select) == "table" then
      local s = {}
      for i, f in ipairs(select) do s[i] = f == "*" and f or item_upper(f) end
      select = s
   end
   local shown, total, nxt = engine_page(select_rows(tbl, conds, sorts), start)
   local out = {}
   for i, row in ipairs(shown) do out[i] = project(row, select, camel_name, id_integer) end
   return { [wrapper] = out }, total, nxt
end

function handlers.item(p, start)
   if tonumber(p.entityTypeId) == nil then return nil, fail("ERROR_ARGUMENT", "entityTypeId is required") end
   return crm_controller(p, start, state.tables.item, "items")
end

function handlers.type(p, start)
   return crm_controller(p, start, state.tables.type, "types")
end

function handlers.task(p, start)
   local conds, sorts = {}, {}
   for k, v in pairs(type(p.filter) == "table" and p.filter or {}) do
      local op, field = split_op(k)
      conds[#conds + 1] = { op, field:upper(), v }
   end
   for k, v in pairs(type(p.order) == "table" and p.order or {}) do
      if k:upper() ~= "ID" and k:upper() ~= "TITLE" then
         return nil, fail("ERROR", "TASKS_FAILED_WRONG_ORDER_FIELD")
      end
      sorts[#sorts + 1] = { k:upper(), tostring(v):upper() }
   end
   local shown, total, nxt = engine_page(select_rows(state.tables.task, conds, sorts), start)
   local out = {}
   for i, row in ipairs(shown) do out[i] = project(row, p.select, camel_name, id_string) end
   return { tasks = out }, total, nxt
end

local USER_FIELDS = { ID = true, NAME = true, ACTIVE = true }

function handlers.user(p, start)
   local q = {}
   for k, v in pairs(p) do q[k:upper()] = v end
   local sort, order, select = q.SORT, q.ORDER, q.SELECT
   if type(q.FILTER) == "table" then
      local f = {}
      for k, v in pairs(q.FILTER) do f[k:upper()] = v end
      q = f
   end
   local conds = {}
   for k, v in pairs(q) do
      local op, field = k:match("^([^%w_][^%w_]?)(.+)$")
      if not op then op, field = "", k end
      if USER_FIELDS[field] then
         if op == "" and field == "ACTIVE" then op = "=" end
         conds[#conds + 1] = { op, field, v }
      end
   end
   local sorts = {}
   if type(sort) == "string" and sort ~= "" and order ~= nil and order ~= "" then
      if type(order) ~= "string" then return nil, fail("ERROR_CORE", "Invalid order") end
      sorts[1] = { sort:upper(), order:upper() }
   end
   local rows = select_rows(state.tables.user, conds, sorts)
   local offset = start >= 0 and start or 0
   local shown = slice(rows, offset)
   local out = {}
   for i, row in ipairs(shown) do out[i] = project(row, select, upper_name, id_string) end
   if #out == 0 then return out end
   if start == -1 then return out, 0 end
   local nxt
   if offset + #out < #rows then nxt = offset + #out end
   return out, #rows, nxt
end

local LISTS = {
   ["crm.lead.list"] = handlers.lead,
   ["crm.item.list"] = handlers.item,
   ["crm.type.list"] = handlers.type,
   ["tasks.task.list"] = handlers.task,
   ["user.get"] = handlers.user,
}

-- One method call: result, total, next | nil, error table.
local function call(method, p)
   method = method:lower()
   if method == "spec.setup" then return setup(p) end
   if method == "spec.state" then
      local ids = {}
      for name, tbl in pairs(state.tables) do
         local list = {}
         for i, row in ipairs(tbl.rows) do list[i] = row.ID end
         ids[name] = list
      end
      return { ids = ids, starts = state.starts, calls = state.calls }
   end
   local list = LISTS[method]
   if not list then return nil, fail("ERROR_METHOD_NOT_FOUND", "Method not found!") end
   state.calls = state.calls + 1
   mutate()
   local raw = p.start
   if raw == nil then for k, v in pairs(p) do if k:lower() == "start" then raw = v end end end
   note_start(method, raw)
   p.start = nil
   return list(p, raw == nil and 0 or intval(raw))
end

-- processBatchElement: a value "$result[label][…]" walks the results.
local function resolve(value, results)
   if type(value) == "table" then
      local out = {}
      for k, v in pairs(value) do out[resolve(k, results)] = resolve(v, results) end
      return out
   end
   if type(value) ~= "string" then return value end
   local whole, path = value:match("^(%$result)(%[.*)$")
   if not whole then return value end
   local r = results
   for key in path:gmatch("%[([^%]]+)%]") do
      local nextv
      if type(r) == "table" then
         nextv = r[key]
         if nextv == nil and tonumber(key) and #r > 0 then nextv = r[tonumber(key) + 1] end
      end
      if nextv == nil then break end
      r = nextv
   end
   return r
end

local function batch(p)
   local cmd = type(p.cmd) == "table" and p.cmd or {}
   local labels = {}
   for label in pairs(cmd) do labels[#labels + 1] = label end
   table.sort(labels, function(a, b)
      local x, y = tonumber(a:match("%d+$")), tonumber(b:match("%d+$"))
      if x and y and x ~= y then return x < y end
      return a < b
   end)
   local results, errors, totals, nexts = {}, {}, {}, {}
   for _, label in ipairs(labels) do
      local method, query = cmd[label]:match("^([^?]*)%??(.*)$")
      local params = query ~= "" and assert(core.form_decode(query)) or {}
      params = resolve(params, results)
      local res, total, nxt = call(method, params)
      if res == nil then
         errors[label] = total
      else
         results[label] = res
         totals[label] = total
         nexts[label] = nxt
      end
      if res == nil and tonumber(p.halt) == 1 then break end
   end
   return { result = results, result_error = errors, result_total = totals, result_next = nexts,
            result_time = {} }
end

local function now() return os.time() + 0.0 end

return function(req)
   local method = req.path:match("^/rest/%d+/[^/]+/([^/]+)$")
   if not method then return 404, {}, "" end
   method = method:gsub("%.json$", "")
   local p = {}
   if req.body and req.body ~= "" then p = cjson.decode(req.body) or {} end
   local headers = { ["Content-Type"] = "application/json" }
   local t = now()
   local time = { start = t, finish = t, duration = 0, processing = 0 }
   if method:lower() == "batch" then
      return 200, headers, json({ result = batch(p), time = time })
   end
   local res, total, nxt = call(method, p)
   if res == nil then
      local status = total.error == "ERROR_METHOD_NOT_FOUND" and 404 or 400
      return status, headers, json(total)
   end
   return 200, headers, json({ result = res, total = total, next = nxt, time = time })
end
