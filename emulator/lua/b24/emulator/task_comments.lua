-- b24.emulator.task_comments: the legacy task.commentitem.add|update|delete|get|getlist of the
-- emulated portal (tasks/classes/general/commentitem.php CTaskCommentItem, run through
-- tasks/classes/general/restservice.php CTaskRestService). Parameters are read by position:
-- the request's values in the order sent, whatever their keys ([TASKID, {POST_MESSAGE=…}] or
-- {TASKID=…, FIELDS=…}), checked against the method's manifest (getManifest). Comments are
-- forum messages: rows of ID, TASK_ID, AUTHOR_ID, AUTHOR_NAME, AUTHOR_EMAIL, POST_DATE,
-- POST_MESSAGE; changes raise ONTASKCOMMENTADD/UPDATE/DELETE with the comment's task.
local json = require "b24.emulator.json"
local request = require "b24.emulator.request"
local storage = require "b24.emulator.store"
local dates = require "b24.emulator.dates"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local next = next
local string_find = string.find
local string_gsub = string.gsub
local string_match = string.match
local string_upper = string.upper
local math_floor = math.floor
local null = json.null
local to_text = storage.to_text

local _M = {}

local CLASS = "ctaskcommentitem"
-- getManifest: the keys each parameter allows
local WRITABLE = { POST_MESSAGE = true, AUTHOR_ID = true, POST_DATE = true, UF_FORUM_MESSAGE_DOC = true }
local SORTABLE = { ID = true, AUTHOR_ID = true, AUTHOR_NAME = true, AUTHOR_EMAIL = true, POST_DATE = true }
local FILTERABLE = { ID = true, AUTHOR_ID = true, AUTHOR_NAME = true, POST_DATE = true }
local FILTER_PREFIXES = { "!", "<=", "<", ">=", ">" }
-- the readable keys in the order _filterArrayByAllowedKeys writes them (POST_MESSAGE_HTML first)
local READABLE = { "POST_MESSAGE_HTML", "ID", "AUTHOR_ID", "AUTHOR_NAME", "AUTHOR_EMAIL", "POST_DATE",
                   "POST_MESSAGE" }
-- getManifest's 'REST: available methods': each parameter's description and type, and how many
-- are mandatory
local METHODS = {
   add = { mandatory = 2, { "taskId", "integer" }, { "arFields", "array", WRITABLE } },
   update = { mandatory = 3, { "taskId", "integer" }, { "itemId", "integer" }, { "arFields", "array", WRITABLE } },
   delete = { mandatory = 2, { "taskId", "integer" }, { "itemId", "integer" } },
   get = { mandatory = 2, { "taskId", "integer" }, { "itemId", "integer" } },
   getlist = { mandatory = 1, { "taskId", "integer" }, { "arOrder", "array", SORTABLE },
               { "arFilter", "array", FILTERABLE, FILTER_PREFIXES } },
}
-- the order in which the documentation lists the named parameters, used when the request's
-- order is unknown
local NAMED = { "TASKID", "ITEMID", "FIELDS", "ORDER", "FILTER" }

local DEF = { fields = {}, by_name = {}, standard = {} }
for _, name in ipairs({ "ID", "TASK_ID", "AUTHOR_ID", "AUTHOR_NAME", "AUTHOR_EMAIL", "POST_DATE", "POST_MESSAGE" }) do
   DEF.by_name[name] = { name = name, type = "string" }
   DEF.fields[#DEF.fields + 1] = { name, "string" }
   DEF.standard[#DEF.standard + 1] = name
end

-- A 400 ERROR_CORE as restservice.php __callStatic ends: the messages through CAdminException
-- (each followed by "<br>").
local function fail(text)
   return nil, { status = 400, error = "ERROR_CORE", error_description = text .. "<br>" }
end

-- A TasksException as __callStatic renders it: "TASKS_ERROR_EXCEPTION_#code; message; code/TE/NAME"
-- (tasks/tools/tasksexception.php renderErrorCode).
local function tasks_exception(code, symbol, message)
   return fail("TASKS_ERROR_EXCEPTION_#" .. code .. "; " .. message .. "; " .. code .. "/TE/" .. symbol)
end

local function wrong_arguments(message)
   return tasks_exception(256, "WRONG_ARGUMENTS", message)
end

-- CTaskAssert::isLaxIntegers: an integer, or a string of digits (with an optional minus).
local function lax_integer(v)
   if type(v) == "number" then return v == math_floor(v) end
   return type(v) == "string" and string_match(v, "^%-?%d+$") ~= nil
end

-- A value of the request under `name` in any case (TASKID, taskId).
local function any_case(params, name)
   if params[name] ~= nil then return params[name] end
   for k, v in pairs(params) do
      if type(k) == "string" and string_upper(k) == name then return v end
   end
   return nil
end

-- The request's values in the order sent (restservice.php __callStatic: foreach ($args[0] as
-- $value), keys dropped), less the strings that contain the method's name.
local function positional(params, method)
   local values, keys = {}, request.keys_in_order(params)
   if keys and #keys > 0 then
      for _, k in ipairs(keys) do values[#values + 1] = params[k] end
   elseif params[1] ~= nil then
      for i, v in ipairs(params) do values[i] = v end
   else
      for _, name in ipairs(NAMED) do
         local v = any_case(params, name)
         if v ~= nil then values[#values + 1] = v end
      end
   end
   local out = {}
   for _, v in ipairs(values) do
      if not (type(v) == "string" and string_find(v, method, 1, true)) then out[#out + 1] = v end
   end
   return out
end

-- The arguments of method `name` as _parseRestParams checks them: a list (arrays as given,
-- integers as numbers) | nil, err. A missing mandatory parameter, a value of another type or a
-- key the parameter does not allow is a 256/TE/WRONG_ARGUMENTS; a key "0" with an empty value
-- is dropped ("skip" an argument).
local function arguments(name, values)
   local spec = METHODS[name]
   local out = {}
   for i, param in ipairs(spec) do
      local index = i - 1
      local v = values[i]
      local where = "Param #" .. index .. " (" .. param[1] .. ")"
      if v == nil then
         if index < spec.mandatory then
            return wrong_arguments(where .. " expected by method " .. CLASS .. "::" .. name .. "(), but not given.")
         end
         break
      end
      local ok
      if param[2] == "integer" then ok = lax_integer(v) else ok = type(v) == "table" end
      if not ok then
         return wrong_arguments(where .. " for method " .. CLASS .. "::" .. name .. "() expected to be of type \"" ..
            param[2] .. "\", but given something else.")
      end
      if param[2] == "integer" then
         v = math_floor(tonumber(v))
      elseif param[3] then
         local kept = {}
         for k, item in pairs(v) do
            local key = type(k) == "number" and tostring(k - 1) or tostring(k)
            if not (key == "0" and (item == "" or item == null)) then
               local bare = key
               -- str_replace of every allowed prefix, wherever it stands
               for _, prefix in ipairs(param[4] or {}) do bare = string_gsub(bare, prefix, "") end
               if not param[3][bare] then
                  return wrong_arguments(where .. " for method " .. CLASS .. "::" .. name ..
                     "() must not contain key \"" .. key .. "\".")
               end
               kept[key] = item
            end
         end
         v = kept
      end
      out[i] = v
   end
   return out
end

-- A comment as the methods answer it (_filterArrayByAllowedKeys over the readable keys):
-- POST_MESSAGE_HTML null (the forum keeps none for a REST comment), the rest strings.
local function view(row)
   local out = {}
   for _, name in ipairs(READABLE) do
      local v = row[name]
      if v == nil then v = null end
      out[name] = v
   end
   return out
end

-- A date field's value as _parseRestParams reads it (CRestUtil::unConvertDateTime), printed
-- back in the portal's zone so that rows compare as text; the value as given when unreadable.
local function portal_date(p, v)
   local text = to_text(v)
   local t = text and dates.parse(text, p.timezone)
   if not t then return text end
   return dates.format(t, p.timezone)
end

-- The webhook user's display name, as the forum writes AUTHOR_NAME (users.lua's user).
local function author_name(p, author)
   if author == tostring(p.user_id) then return "Emulator User" end
   return ""
end

-- Registers the task.commentitem.* methods into the portal's method table; the comments are
-- the portal's store "task_comment".
function _M.register(portal, methods)
   local store = storage.new("task_comment", DEF)
   portal.stores.task_comment = store

   -- the task a comment is written to: nil when the portal has none with that id
   local function task_of(p, id)
      local tasks = p.stores.task
      return tasks and tasks.rows[id]
   end

   -- commentitem.php addComment / add: the webhook's user writes (AUTHOR_ID as given, else the
   -- executive user), POST_DATE now unless given; the answer is the new comment's id.
   methods["task.commentitem.add"] = function(p, params)
      local args, err = arguments("add", positional(params, "task.commentitem.add"))
      if not args then return nil, err end
      local task_id, fields = args[1], args[2]
      -- addComment: TaskProvider finds no task -> AddCommentAccessDeniedException (the docs' text)
      if not task_of(p, task_id) then return fail("Insufficient permissions to add a comment.") end
      local message = to_text(fields.POST_MESSAGE)
      -- forum's message check (the docs' "Comment text is not specified")
      if not message or message == "" then return fail("Comment text is not specified") end
      local id = store:take_id()
      local author = to_text(fields.AUTHOR_ID) or tostring(p.user_id)
      local row = { ID = tostring(id), TASK_ID = tostring(task_id), AUTHOR_ID = author,
                    AUTHOR_NAME = author_name(p, author), AUTHOR_EMAIL = "",
                    POST_DATE = fields.POST_DATE and portal_date(p, fields.POST_DATE) or p:date(),
                    POST_MESSAGE = message }
      store:put(id, row)
      p:changed("ONTASKCOMMENTADD", id, { TASK_ID = task_id })
      return id, { rows = 1 }
   end

   -- The comment itemId of task taskId that update and delete may change: isActionAllowed is
   -- false (4/TE/ACTION_NOT_ALLOWED) without the task or with a comment not in its topic.
   local function own_comment(p, task_id, item_id)
      local row = store.rows[item_id]
      if not task_of(p, task_id) or not row or row.TASK_ID ~= tostring(task_id) then return nil end
      return row
   end

   -- commentitem.php update: nothing to change answers false; the text cannot be emptied.
   methods["task.commentitem.update"] = function(p, params)
      local args, err = arguments("update", positional(params, "task.commentitem.update"))
      if not args then return nil, err end
      local task_id, item_id, fields = args[1], args[2], args[3]
      if next(fields) == nil then return false, { rows = 0 } end
      local row = own_comment(p, task_id, item_id)
      if not row then return tasks_exception(4, "ACTION_NOT_ALLOWED", "Action is not allowed") end
      if fields.POST_MESSAGE ~= nil then
         local message = to_text(fields.POST_MESSAGE)
         if not message or message == "" then return fail("Comment text not specified.") end
         row.POST_MESSAGE = message
      end
      if fields.AUTHOR_ID ~= nil then
         row.AUTHOR_ID = to_text(fields.AUTHOR_ID) or row.AUTHOR_ID
         row.AUTHOR_NAME = author_name(p, row.AUTHOR_ID)
      end
      if fields.POST_DATE ~= nil then row.POST_DATE = portal_date(p, fields.POST_DATE) or row.POST_DATE end
      p:changed("ONTASKCOMMENTUPDATE", item_id, { TASK_ID = task_id })
      return true, { rows = 1 }
   end

   -- commentitem.php delete.
   methods["task.commentitem.delete"] = function(p, params)
      local args, err = arguments("delete", positional(params, "task.commentitem.delete"))
      if not args then return nil, err end
      local task_id, item_id = args[1], args[2]
      if not own_comment(p, task_id, item_id) then
         return tasks_exception(4, "ACTION_NOT_ALLOWED", "Action is not allowed")
      end
      store:remove(item_id)
      p:changed("ONTASKCOMMENTDELETE", item_id, { TASK_ID = task_id })
      return true, { rows = 1 }
   end

   -- commentitem.php runRestMethod 'get': fetchDataFromDb reads the forum message by its id
   -- alone (the task is not checked); none is 512/TE/ITEM_NOT_FOUND_OR_NOT_ACCESSIBLE
   -- (subtaskitemabstract.php getData's text).
   methods["task.commentitem.get"] = function(_, params)
      local args, err = arguments("get", positional(params, "task.commentitem.get"))
      if not args then return nil, err end
      local row = store.rows[args[2]]
      if not row then
         return tasks_exception(512, "ITEM_NOT_FOUND_OR_NOT_ACCESSIBLE", "Check listitem not found or not accessible")
      end
      return view(row), { rows = 1 }
   end

   -- commentitem.php runRestMethod 'getlist': every comment of the task (no paging: the
   -- method returns no CDBResult), filtered and ordered as given, by ID without an order; a
   -- task the portal does not have is 8/TE/ACTION_FAILED_TO_BE_PROCESSED
   -- (subtaskitemabstract.php fetchList).
   methods["task.commentitem.getlist"] = function(p, params)
      local args, err = arguments("getlist", positional(params, "task.commentitem.getlist"))
      if not args then return nil, err end
      local task_id = args[1]
      if not task_of(p, task_id) then
         return tasks_exception(8, "ACTION_FAILED_TO_BE_PROCESSED", "Action failed")
      end
      local filter = { TASK_ID = tostring(task_id) }
      for k, v in pairs(args[3] or {}) do
         if string_match(k, "POST_DATE$") and type(v) ~= "table" then v = portal_date(p, v) end
         filter[k] = v
      end
      local out, start = {}, 0
      while true do
         local rows, meta = store:query({ filter = filter, order = args[2], start = start }, { paging = "legacy" })
         for _, row in ipairs(rows) do out[#out + 1] = view(row) end
         if not meta.next then break end
         start = meta.next
      end
      return out, { rows = #out }
   end
end

return _M
