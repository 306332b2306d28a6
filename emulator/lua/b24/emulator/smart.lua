-- b24.emulator.smart: the smart processes (dynamic types) of the emulated portal: the types
-- and crm.type.list/get (crm/lib/controller/type.php, crm/lib/Model/Dynamic/TypeTable.php,
-- crm/lib/Service/Converter/Type.php), the fields of their items (crm/lib/Service/Factory/
-- Dynamic.php getFieldsSettings), a new item's defaults and what an operation does to it
-- (crm/lib/Model/Dynamic/PrototypeItem.php getMap, crm/lib/Field/*.php), and the store that
-- keeps each type's items (portal.stores["dynamic_<entityTypeId>"], so --data persists them).
local cjson = require("cjson.safe")
local storage = require "b24.emulator.store"
local dates = require "b24.emulator.dates"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local string_format = string.format
local null = cjson.null
local php_int = storage.php_int

-- crm/lib/controller/errorcode.php conventions: nil, { status 400, code, text }.
local function fail(desc, code)
   return nil, { status = 400, error = code, error_description = desc }
end

local _M = {}

-- One seeded type, as a portal's first smart process: TypeTable's columns in upper case (the
-- converter prints them in camel case), flags as the booleans the REST converter prints as Y/N.
-- Stages on, categories off (one default category), begin/close dates on; the rest off.
local TYPES = {
   { ID = 1, ENTITY_TYPE_ID = 128, TITLE = "Emulated process", CODE = "", CREATED_BY = 1, UPDATED_BY = 1,
     CUSTOM_SECTION_ID = false, IS_CATEGORIES_ENABLED = "N", IS_STAGES_ENABLED = "Y",
     IS_BEGIN_CLOSE_DATES_ENABLED = "Y", IS_CLIENT_ENABLED = "N", IS_USE_IN_USERFIELD_ENABLED = "N",
     IS_LINK_WITH_PRODUCTS_ENABLED = "N", IS_MYCOMPANY_ENABLED = "N", IS_DOCUMENTS_ENABLED = "N",
     IS_SOURCE_ENABLED = "N", IS_OBSERVERS_ENABLED = "N", IS_RECYCLEBIN_ENABLED = "N",
     IS_AUTOMATION_ENABLED = "N", IS_BIZ_PROC_ENABLED = "N", IS_SET_OPEN_PERMISSIONS = "Y",
     IS_PAYMENTS_ENABLED = "N", IS_COUNTERS_ENABLED = "N",
     -- not TypeTable columns: the default category (crm/lib/Service/Factory/Dynamic.php
     -- createDefaultCategoryIfNotExist) and its stages
     category_id = 1, stages = { "NEW", "PREPARATION", "CLIENT", "SUCCESS", "FAIL" } },
}
_M.TYPES = TYPES

-- TypeTable's columns, in the order Type::jsonSerialize prints them (NAME, TABLE_NAME and
-- IS_CRM_TRACKING_ENABLED are removed by Converter\Type::toJson): name, kind.
local TYPE_COLUMNS = {
   { "ID", "integer" }, { "TITLE", "string" }, { "CODE", "string" }, { "CREATED_BY", "user" },
   { "ENTITY_TYPE_ID", "integer" }, { "CUSTOM_SECTION_ID", "integer" }, { "IS_CATEGORIES_ENABLED", "boolean" },
   { "IS_STAGES_ENABLED", "boolean" }, { "IS_BEGIN_CLOSE_DATES_ENABLED", "boolean" },
   { "IS_CLIENT_ENABLED", "boolean" }, { "IS_USE_IN_USERFIELD_ENABLED", "boolean" },
   { "IS_LINK_WITH_PRODUCTS_ENABLED", "boolean" }, { "IS_MYCOMPANY_ENABLED", "boolean" },
   { "IS_DOCUMENTS_ENABLED", "boolean" }, { "IS_SOURCE_ENABLED", "boolean" },
   { "IS_OBSERVERS_ENABLED", "boolean" }, { "IS_RECYCLEBIN_ENABLED", "boolean" },
   { "IS_AUTOMATION_ENABLED", "boolean" }, { "IS_BIZ_PROC_ENABLED", "boolean" },
   { "IS_SET_OPEN_PERMISSIONS", "boolean" }, { "IS_PAYMENTS_ENABLED", "boolean" },
   { "IS_COUNTERS_ENABLED", "boolean" }, { "CREATED_TIME", "datetime" }, { "UPDATED_TIME", "datetime" },
   { "UPDATED_BY", "user" },
}
_M.TYPE_COLUMNS = TYPE_COLUMNS
-- crm.type.list's allowed filter/order fields: TypeTable::getFieldsInfo's keys
local TYPE_ALLOWED = { NAME = true, TABLE_NAME = true, IS_CRM_TRACKING_ENABLED = true }
for _, c in ipairs(TYPE_COLUMNS) do TYPE_ALLOWED[c[1]] = true end
_M.TYPE_ALLOWED = TYPE_ALLOWED

-- The item fields of a type as Dynamic.php getFieldsSettings gives them for the seeded type's
-- flags (stages on: MOVED_*, STAGE_ID, PREVIOUS_STAGE_ID; begin/close dates on; categories are
-- always supported: CATEGORY_ID; LAST_ACTIVITY_* exist in PrototypeItem): name, type, then the
-- attributes (CCrmFieldInfoAttr) as flags: ro ReadOnly, req Required.
local ITEM_FIELDS = {
   { "ID", "integer", ro = true }, { "TITLE", "string" }, { "XML_ID", "string" },
   { "CREATED_TIME", "datetime", ro = true }, { "UPDATED_TIME", "datetime", ro = true },
   { "CREATED_BY", "user", ro = true }, { "UPDATED_BY", "user", ro = true }, { "ASSIGNED_BY_ID", "user" },
   { "OPENED", "boolean", req = true }, { "WEBFORM_ID", "integer" },
   { "LAST_COMMUNICATION_TIME", "string", ro = true }, { "BEGINDATE", "date" }, { "CLOSEDATE", "date" },
   { "CATEGORY_ID", "crm_category" }, { "MOVED_TIME", "datetime", ro = true },
   { "MOVED_BY", "user", ro = true }, { "STAGE_ID", "crm_status" },
   { "PREVIOUS_STAGE_ID", "crm_status", ro = true }, { "LAST_ACTIVITY_BY", "user" },
   { "LAST_ACTIVITY_TIME", "datetime" },
}

-- The store kind of a type's items.
function _M.store_kind(entity_type_id)
   return string_format("dynamic_%d", entity_type_id)
end

-- The type with entityTypeId n, or nil.
function _M.type_of(n)
   for _, t in ipairs(TYPES) do
      if t.ENTITY_TYPE_ID == n then return t end
   end
   return nil
end

-- The type with id n (crm.type.get's id), or nil.
function _M.type_by_id(n)
   for _, t in ipairs(TYPES) do
      if t.ID == n then return t end
   end
   return nil
end

-- The stage ids of a type's category: "DT128_1:NEW" (crm/lib/Service/Factory/Dynamic.php
-- getStagesEntityId is DYNAMIC_128_STAGE_1, its statuses' STATUS_ID prefixed DT128_1:).
function _M.stages(t)
   local out = {}
   for i, s in ipairs(t.stages) do
      out[i] = string_format("DT%d_%d:%s", t.ENTITY_TYPE_ID, t.category_id, s)
   end
   return out
end

-- The status type of the stages (crm.item.fields' statusType of STAGE_ID).
function _M.stages_entity_id(t)
   return string_format("DYNAMIC_%d_STAGE_%d", t.ENTITY_TYPE_ID, t.category_id)
end

-- The store def of a type's items: fields as b24.emulator.store reads them ({ name, type,
-- read-only }; the datetime and date fields compare as dates), and the attributes per name.
local function item_def(t)
   local def = { fields = {}, by_name = {}, standard = {}, entity_type = t }
   for i, f in ipairs(ITEM_FIELDS) do
      def.fields[i] = { f[1], f[2], f.ro or false, false }
      local spec = { name = f[1], type = f[2], read_only = f.ro or false, multiple = false,
                     required = f.req or false }
      if f[1] == "STAGE_ID" or f[1] == "PREVIOUS_STAGE_ID" then spec.status_type = _M.stages_entity_id(t) end
      def.by_name[f[1]] = spec
      def.standard[i] = f[1]
   end
   return def
end

-- The types' rows for a store (strings, as b24.emulator.store keeps rows), dated created.
function _M.type_rows(created)
   local rows = {}
   for i, t in ipairs(TYPES) do
      local row = {}
      for _, c in ipairs(TYPE_COLUMNS) do
         local v = t[c[1]]
         if type(v) == "number" then row[c[1]] = tostring(v) elseif type(v) == "string" then row[c[1]] = v end
      end
      row.CREATED_TIME, row.UPDATED_TIME = created, created
      rows[i] = row
   end
   return rows
end

-- A new smart process item: PrototypeItem.php getMap's defaults (XML_ID '', OPENED false,
-- WEBFORM_ID 0, BEGINDATE today, CLOSEDATE today + 7 days, the default category and its first
-- stage), the times and users of the operation (Field\CreatedTime, MovedTime, …).
function _M.new_row(portal, entity, id, now)
   local user, t = tostring(portal.user_id), entity.type
   local today = portal.wall()
   return { ID = tostring(id), XML_ID = "", OPENED = "N", WEBFORM_ID = "0", ASSIGNED_BY_ID = user,
            CREATED_BY = user, UPDATED_BY = user, MOVED_BY = user, LAST_ACTIVITY_BY = user,
            CREATED_TIME = now, UPDATED_TIME = now, MOVED_TIME = now, LAST_ACTIVITY_TIME = now,
            BEGINDATE = dates.format_date(today, portal.timezone),
            CLOSEDATE = dates.format_date(today + 7 * 86400, portal.timezone),
            CATEGORY_ID = tostring(t.category_id), STAGE_ID = entity.stages[1], PREVIOUS_STAGE_ID = "" }
end

-- Whether stage is one of the entity's stages.
local function is_stage(entity, stage)
   for _, s in ipairs(entity.stages) do
      if s == stage then return true end
   end
   return false
end

-- Field\Stage, PreviousStageId, MovedTime/MovedBy, Title: after the fields were set, a stage
-- that is not the category's is the first one (a new item) or the previous one (an update); a
-- changed stage moves the item; an empty title is the type's placeholder "Title #id".
function _M.after(portal, entity, row, before, now)
   if not is_stage(entity, row.STAGE_ID) then row.STAGE_ID = before and before.STAGE_ID or entity.stages[1] end
   if before and row.STAGE_ID ~= before.STAGE_ID then
      row.PREVIOUS_STAGE_ID = before.STAGE_ID
      row.MOVED_TIME, row.MOVED_BY = now, tostring(portal.user_id)
   end
   if row.TITLE == nil or row.TITLE == "" then row.TITLE = entity.type.TITLE .. " #" .. row.ID end
end

-- Type::jsonSerialize (crm/lib/Service/Converter/Type.php toJson): the columns in camel case,
-- ids as numbers, flags Y/N; with all data (crm.type.get) relations, linkedUserFields and
-- customSections too (none modelled: empty).
local function type_view(h, portal, row, all)
   local out = {}
   for _, c in ipairs(TYPE_COLUMNS) do
      local v = row[c[1]]
      if v == nil then v = null
      elseif c[2] == "integer" or c[2] == "user" then v = tonumber(v) or v
      elseif c[2] == "datetime" then v = h.print_datetime(v, portal.timezone)
      end
      out[h.camel(c[1])] = v
   end
   if all then
      out.relations = { parent = {}, child = {} }
      out.linkedUserFields = {}
      out.customSections = {}
   end
   return out
end

-- The types' store of each portal (weak keys: it goes with its portal).
local type_stores = setmetatable({}, { __mode = "k" })

-- The types as a store (filter, order and paging as the ORM's), made on first use.
local function type_store(portal)
   if type_stores[portal] then return type_stores[portal] end
   local def = { fields = {}, by_name = {} }
   for i, c in ipairs(TYPE_COLUMNS) do def.fields[i] = { c[1], c[2], true, false } end
   local store = storage.new("crm_type", def)
   for _, row in ipairs(_M.type_rows(portal:date())) do store:put(store:take_id(), row) end
   type_stores[portal] = store
   return store
end

-- crm.type.list (crm/lib/controller/type.php listAction): filter and order keys converted to
-- upper case (convertKeysToUpper) and validated against TypeTable's fields; the types under
-- `types`, ORM paging.
local function type_list(h, portal, params)
   local p, err = h.bind(params, { { "order", "array", true }, { "filter", "array", true } })
   if not p then return nil, err end
   local names = { common = TYPE_ALLOWED, camel = {} }
   for name in pairs(TYPE_ALLOWED) do names.camel[h.camel(name)] = name end
   local filter, order = {}, {}
   for k, v in pairs(p.filter or {}) do filter[type(k) == "string" and h.to_upper(names, k) or k] = v end
   local ok
   ok, err = h.validate_filter(filter, TYPE_ALLOWED)
   if not ok then return nil, err end
   if p.order then
      for k, v in pairs(p.order) do
         if type(k) == "string" then order[h.to_upper(names, k)] = v end
      end
      ok, err = h.validate_order(order, TYPE_ALLOWED)
      if not ok then return nil, err end
   end
   local rows, meta = type_store(portal):query({ filter = filter, order = order, start = params.start },
      { name = function(key) return key end, paging = "orm", timezone = portal.timezone })
   if php_int(params.start) == -1 then meta.total, meta.next = nil, nil end
   local types = {}
   for i, row in ipairs(rows) do types[i] = type_view(h, portal, row, false) end
   return { types = types }, meta
end

-- crm.type.get (type.php getAction, the ExactParameter `type` built from id): a missing id
-- cannot build the argument (code 100); an unknown one is CRM_TYPE_TYPE_NOT_FOUND with code 0,
-- the first of the controller's errors.
local function type_get(h, portal, params)
   if params.id == nil then
      return fail("Could not find value for parameter to build auto wired argument " ..
         "{Bitrix\\Crm\\Model\\Dynamic\\Type $type}", "100")
   end
   local t = _M.type_by_id(php_int(params.id))
   if not t then return fail("Smart process not found", "0") end
   local store = type_store(portal)
   for _, id in ipairs(store.ids) do
      local row = store.rows[id]
      if row.ID == tostring(t.ID) then return { type = type_view(h, portal, row, true) } end
   end
   return fail("Smart process not found", "0")
end

-- Registers crm.type.list and crm.type.get into methods and creates the item store of every
-- type in portal.stores (before persist.load fills them). h: crm_item's converter, validators
-- and binder (camel, to_upper, validate_filter, validate_order, bind, print_datetime).
function _M.register(portal, methods, h)
   for _, t in ipairs(TYPES) do
      local kind = _M.store_kind(t.ENTITY_TYPE_ID)
      if not portal.stores[kind] then portal.stores[kind] = storage.new(kind, item_def(t)) end
   end
   methods["crm.type.list"] = function(p, params) return type_list(h, p, params) end
   methods["crm.type.get"] = function(p, params) return type_get(h, p, params) end
end

return _M
