-- b24.emulator.tasks: tasks.task.add|get|update|delete|list of the emulated portal. Rows are
-- kept under the upper-case names the methods take in `fields`, `filter`, `order` and `select`;
-- answers use the lower camel case names of the real API, wrapped as result.task / result.tasks,
-- values as strings (ids too) and null for what is unset. Rows carry what the controller adds
-- (tasks/lib/rest/controllers/task.php): group, creator, responsible, auditorsData,
-- accomplicesData, and subStatus on list rows.
local cjson = require("cjson.safe")
local crm_item = require "b24.emulator.crm_item"
local storage = require "b24.emulator.store"
local dates = require "b24.emulator.dates"
local users = require "b24.emulator.users"
local order_of = require "b24.emulator.order"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local next = next
local string_upper = string.upper
local string_sub = string.sub
local string_format = string.format
local string_gsub = string.gsub
local table_sort = table.sort
local math_floor = math.floor
local math_random = math.random
local null = cjson.null
local to_text = storage.to_text

local _M = {}

-- name, default ("" = none: null), writable; lists (AUDITORS, ACCOMPLICES) are handled apart.
local FIELDS = {
   { "ID" }, { "PARENT_ID", nil, true }, { "TITLE", nil, true }, { "DESCRIPTION", "", true },
   { "MARK", nil, true }, { "PRIORITY", "1", true }, { "MULTITASK", "N", true }, { "NOT_VIEWED", "N" },
   { "REPLICATE", "N", true }, { "STAGE_ID", "0", true }, { "CREATED_BY", nil, true }, { "CREATED_DATE" },
   { "RESPONSIBLE_ID", nil, true }, { "CHANGED_BY" }, { "CHANGED_DATE" }, { "STATUS_CHANGED_BY" },
   { "CLOSED_BY" }, { "CLOSED_DATE" }, { "ACTIVITY_DATE" }, { "DATE_START" }, { "DEADLINE", nil, true },
   { "START_DATE_PLAN", nil, true }, { "END_DATE_PLAN", nil, true }, { "GUID" }, { "XML_ID", nil, true },
   { "COMMENTS_COUNT" }, { "ALLOW_CHANGE_DEADLINE", "N", true }, { "ALLOW_TIME_TRACKING", "N", true },
   { "TASK_CONTROL", "N", true }, { "ADD_IN_REPORT", "N", true }, { "TIME_ESTIMATE", "0", true },
   { "SITE_ID", "s1" }, { "SUBORDINATE", "N" }, { "IS_MUTED", "N" }, { "IS_PINNED", "N" },
   { "STATUS", "2", true }, { "STATUS_CHANGED_DATE" }, { "DURATION_TYPE", "days", true },
   { "FAVORITE", "N" }, { "GROUP_ID", "0", true },
}
local LISTS = { AUDITORS = "auditors", ACCOMPLICES = "accomplices" }
-- what tasks.task.list answers without select (the real default is a similar short set)
local LIST_DEFAULT = { "ID", "PARENT_ID", "TITLE", "DESCRIPTION", "MARK", "PRIORITY", "STATUS",
   "MULTITASK", "NOT_VIEWED", "REPLICATE", "GROUP_ID", "STAGE_ID", "CREATED_BY", "CREATED_DATE",
   "RESPONSIBLE_ID", "CHANGED_BY", "CHANGED_DATE", "STATUS_CHANGED_BY", "STATUS_CHANGED_DATE",
   "CLOSED_BY", "CLOSED_DATE", "ACTIVITY_DATE", "DATE_START", "DEADLINE", "START_DATE_PLAN",
   "END_DATE_PLAN", "FAVORITE", "TIME_ESTIMATE", "SUBORDINATE" }

-- CTasks::getFieldsInfo's datetime fields (tasks/classes/general/task.php): written from any form
-- strtotime reads (formatDateFieldsForInput), printed in the portal's zone
-- (formatDateFieldsForOutput), and compared as dates in a filter (prepareFilter: strtotime of the
-- value); the store compares the fields def.dates marks as dates.
local DATES = { CREATED_DATE = true, CHANGED_DATE = true, STATUS_CHANGED_DATE = true, CLOSED_DATE = true,
                ACTIVITY_DATE = true, DATE_START = true, DEADLINE = true, START_DATE_PLAN = true,
                END_DATE_PLAN = true }
-- CTasks::getAvailableOrderFields: the only order keys tasks.task.list takes (checkOrderKeys,
-- after array_change_key_case), with the row field each sorts by (false: not modelled, no effect).
local ORDER_FIELDS = {
   ID = "ID", TITLE = "TITLE", TIME_SPENT_IN_LOGS = false, DATE_START = "DATE_START",
   CREATED_DATE = "CREATED_DATE", CHANGED_DATE = "CHANGED_DATE", CLOSED_DATE = "CLOSED_DATE",
   ACTIVITY_DATE = "ACTIVITY_DATE", START_DATE_PLAN = "START_DATE_PLAN", END_DATE_PLAN = "END_DATE_PLAN",
   DEADLINE = "DEADLINE", REAL_STATUS = "STATUS", STATUS_COMPLETE = false, PRIORITY = "PRIORITY", MARK = "MARK",
   CREATED_BY_LAST_NAME = false, RESPONSIBLE_LAST_NAME = false, GROUP_ID = "GROUP_ID",
   TIME_ESTIMATE = "TIME_ESTIMATE", ALLOW_CHANGE_DEADLINE = "ALLOW_CHANGE_DEADLINE",
   ALLOW_TIME_TRACKING = "ALLOW_TIME_TRACKING", MATCH_WORK_TIME = false, FAVORITE = "FAVORITE", SORTING = false,
   IS_PINNED = "IS_PINNED", IS_PINNED_IN_GROUP = false,
}
-- tasks/lib/internals/task/status.php and metastatus.php
local SUPPOSEDLY_COMPLETED, COMPLETED, DECLINED = "4", "5", "7"
local EXPIRED_SOON, EXPIRED, UNSEEN = "-3", "-1", "-2"
-- tasks/lib/internals/counter/deadline.php DEFAULT_DEADLINE_LIMIT: "almost overdue" window
local DEADLINE_LIMIT = 86400

local DEF = { fields = {}, by_name = {}, standard = {}, dates = DATES }
for _, f in ipairs(FIELDS) do
   local spec = { name = f[1], default = f[2], writable = f[3] or false, type = "string" }
   DEF.by_name[spec.name] = spec
   DEF.fields[#DEF.fields + 1] = { spec.name, "string" }
   DEF.standard[#DEF.standard + 1] = spec.name
end
_M.DEF = DEF

local function camel(name) return crm_item.camel(name) end

-- A key as given (TITLE, title, responsibleId) as the upper-case row name.
local function upper_name(key)
   if key:find("%l") and not key:find("_") then key = string_gsub(key, "(%u)", "_%1") end
   return string_upper(key)
end

local function fail(desc, code)
   return nil, { status = 400, error = code or "ERROR_CORE", error_description = desc }
end

local function not_found()
   return fail("TASKS_ERROR_EXCEPTION_#1; Task not found or not accessible; 1/TE/TASK_NOT_FOUND_OR_NOT_ACCESSIBLE<br>")
end

local function task_id(params)
   local v = params.taskId or params.TASKID or params.taskid or params.id or params.ID
   local n = tonumber(to_text(v) or "")
   if not n or n < 1 or n ~= math_floor(n) then return nil end
   return math_floor(n)
end

local function list_of(v)
   local out = {}
   if type(v) == "table" then
      for _, item in pairs(v) do
         local s = to_text(item)
         if s then out[#out + 1] = s end
      end
      table_sort(out, function(a, b) return (tonumber(a) or 0) < (tonumber(b) or 0) end)
   elseif to_text(v) and to_text(v) ~= "" then
      out[1] = to_text(v)
   end
   return out
end

-- Writes fields into row; a date that strtotime reads is kept in the portal's zone
-- (task.php formatDateFieldsForInput), other text as given.
local function apply(p, row, fields)
   for k, v in pairs(fields) do
      if type(k) == "string" then
         local name = upper_name(k)
         local spec = DEF.by_name[name]
         if LISTS[name] then
            row[name] = list_of(v)
         elseif spec and spec.writable then
            local s = to_text(v)
            if s == "" and spec.default == nil then s = nil end
            if s and DATES[name] then
               local t = dates.parse(s, p.timezone)
               if t then s = p:date(t) end
            end
            row[name] = s
         elseif not spec and string_sub(name, 1, 3) == "UF_" then
            row[name] = to_text(v)
         end
      end
   end
end

local function guid()
   local r = math_random
   return string_format("{%08x-%04x-4%03x-%04x-%06x%06x}", r(0, 0x7fffffff), r(0, 0xffff), r(0, 0xfff),
      0x8000 + r(0, 0x3fff), r(0, 0xffffff), r(0, 0xffffff))
end

-- The users of a list field as fillUserInfo keys them: id -> brief ([] when none is known).
local function users_data(p, ids)
   local out = {}
   for _, id in ipairs(ids or {}) do
      local user = users.brief(p, id)
      if user then out[user.id] = user end
   end
   return out
end

-- The task's metastatus as task.php listAction prints it (subStatus: the COMPUTE_STATUS
-- expression of tasks/lib/provider/query/taskquerybuilder.php getStatusField): almost overdue
-- (-3) within a day of the deadline, overdue (-1) past it, unless completed, supposedly completed
-- or declined by the current user as responsible; unseen (-2) for a new or pending task someone
-- else created (views are not kept: never seen); else the status.
local function sub_status(p, row)
   local status = row.STATUS
   local deadline = row.DEADLINE and dates.parse(row.DEADLINE, p.timezone)
   local user = tostring(p.user_id)
   if deadline and status ~= SUPPOSEDLY_COMPLETED and status ~= COMPLETED and
      (status ~= DECLINED or row.RESPONSIBLE_ID ~= user) then
      local now = p.wall()
      if deadline < now + DEADLINE_LIMIT and deadline >= now then return EXPIRED_SOON end
      if deadline < now then return EXPIRED end
   end
   if row.CREATED_BY ~= user and (status == "1" or status == "2") then return UNSEEN end
   return status
end

-- A row as the API prints it: every field (or those selected), lists as arrays, and what
-- task.php adds: fillGroupInfo's group ([] for every row: there are no workgroups here, and
-- Group::getData finds none for GROUP_ID), fillUserInfo's creator and responsible (when the
-- row has CREATED_BY / RESPONSIBLE_ID naming a known user) and auditorsData/accomplicesData
-- (when it has the lists), and on list rows (listed) subStatus next to STATUS.
local function view(p, row, names, listed)
   local out = {}
   for _, name in ipairs(names or DEF.standard) do
      if LISTS[name] then
         out[LISTS[name]] = row[name] or {}
      elseif DEF.by_name[name] or string_sub(name, 1, 3) == "UF_" then
         local v = row[name]
         if v == nil then v = null end
         out[camel(name)] = v
      end
   end
   if not names then
      for name, key in pairs(LISTS) do out[key] = row[name] or {} end
   end
   out.group = {}
   if out.createdBy ~= nil then out.creator = users.brief(p, row.CREATED_BY) end
   if out.responsibleId ~= nil then out.responsible = users.brief(p, row.RESPONSIBLE_ID) end
   if out.auditors then out.auditorsData = users_data(p, row.AUDITORS) end
   if out.accomplices then out.accomplicesData = users_data(p, row.ACCOMPLICES) end
   if listed and out.status ~= nil then out.subStatus = sub_status(p, row) end
   return out
end

-- checkOrderKeys (task.php listAction) and TaskQuery::prepareOrder
-- (tasks/lib/provider/query/taskquery.php): every key, upper-cased, one of
-- CTasks::getAvailableOrderFields, else 400 with code 0 (the message as b24restdocs gives
-- it); a direction other than ASC/DESC (",NULLS" allowed) sorts DESC. Returns the store's order
-- (row field -> ASC|DESC) | nil, err.
local function task_order(order)
   if type(order) ~= "table" then return {} end
   local out = {}
   for k, v in pairs(order) do
      local key = type(k) == "string" and string_upper(k) or tostring(k)
      local field = ORDER_FIELDS[key]
      if field == nil then return fail("Invalid sorting key (internal error)", "0") end
      local dir = string_upper(to_text(v) or "")
      if dir == "ASC,NULLS" then dir = "ASC" elseif dir == "DESC,NULLS" then dir = "DESC" end
      if dir ~= "ASC" then dir = "DESC" end
      if field then out[field] = dir end
   end
   return out
end

local function selection(select)
   if type(select) ~= "table" or next(select) == nil then return nil end
   local names, star = {}, false
   for _, key in pairs(select) do
      key = to_text(key)
      if key == "*" then star = true
      elseif key then names[#names + 1] = upper_name(key) end
   end
   if star then return nil end
   local seen, out = {}, {}
   if #names > 0 then out[1], seen.ID = "ID", true end -- the real API always adds the id
   for _, name in ipairs(names) do
      if not seen[name] then seen[name] = true; out[#out + 1] = name end
   end
   return out
end

-- Inserts a task built from fields: id, row | nil, err.
local function insert(p, store, fields)
   local title = to_text(fields.TITLE or fields.title)
   if not title or title == "" then
      return fail("TASKS_ERROR_EXCEPTION_#256; Task title is not specified; 256/TE/WRONG_ARGUMENTS<br>")
   end
   local id = store:take_id()
   local now, user = p:date(), tostring(p.user_id)
   local row = { ID = tostring(id), CREATED_BY = user, RESPONSIBLE_ID = user, CHANGED_BY = user,
                 CREATED_DATE = now, CHANGED_DATE = now, ACTIVITY_DATE = now, STATUS_CHANGED_DATE = now,
                 GUID = guid(), AUDITORS = {}, ACCOMPLICES = {} }
   for _, spec in pairs(DEF.by_name) do
      if spec.default ~= nil then row[spec.name] = spec.default end
   end
   apply(p, row, fields)
   store:put(id, row)
   return id, row
end

-- main/lib/engine/autowire/binder.php: an action's array parameter, by its exact name: missing
-- and required, "Could not find value for parameter {name}"; not an array, "Invalid value
-- {value} to match with parameter {name}. Should be value of type array." (a
-- BinderArgumentException: code 100, printed "100"). Returns the value | nil, err.
local function array_argument(params, name, required)
   local v = params[name]
   if v == nil or v == null then
      if required then
         return nil, { status = 400, error = "100",
                       error_description = "Could not find value for parameter {" .. name .. "}" }
      end
      return {}
   end
   if type(v) ~= "table" then
      local text = type(v) == "boolean" and (v and "1" or "") or (to_text(v) or "")
      return nil, { status = 400, error = "100", error_description = "Invalid value {" .. text ..
         "} to match with parameter {" .. name .. "}. Should be value of type array." }
   end
   return v
end

function _M.register(portal, methods)
   local store = storage.new("task", DEF)
   portal.stores.task = store

   -- task.php addAction(array $fields, array $params = [])
   methods["tasks.task.add"] = function(p, params)
      local fields, err = array_argument(params, "fields", true)
      if not fields then return nil, err end
      local id, row = insert(p, store, fields)
      if not id then return nil, row end
      p:changed("ONTASKADD", id)
      return { task = view(p, row) }, { rows = 1 }
   end

   -- task.php getAction: a select that names fields gets FAVORITE too
   methods["tasks.task.get"] = function(p, params)
      local id = task_id(params)
      if not id then return fail("wrong task id", "0") end
      local row = store.rows[id]
      if not row then return not_found() end
      local names = selection(params.select)
      if names then
         local seen = false
         for _, name in ipairs(names) do seen = seen or name == "FAVORITE" end
         if not seen then names[#names + 1] = "FAVORITE" end
      end
      return { task = view(p, row, names) }, { rows = 1 }
   end

   methods["tasks.task.update"] = function(p, params)
      local id = task_id(params)
      if not id then return fail("wrong task id", "0") end
      local row = store.rows[id]
      if not row then return not_found() end
      local fields, err = array_argument(params, "fields", true)
      if not fields then return nil, err end
      local status = row.STATUS
      apply(p, row, fields)
      local now, user = p:date(), tostring(p.user_id)
      row.CHANGED_DATE, row.CHANGED_BY, row.ACTIVITY_DATE = now, user, now
      if row.STATUS ~= status then
         row.STATUS_CHANGED_DATE, row.STATUS_CHANGED_BY = now, user
         if row.STATUS == "5" then row.CLOSED_DATE, row.CLOSED_BY = now, user end
      end
      p:changed("ONTASKUPDATE", id)
      return { task = view(p, row) }, { rows = 1 }
   end

   methods["tasks.task.delete"] = function(p, params)
      local id = task_id(params)
      if not id then return fail("wrong task id", "0") end
      if not store:remove(id) then return not_found() end
      p:changed("ONTASKDELETE", id)
      return { task = true }, { rows = 1 }
   end

   -- task.php listAction(filter, select, group, order, params): the arguments bound in that
   -- order, then checkOrderKeys, then checkSelect (every select entry a string); with start=-1
   -- (prepareNavParams drops getTotalCount) the answer has no total
   methods["tasks.task.list"] = function(p, params)
      for _, name in ipairs({ "filter", "select", "group", "order", "params" }) do
         local ok, err = array_argument(params, name, false)
         if not ok then return nil, err end
      end
      local order, err = task_order(params.order)
      if not order then return nil, err end
      for _, key in pairs(params.select or {}) do
         if type(key) ~= "string" then return fail("Invalid select data", "0") end
      end
      -- the keys in the order sent (TaskQueryBuilder::buildOrder walks them with foreach)
      local sent = {}
      for _, key in ipairs(order_of.keys(p, nil, params) or {}) do
         local field = ORDER_FIELDS[string_upper(key)]
         if field then sent[#sent + 1] = field end
      end
      local rows, meta = store:query({ filter = params.filter, order = order, start = params.start },
                                     { name = upper_name, paging = "orm", timezone = p.timezone, order_keys = sent })
      if storage.php_int(params.start) == -1 then meta.total = nil end
      local names = selection(params.select) or LIST_DEFAULT
      local tasks = {}
      for i, row in ipairs(rows) do tasks[i] = view(p, row, names, true) end
      return { tasks = tasks }, meta
   end
end

-- Fills the task store with n tasks (no events).
function _M.seed(portal, n)
   for i = 1, n do insert(portal, portal.stores.task, { TITLE = "Task #" .. i }) end
end

return _M
