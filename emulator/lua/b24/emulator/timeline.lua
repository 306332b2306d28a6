-- b24.emulator.timeline: what a CRM entity's timeline holds, as two stores of their own
-- (portal.stores.timeline_comment, portal.stores.activity: --data keeps them): comments
-- (crm.timeline.comment.add: crm/lib/controller/timeline/comment.php; .get/.list:
-- crm/classes/general/restservice.php CCrmTimelineCommentRestProxy) and activities
-- (crm.activity.add/get/list: restservice.php CCrmActivityRestProxy; crm.activity.todo.add:
-- crm/lib/controller/activity/todo.php). Both belong to a lead, deal, contact or company that
-- must exist in its store.
local storage = require "b24.emulator.store"
local dates = require "b24.emulator.dates"
local json = require "b24.emulator.json"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local next = next
local string_upper = string.upper
local string_lower = string.lower
local string_sub = string.sub
local string_gsub = string.gsub
local to_text = storage.to_text
local php_int = storage.php_int
local null = json.null

local _M = {}

-- crm/classes/general/crm_owner_type.php: the ids, names and abbreviations of the entities kept
-- here (ResolveID reads a name or abbreviation in any case; ResolveName gives the name).
local OWNER_NAMES = { [1] = "LEAD", [2] = "DEAL", [3] = "CONTACT", [4] = "COMPANY" }
local OWNER_IDS = { LEAD = 1, L = 1, DEAL = 2, D = 2, CONTACT = 3, C = 3, COMPANY = 4, CO = 4 }
local STORE_OF = { [1] = "lead", [2] = "deal", [3] = "contact", [4] = "company" }

-- CCrmActivityType (crm/classes/general/crm_activity.php): Meeting 1, Call 2, Task 3, Email 4,
-- Activity 5, Provider 6; the add method takes Call, Meeting, Email and Provider.
local TYPE_NAMES = { [1] = "Meeting", [2] = "Call", [3] = "Task", [4] = "Email", [5] = "Activity",
                     [6] = "Provider" }
local PROVIDERS = { [1] = { "CRM_MEETING", "MEETING" }, [2] = { "VOXIMPLANT_CALL", "CALL" },
                    [4] = { "CRM_EMAIL", "EMAIL" } }
-- The columns an activity prints (CCrmActivity::GetList; crm.activity.get in b24restdocs),
-- with the value a new one gets when the caller gives none ("" = null).
local ACTIVITY_FIELDS = {
   { "ID" }, { "OWNER_ID" }, { "OWNER_TYPE_ID" }, { "TYPE_ID" }, { "PROVIDER_ID" }, { "PROVIDER_TYPE_ID" },
   { "PROVIDER_GROUP_ID" }, { "ASSOCIATED_ENTITY_ID", "0" }, { "SUBJECT" }, { "CREATED" }, { "LAST_UPDATED" },
   { "START_TIME" }, { "END_TIME" }, { "DEADLINE" }, { "COMPLETED", "N" }, { "STATUS", "1" },
   { "RESPONSIBLE_ID" }, { "PRIORITY", "2" }, { "NOTIFY_TYPE", "0" }, { "NOTIFY_VALUE", "0" },
   { "DESCRIPTION", "" }, { "DESCRIPTION_TYPE", "1" }, { "DIRECTION", "0" }, { "LOCATION", "" },
   { "SETTINGS" }, { "ORIGINATOR_ID" }, { "ORIGIN_ID" }, { "AUTHOR_ID" }, { "EDITOR_ID" },
   { "PROVIDER_PARAMS" }, { "PROVIDER_DATA" }, { "RESULT_MARK", "0" }, { "RESULT_VALUE" }, { "RESULT_SUM" },
   { "RESULT_CURRENCY_ID" }, { "RESULT_STATUS", "0" }, { "RESULT_STREAM", "0" }, { "RESULT_SOURCE_ID" },
   { "AUTOCOMPLETE_RULE", "0" },
}
-- what CCrmActivity::Add takes from the caller's fields (the rest it sets itself)
local ACTIVITY_WRITABLE = { SUBJECT = true, START_TIME = true, END_TIME = true, DEADLINE = true,
   COMPLETED = true, PRIORITY = true, NOTIFY_TYPE = true, NOTIFY_VALUE = true, DESCRIPTION = true,
   DESCRIPTION_TYPE = true, DIRECTION = true, LOCATION = true, ORIGINATOR_ID = true, ORIGIN_ID = true,
   PROVIDER_GROUP_ID = true, RESULT_MARK = true, RESULT_VALUE = true, RESULT_SUM = true,
   RESULT_CURRENCY_ID = true, RESULT_SOURCE_ID = true, PROVIDER_TYPE_ID = true }
local ACTIVITY_DATES = { CREATED = true, LAST_UPDATED = true, START_TIME = true, END_TIME = true, DEADLINE = true }

-- A store's field definition: fields ({ NAME, default }), the names compared as dates.
local function def_of(fields, dates_of)
   local def = { fields = {}, by_name = {}, standard = {}, dates = dates_of }
   for _, f in ipairs(fields) do
      local spec = { name = f[1], default = f[2], type = "string" }
      def.by_name[spec.name] = spec
      def.fields[#def.fields + 1] = { spec.name, "string" }
      def.standard[#def.standard + 1] = spec.name
   end
   return def
end
local ACTIVITY_DEF = def_of(ACTIVITY_FIELDS, ACTIVITY_DATES)
-- CCrmTimelineCommentRestProxy::prepareGetResult's fields, in order
local COMMENT_FIELDS = { "ID", "ENTITY_ID", "ENTITY_TYPE", "CREATED", "COMMENT", "AUTHOR_ID" }
local COMMENT_DEF = def_of({ { "ID" }, { "ENTITY_ID" }, { "ENTITY_TYPE" }, { "ENTITY_TYPE_ID" }, { "CREATED" },
                             { "COMMENT" }, { "AUTHOR_ID" } }, { CREATED = true })

-- A RestException as restservice.php throws it (code "", 400) or an Engine error (code given).
local function fail(desc, code, status)
   return nil, { status = status or 400, error = code or "", error_description = desc }
end

-- main/lib/engine/autowire/binder.php: a required action parameter missing (a
-- BinderArgumentException, an ArgumentException: code 100, which rest/lib/restexception.php
-- prints as the string "100").
local function missing(name)
   return nil, { status = 400, error = "100",
                 error_description = "Could not find value for parameter {" .. name .. "}" }
end

-- CCrmOwnerType::ResolveID of a name or abbreviation (0 when unknown).
local function owner_type_of(name)
   local key = string_upper((string_gsub(to_text(name) or "", "^%s*(.-)%s*$", "%1")))
   return OWNER_IDS[key] or 0
end

-- The row of owner (type id, id) when it exists in its store.
local function owner_row(p, type_id, id)
   local kind = STORE_OF[type_id]
   local store = kind and p.stores[kind]
   return store and store.rows[id] or nil
end

-- CCrmRestHelper::resolveArrayParam (restservice.php): name as given, upper, lower, capitalized
-- or Hungarian; the first set wins.
local function array_param(params, name)
   local lower = string_lower(name)
   local capitalized = string_upper(string_sub(lower, 1, 1)) .. string_sub(lower, 2)
   for _, key in ipairs({ name, string_upper(name), lower, capitalized, "ar" .. capitalized }) do
      local v = params[key]
      if v ~= nil then return v end
   end
   return nil
end

-- CCrmRestHelper::resolveEntityID: ID, else id, as an integer > 0 (nil otherwise).
local function id_param(params)
   local v = params.ID
   if v == nil then v = params.id end
   if v == nil or type(v) == "table" then return nil end
   local n = php_int(v)
   if n < 1 then return nil end
   return n
end

-- A list's order, filter and select as processMethodRequest LIST checks them (order first):
-- order, filter | nil, err.
local function list_params(params)
   local order = array_param(params, "order") or {}
   if type(order) ~= "table" then return fail("Parameter 'order' must be array.") end
   local filter = array_param(params, "filter") or {}
   if type(filter) ~= "table" then return fail("Parameter 'filter' must be array.") end
   local select = array_param(params, "select")
   if select ~= nil and type(select) ~= "table" then select = { select } end
   return order, filter, select
end

-- The selected names among all (all when select is empty or has "*").
local function selected_names(all, select)
   if type(select) ~= "table" or next(select) == nil then return all end
   local wanted = {}
   for _, key in pairs(select) do
      local k = to_text(key)
      if k == "*" then return all end
      if k then wanted[k] = true end
   end
   local out = {}
   for _, name in ipairs(all) do
      if wanted[name] then out[#out + 1] = name end
   end
   return out
end

-- A row printed with names (null for what is unset).
local function view(row, names)
   local out = {}
   for _, name in ipairs(names) do
      local v = row[name]
      if v == nil then v = null end
      out[name] = v
   end
   return out
end

-- crm.timeline.comment.add: comment.php addAction: fields (required) ENTITY_ID, ENTITY_TYPE
-- (a name, any case) or ENTITY_TYPE_ID, COMMENT (trimmed); a bad owner is OWNER_NOT_FOUND, a
-- missing one NOT_FOUND "Not found." (b24restdocs' answer), an empty comment INVALID_ARG_VALUE;
-- the author is the caller. Answers the new id.
local function comment_add(p, params)
   local fields = params.fields
   if fields == nil then return missing("fields") end
   if type(fields) ~= "table" then
      return nil, { status = 400, error = "100", error_description =
         "Invalid value {" .. (to_text(fields) or "") .. "} to match with parameter {fields}. "
         .. "Should be value of type array." }
   end
   local owner_id = php_int(fields.ENTITY_ID)
   local owner_type = php_int(fields.ENTITY_TYPE_ID)
   if owner_type == 0 and to_text(fields.ENTITY_TYPE) and to_text(fields.ENTITY_TYPE) ~= "" then
      owner_type = owner_type_of(fields.ENTITY_TYPE)
   end
   if owner_id <= 0 or not OWNER_NAMES[owner_type] then
      return fail("Owner was not found", "OWNER_NOT_FOUND")
   end
   if not owner_row(p, owner_type, owner_id) then return fail("Not found.", "NOT_FOUND") end
   local text = string_gsub(to_text(fields.COMMENT) or "", "^%s*(.-)%s*$", "%1")
   if text == "" then return fail("Empty comment message", "INVALID_ARG_VALUE") end
   local store = p.stores.timeline_comment
   local id = store:take_id()
   store:put(id, { ID = tostring(id), ENTITY_ID = tostring(owner_id), ENTITY_TYPE_ID = tostring(owner_type),
                   ENTITY_TYPE = string_lower(OWNER_NAMES[owner_type]), CREATED = p:date(), COMMENT = text,
                   AUTHOR_ID = tostring(p.user_id) })
   p:changed("ONCRMTIMELINECOMMENTADD", id)
   return id, { rows = 1 }
end

-- crm.timeline.comment.get: CCrmRestProxyBase::get + CCrmTimelineCommentRestProxy::innerGet:
-- "ID is not defined or invalid.", "Not found."; the row's ID, ENTITY_ID, ENTITY_TYPE (lower
-- case), CREATED, COMMENT, AUTHOR_ID.
local function comment_get(p, params)
   local id = id_param(params)
   if not id then return fail("ID is not defined or invalid.") end
   local row = p.stores.timeline_comment.rows[id]
   if not row then return fail("Not found.") end
   return view(row, COMMENT_FIELDS), { rows = 1 }
end

-- crm.timeline.comment.list: innerGetList: filter ENTITY_ID and ENTITY_TYPE name the owner
-- (one that is missing or does not exist fails the read check: "Access denied."); order by ID,
-- CREATED or AUTHOR_ID only ("DESC" exactly, else ASC); select narrows prepareGetResult's
-- fields; page intval(start/50)+1 of 50 read at its offset (empty past the end), total and
-- next = page*50 while pages remain.
local function comment_list(p, params)
   local order, filter, select = list_params(params)
   if not order then return nil, filter end
   local owner_id = php_int(filter.ENTITY_ID)
   local owner_type = owner_type_of(filter.ENTITY_TYPE)
   if owner_id <= 0 or not owner_row(p, owner_type, owner_id) then return fail("Access denied.") end
   local sorted = {}
   for k, v in pairs(order) do
      if k == "ID" or k == "CREATED" or k == "AUTHOR_ID" then sorted[k] = v == "DESC" and "DESC" or "ASC" end
   end
   local start = php_int(params.start)
   local rows, meta = p.stores.timeline_comment:query(
      { filter = { ENTITY_ID = tostring(owner_id), ENTITY_TYPE_ID = tostring(owner_type) }, order = sorted,
        start = start > 0 and start or 0 }, { paging = "orm", timezone = p.timezone })
   local names = COMMENT_FIELDS
   if type(select) == "table" and next(select) ~= nil then
      local wanted = {}
      for _, key in pairs(select) do wanted[to_text(key) or ""] = true end
      names = {}
      for _, name in ipairs(COMMENT_FIELDS) do
         if wanted[name] then names[#names + 1] = name end
      end
   end
   local out = {}
   for i, row in ipairs(rows) do out[i] = view(row, names) end
   local page = start > 0 and (start - start % 50) / 50 + 1 or 1
   meta.next = nil
   if page * 50 < (meta.total or 0) then meta.next = page * 50 end
   return out, meta
end

-- crm.activity.add: CCrmActivityRestProxy::innerAdd, its checks in order: SUBJECT; the
-- responsible (RESPONSIBLE_ID, else the owner's ASSIGNED_BY_ID, else the caller); TYPE_ID
-- (PROVIDER_ID alone means Provider, 6) defined, a provider known (REST_APP needs an
-- application, CONFIGURABLE_REST_APP its own method), one of Call, Meeting, Email, Provider;
-- COMMUNICATIONS (internalizeCommunications: an item with a VALUE, or any for a meeting, bound
-- to its ENTITY_TYPE_ID/ENTITY_ID or the owner; PHONE for calls, EMAIL for e-mails) unless
-- Provider, one only for calls and meetings; at least one binding (the owner and the
-- communications' entities), each existing. Errors are RestExceptions ("" 400). Answers the id.
local function activity_add(p, params)
   local fields = array_param(params, "fields") or {}
   if type(fields) ~= "table" then return fail("Parameter 'fields' must be array.") end
   local owner_type = php_int(fields.OWNER_TYPE_ID)
   local owner_id = php_int(fields.OWNER_ID)
   local bindings, order = {}, {}
   local function bind(t, id)
      local key = t .. "_" .. id
      if not bindings[key] then bindings[key] = { t, id }; order[#order + 1] = key end
   end
   if owner_type > 0 and owner_id > 0 then bind(owner_type, owner_id) end
   local subject = to_text(fields.SUBJECT)
   if not subject or string_gsub(subject, "^%s*(.-)%s*$", "%1") == "" then
      return fail("The field SUBJECT is not defined or empty.")
   end
   local responsible = php_int(fields.RESPONSIBLE_ID)
   if responsible <= 0 and owner_type > 0 and owner_id > 0 then
      local owner = owner_row(p, owner_type, owner_id)
      responsible = owner and php_int(owner.ASSIGNED_BY_ID) or 0
   end
   if responsible <= 0 then responsible = p.user_id end
   local provider = to_text(fields.PROVIDER_ID)
   local type_id = php_int(fields.TYPE_ID)
   if provider and (fields.TYPE_ID == nil or type_id == 0) then type_id = 6 end
   if not TYPE_NAMES[type_id] then return fail("The field TYPE_ID is not defined or invalid.") end
   if type_id == 6 and (not provider or provider == "") then
      return fail("The custom activity without provider is not supported in current context.")
   end
   if type_id ~= 1 and type_id ~= 2 and type_id ~= 4 and type_id ~= 6 then
      return fail('The activity type "' .. TYPE_NAMES[type_id] .. ' is not supported in current context".')
   end
   if provider == "CONFIGURABLE_REST_APP" then
      return fail("Use crm.activity.configurable.add for this activity provider")
   end
   if provider == "REST_APP" then return fail("Application context required.") end
   local communications = {}
   if type(fields.COMMUNICATIONS) == "table" then
      for _, c in pairs(fields.COMMUNICATIONS) do
         if type(c) == "table" then
            local ct, cid = php_int(c.ENTITY_TYPE_ID), php_int(c.ENTITY_ID)
            local value, kind = to_text(c.VALUE) or "", to_text(c.TYPE) or ""
            if value ~= "" and (ct <= 0 or cid <= 0) then ct, cid = owner_type, owner_id end
            local ok = ct > 0 and cid > 0 and (value ~= "" or type_id == 1 or type_id == 3)
            if ok and kind == "" then
               if type_id == 2 then kind = "PHONE" elseif type_id == 4 then kind = "EMAIL" end
            elseif ok and ((type_id == 2 and kind ~= "PHONE") or (type_id == 4 and kind ~= "EMAIL")) then
               ok = false
            end
            if ok then
               communications[#communications + 1] = { ENTITY_TYPE_ID = tostring(ct), ENTITY_ID = tostring(cid),
                                                        VALUE = value, TYPE = kind }
               bind(ct, cid)
            end
         end
      end
   end
   if #communications == 0 and type_id ~= 6 then return fail("The field COMMUNICATIONS is not defined or invalid.") end
   if (type_id == 2 or type_id == 1) and #communications > 1 then
      return fail("The only one communication is allowed for activity of specified type.")
   end
   if #order == 0 then
      return fail("Could not build binding. Please ensure that owner info and communications are defined correctly.")
   end
   for _, key in ipairs(order) do
      local t, id = bindings[key][1], bindings[key][2]
      local name = OWNER_NAMES[t]
      if not name then return fail("Entity type '[" .. t .. "]' is not supported in current context") end
      if not owner_row(p, t, id) then return fail("Could not find '" .. name .. "' with ID: " .. id) end
   end
   local first = bindings[order[1]]
   local row = { OWNER_TYPE_ID = tostring(first[1]), OWNER_ID = tostring(first[2]), TYPE_ID = tostring(type_id),
                 RESPONSIBLE_ID = tostring(responsible), COMMUNICATIONS = communications }
   if provider then row.PROVIDER_ID = provider
   elseif PROVIDERS[type_id] then
      row.PROVIDER_ID, row.PROVIDER_TYPE_ID = PROVIDERS[type_id][1], PROVIDERS[type_id][2]
   end
   for name in pairs(ACTIVITY_WRITABLE) do
      local v = to_text(fields[name])
      if v ~= nil then
         if ACTIVITY_DATES[name] then
            local t = dates.parse(v, p.timezone)
            v = t and p:date(t) or nil
         end
         row[name] = v
      end
   end
   if row.COMPLETED then row.COMPLETED = string_upper(row.COMPLETED) == "Y" and "Y" or "N" end
   return _M.insert_activity(p, row)
end

-- Stores a new activity row (defaults, dates, author) and posts ONCRMACTIVITYADD: its id.
function _M.insert_activity(p, row)
   local store = p.stores.activity
   local id = store:take_id()
   local now, user = p:date(), tostring(p.user_id)
   for _, f in ipairs(ACTIVITY_FIELDS) do
      if row[f[1]] == nil and f[2] ~= nil then row[f[1]] = f[2] end
   end
   row.ID, row.CREATED, row.LAST_UPDATED, row.AUTHOR_ID, row.EDITOR_ID = tostring(id), now, now, user, user
   row.DEADLINE = row.DEADLINE or row.END_TIME or row.START_TIME
   row.STATUS = row.COMPLETED == "Y" and "2" or "1"
   row.SETTINGS, row.PROVIDER_PARAMS = row.SETTINGS or {}, row.PROVIDER_PARAMS or {}
   store:put(id, row)
   p:changed("ONCRMACTIVITYADD", id)
   return id, { rows = 1 }
end

-- crm.activity.get: CCrmRestProxyBase::get ("ID is not defined or invalid.") and innerGet: an
-- id CCrmActivity::GetList does not find leaves innerGet's Fetch false and no error message, so
-- the RestException's text is empty (b24restdocs lists "Activity is not found", which innerGet
-- only gives when GetList itself fails). The row: every column, null for what is unset.
local function activity_get(p, params)
   local id = id_param(params)
   if not id then return fail("ID is not defined or invalid.") end
   local row = p.stores.activity.rows[id]
   if not row then return fail("") end
   return view(row, ACTIVITY_DEF.standard), { rows = 1 }
end

-- crm.activity.list: innerGetList → CCrmActivity::GetList: order START_TIME ASC when none is
-- given, the legacy filter and paging (store.query "legacy"), select narrowing the columns.
local function activity_list(p, params)
   local order, filter, select = list_params(params)
   if not order then return nil, filter end
   if next(order) == nil then order = { START_TIME = "ASC" } end
   local rows, meta = p.stores.activity:query({ filter = filter, order = order, start = params.start },
                                              { paging = "legacy", timezone = p.timezone })
   local names = selected_names(ACTIVITY_DEF.standard, select)
   local out = {}
   for i, row in ipairs(rows) do out[i] = view(row, names) end
   return out, meta
end

-- crm.activity.todo.add: todo.php addAction(ownerTypeId, ownerId, deadline, title, description,
-- responsibleId): the required parameters first (binder: code 100), then an owner
-- ItemIdentifier::createFromArray accepts (else NOT_FOUND), the deadline as
-- CRestUtil::unConvertDateTime reads it (else WRONG_DATETIME_FORMAT); a missing owner is
-- NOT_FOUND. A CRM_TODO activity (Provider, 6) answered as { id }.
local function todo_add(p, params)
   for _, name in ipairs({ "ownerTypeId", "ownerId", "deadline" }) do
      if params[name] == nil then return missing(name) end
   end
   local owner_type, owner_id = php_int(params.ownerTypeId), php_int(params.ownerId)
   if owner_id <= 0 or owner_type <= 0 then return fail("Not found.", "NOT_FOUND") end
   local t = dates.parse(to_text(params.deadline) or "", p.timezone)
   if not t then return fail("Wrong date format", "WRONG_DATETIME_FORMAT") end
   if not owner_row(p, owner_type, owner_id) then return fail("Not found.", "NOT_FOUND") end
   local responsible = php_int(params.responsibleId)
   local deadline = p:date(t)
   local id = _M.insert_activity(p, {
      OWNER_TYPE_ID = tostring(owner_type), OWNER_ID = tostring(owner_id), TYPE_ID = "6", PROVIDER_ID = "CRM_TODO",
      PROVIDER_TYPE_ID = "TODO", SUBJECT = to_text(params.title) or "", DESCRIPTION = to_text(params.description) or "",
      START_TIME = deadline, END_TIME = deadline, DEADLINE = deadline,
      RESPONSIBLE_ID = tostring(responsible > 0 and responsible or p.user_id),
   })
   return { id = id }, { rows = 1 }
end

-- Registers the comment and activity methods and their stores.
function _M.register(portal, methods)
   portal.stores.timeline_comment = storage.new("timeline_comment", COMMENT_DEF)
   portal.stores.activity = storage.new("activity", ACTIVITY_DEF)
   methods["crm.timeline.comment.add"] = comment_add
   methods["crm.timeline.comment.get"] = comment_get
   methods["crm.timeline.comment.list"] = comment_list
   methods["crm.activity.add"] = activity_add
   methods["crm.activity.get"] = activity_get
   methods["crm.activity.list"] = activity_list
   methods["crm.activity.todo.add"] = todo_add
end

_M.owner_type_of = owner_type_of

return _M
