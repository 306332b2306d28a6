-- b24.emulator.smart: the smart processes (dynamic types) of the emulated portal: the types
-- crm.type.list/get print (crm/lib/Model/Dynamic/TypeTable.php, crm/lib/Service/Converter/
-- Type.php), the fields of their items (crm/lib/Service/Factory/Dynamic.php getFieldsSettings,
-- crm/lib/Model/Dynamic/PrototypeItem.php getMap) and the store that keeps each type's items
-- (portal.stores["dynamic_<entityTypeId>"], so --data persists them with the other stores).
local storage = require "b24.emulator.store"

local type = type
local ipairs = ipairs
local tostring = tostring
local string_format = string.format

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

-- Creates the item store of every type in portal.stores (before persist.load fills them).
function _M.register(portal)
   for _, t in ipairs(TYPES) do
      local kind = _M.store_kind(t.ENTITY_TYPE_ID)
      if not portal.stores[kind] then portal.stores[kind] = storage.new(kind, item_def(t)) end
   end
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

return _M
