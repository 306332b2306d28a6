-- b24.emulator.userfields: the user fields of the legacy CRM entities (b_user_field) and
-- crm.<kind>.userfield.add|get|list|update|delete, as rest/lib/userfieldproxy.php UserFieldProxy
-- and crm/classes/general/restservice.php CCrmUserFieldRestProxy define them. The definitions
-- live in a store named "userfield" in portal.stores, so --data keeps them with the rows.
--
-- For the entity modules: userfields.of(portal, kind) is the ordered list of kind's definitions
-- (tables with ID, ENTITY_ID, FIELD_NAME, USER_TYPE_ID, XML_ID, SORT, MULTIPLE, MANDATORY,
-- SHOW_FILTER, SHOW_IN_LIST, EDIT_IN_LIST, IS_SEARCHABLE, EDIT_FORM_LABEL, LIST_COLUMN_LABEL,
-- LIST_FILTER_LABEL, ERROR_MESSAGE, HELP_MESSAGE (label maps by language), SETTINGS, LIST (the
-- items of an enumeration)); userfields.find(portal, kind, name) one of them; userfields.value
-- the stored form of a value written to one; userfields.describe the crm.<kind>.fields entry.
local cjson = require("cjson.safe")
local storage = require "b24.emulator.store"
local dates = require "b24.emulator.dates"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local next = next
local string_upper = string.upper
local string_sub = string.sub
local string_find = string.find
local string_gsub = string.gsub
local string_format = string.format
local table_sort = table.sort
local table_concat = table.concat
local table_remove = table.remove
local math_floor = math.floor
local null = cjson.null
local to_text = storage.to_text
local php_int = storage.php_int

local _M = {}

-- CCrmOwnerType::ResolveUserFieldEntityID
local ENTITY_OF = { lead = "CRM_LEAD", deal = "CRM_DEAL", contact = "CRM_CONTACT", company = "CRM_COMPANY" }
_M.ENTITY_OF = ENTITY_OF

-- The portal's languages (UserFieldProxy::getAllLanguages): the emulated portal has English only.
local LANGS = { "en" }
local LANG = "en"

-- UserFieldProxy::getTypes: the types a webhook may create.
local TYPES = {}
for _, t in ipairs({ "string", "integer", "double", "boolean", "enumeration", "datetime", "date", "money", "url",
                     "address", "file", "employee", "crm_status", "iblock_section", "iblock_element", "crm" }) do
   TYPES[t] = true
end

-- UserFieldProxy::getFields: the keys sanitizeFields keeps (exact names).
local KNOWN = {}
for _, k in ipairs({ "ID", "ENTITY_ID", "FIELD_NAME", "USER_TYPE_ID", "XML_ID", "SORT", "MULTIPLE", "MANDATORY",
                     "SHOW_FILTER", "SHOW_IN_LIST", "EDIT_IN_LIST", "IS_SEARCHABLE", "EDIT_FORM_LABEL",
                     "LIST_COLUMN_LABEL", "LIST_FILTER_LABEL", "ERROR_MESSAGE", "HELP_MESSAGE", "LIST",
                     "SETTINGS" }) do
   KNOWN[k] = true
end
local LABELS = { "LIST_FILTER_LABEL", "LIST_COLUMN_LABEL", "EDIT_FORM_LABEL", "ERROR_MESSAGE", "HELP_MESSAGE" }
local FLAGS = { "SHOW_IN_LIST", "EDIT_IN_LIST", "IS_SEARCHABLE" }

local function fail(desc, code)
   return nil, { status = 400, error = code or "", error_description = desc }
end

local function trim(s)
   return (string_gsub(string_gsub(s, "^%s+", ""), "%s+$", ""))
end

-- The store of definitions (created on first use, registered in portal.stores).
local function store_of(portal)
   local store = portal.stores.userfield
   if not store then
      store = storage.new("userfield", { fields = {} })
      portal.stores.userfield = store
   end
   return store
end

-- The definitions of kind's entity, by SORT then ID (as the entity's field list shows them).
function _M.of(portal, kind)
   local entity = ENTITY_OF[kind]
   local store = store_of(portal)
   local out = {}
   for _, id in ipairs(store.ids) do
      local row = store.rows[id]
      if row.ENTITY_ID == entity then out[#out + 1] = row end
   end
   table_sort(out, function(a, b)
      local sa, sb = tonumber(a.SORT) or 0, tonumber(b.SORT) or 0
      if sa ~= sb then return sa < sb end
      return tonumber(a.ID) < tonumber(b.ID)
   end)
   return out
end

-- The definition of field `name` of kind's entity; nil when there is none.
function _M.find(portal, kind, name)
   local entity = ENTITY_OF[kind]
   local store = store_of(portal)
   for _, id in ipairs(store.ids) do
      local row = store.rows[id]
      if row.ENTITY_ID == entity and row.FIELD_NAME == name then return row end
   end
   return nil
end

-- PHP's truthiness of a boolean field's value (CUserTypeBoolean: "Y", "1", 1, true are set;
-- "N", "0", 0, false and "" are not).
local function boolean_of(v)
   local s = to_text(v)
   if s == nil or s == "" or s == "0" or s == "N" or s == "n" or s == "false" then return "0" end
   return "1"
end

-- One value of a field as it is stored, or nil when the portal drops it (a date that does not
-- parse: restservice.php internalizeFields unsets it).
local function one_value(def, v, tz)
   local t = def.USER_TYPE_ID
   if type(v) == "table" then return nil end
   if t == "boolean" then return boolean_of(v) end
   local s = to_text(v)
   if s == nil then return nil end
   if s == "" then return "" end
   if t == "integer" or t == "employee" or t == "enumeration" or t == "iblock_section" or t == "iblock_element" then
      return string_format("%d", php_int(s))
   elseif t == "double" then
      return to_text(tonumber(s) or 0)
   elseif t == "datetime" then
      local time = dates.parse(s, tz)
      return time and dates.format(time, tz) or nil
   elseif t == "date" then
      local time = dates.parse(s, tz)
      return time and dates.format_date(time, tz) or nil
   end
   return s
end

-- The values of a request's array in PHP's order: a list as it is, a map (a JSON object, or a
-- form's sparse keys) by its keys, numbers first in numeric order.
local function values_of(t)
   if type(t) ~= "table" then return {} end
   if #t > 0 or next(t) == nil then return t end
   local keys = {}
   for k in pairs(t) do keys[#keys + 1] = k end
   table_sort(keys, function(a, b)
      local na, nb = tonumber(a), tonumber(b)
      if na and nb then return na < nb end
      if na or nb then return na ~= nil end
      return tostring(a) < tostring(b)
   end)
   local out = {}
   for i, k in ipairs(keys) do out[i] = t[k] end
   return out
end

-- The stored form of value written to field def: a string, or a list of strings for a multiple
-- field (a scalar becomes a list of one); nil when nothing is written.
function _M.value(def, value, tz)
   if value == null then value = nil end
   if def.MULTIPLE == "Y" then
      if value == nil then return {} end
      local out = {}
      for _, item in ipairs(type(value) == "table" and values_of(value) or { value }) do
         local s = one_value(def, item, tz)
         if s and s ~= "" then out[#out + 1] = s end
      end
      return out
   end
   if value == nil then return "" end
   return one_value(def, value, tz)
end

-- A stored value as get/list print it: a date field's "YYYY-MM-DD" as CRestUtil::ConvertDate
-- prints it (date('c') of the day's midnight plus the zone's offset: "…T03:00:00+03:00" in
-- +03:00, rest/classes/general/rest_util.php).
function _M.printed(def, stored, tz)
   local function one(s)
      if def.USER_TYPE_ID == "date" and type(s) == "string" and s ~= "" then
         local t = dates.parse(s, tz)
         if t then return dates.format(t + (dates.offset_seconds(tz) or 0), tz) end
      end
      return s
   end
   if type(stored) == "table" then
      local out = {}
      for i, s in ipairs(stored) do out[i] = one(s) end
      return out
   end
   if stored == nil then
      if def.MULTIPLE == "Y" then return {} end
      return null
   end
   return one(stored)
end

local function label_of(def, name)
   local labels = def[name]
   if type(labels) ~= "table" then return "" end
   return labels[LANG] or ""
end

-- The crm.<kind>.fields entry of a definition (crm/classes/general/crm_usertype.php
-- PrepareFieldsInfo, printed by restservice.php CCrmRestHelper::prepareFieldInfos): the type
-- is USER_TYPE_ID, isDynamic, required and multiple from MANDATORY and MULTIPLE; the title is
-- the field's name (prepareFieldInfos reads CAPTION, which PrepareFieldsInfo does not set); the
-- labels in the portal's language; an enumeration's items { ID, VALUE }.
function _M.describe(def)
   local out = { type = def.USER_TYPE_ID, isRequired = def.MANDATORY == "Y", isReadOnly = false,
                 isImmutable = false, isMultiple = def.MULTIPLE == "Y", isDynamic = true,
                 title = def.FIELD_NAME, listLabel = label_of(def, "LIST_COLUMN_LABEL"),
                 formLabel = label_of(def, "EDIT_FORM_LABEL"), filterLabel = label_of(def, "LIST_FILTER_LABEL") }
   if def.USER_TYPE_ID == "enumeration" then
      out.items = {}
      for i, item in ipairs(def.LIST or {}) do out.items[i] = { ID = item.ID, VALUE = item.VALUE } end
   elseif def.USER_TYPE_ID == "crm_status" then
      out.statusType = type(def.SETTINGS) == "table" and to_text(def.SETTINGS.ENTITY_TYPE) or ""
   end
   if def.SETTINGS ~= nil then out.settings = def.SETTINGS end
   return out
end

-- UserFieldProxy::prepareLabels: a string label for every language, or a map by language whose
-- missing or empty entries take the default.
local function labels(value, default)
   local map, fallback = {}, default
   if type(value) == "string" and value ~= "" then
      fallback = value
   elseif type(value) == "table" then
      map = value
   end
   local out = {}
   for _, lid in ipairs(LANGS) do
      local v = map[lid]
      out[lid] = (type(v) == "string" and v ~= "") and v or fallback
   end
   return out
end

-- The effective settings of a new field of type t (UserFieldProxy::add's switch).
local function settings_of(t, settings, fields)
   local out = {}
   if t == "string" then
      out.DEFAULT_VALUE = settings.DEFAULT_VALUE ~= nil and settings.DEFAULT_VALUE or ""
      local rows = php_int(settings.ROWS)
      out.ROWS = rows > 0 and rows or 1
   elseif t == "integer" then
      out.DEFAULT_VALUE = settings.DEFAULT_VALUE ~= nil and settings.DEFAULT_VALUE or ""
   elseif t == "double" then
      out.DEFAULT_VALUE = settings.DEFAULT_VALUE ~= nil and settings.DEFAULT_VALUE or ""
      local precision = tonumber(to_text(settings.PRECISION) or "")
      out.PRECISION = precision and precision >= 0 and precision or 2
   elseif t == "boolean" then
      out.DEFAULT_VALUE = (tonumber(to_text(settings.DEFAULT_VALUE) or "") or 0) > 0 and 1 or 0
      local display = to_text(settings.DISPLAY) or ""
      out.DISPLAY = display ~= "" and string_upper(display) or "CHECKBOX"
      fields.MULTIPLE = "N"
   elseif t == "date" or t == "datetime" then
      local default = settings.DEFAULT_VALUE
      if type(default) ~= "table" then default = { VALUE = default, TYPE = "NONE" } end
      local kind = to_text(default.TYPE) or ""
      out.DEFAULT_VALUE = { VALUE = to_text(default.VALUE) or "", TYPE = kind ~= "" and string_upper(kind) or "NONE" }
   elseif t == "enumeration" then
      local display = to_text(settings.DISPLAY) or ""
      out.DISPLAY = display ~= "" and string_upper(display) or "LIST"
      local height = php_int(settings.LIST_HEIGHT)
      out.LIST_HEIGHT = height > 0 and height or 1
   elseif t == "crm_status" then
      out.ENTITY_TYPE = settings.ENTITY_TYPE ~= nil and settings.ENTITY_TYPE or ""
   elseif t == "crm" then
      for _, k in ipairs({ "LEAD", "CONTACT", "COMPANY", "DEAL" }) do
         out[k] = string_upper(to_text(settings[k]) or "") == "Y" and "Y" or "N"
      end
   end
   return out
end

-- An XML_ID for an item given none: 32 hex digits, as the md5 CUserFieldEnum makes (not the same
-- digits: derived from the item's id, so a restart gives the same ones).
function _M.xml_id(n)
   local parts, x = {}, n
   for i = 1, 4 do
      x = (x * 1103515245 + 12345 + i) % 4294967296
      parts[i] = string_format("%08x", x)
   end
   return table_concat(parts)
end

-- The items of an enumeration's LIST as CUserFieldEnum::SetEnumValues keeps them: a value
-- trimmed of blanks and not empty, SORT (500 when not positive), DEF, XML_ID (an md5-like id
-- when none is given); on update an item with the ID of an existing one changes it (DEL=Y
-- removes it), one without is added.
local function enum_items(store, list, items, multiple)
   list = list or {}
   local default_taken = false
   for _, item in ipairs(values_of(items)) do
      if type(item) == "table" then
         local value = trim(to_text(item.VALUE) or "")
         local id = php_int(item.ID)
         local found
         for i, have in ipairs(list) do if id > 0 and have.ID == tostring(id) then found = i end end
         local is_default = string_upper(to_text(item.DEF) or "") == "Y"
         if not multiple and is_default then
            if default_taken then is_default = false else default_taken = true end
         end
         local sort = tonumber(to_text(item.SORT) or "")
         sort = sort and sort > 0 and math_floor(sort) or 500
         if found and string_upper(to_text(item.DEL) or "") == "Y" then
            table_remove(list, found)
         elseif found then
            local have = list[found]
            if value ~= "" then have.VALUE = value end
            have.SORT = tostring(sort)
            if item.DEF ~= nil then have.DEF = is_default and "Y" or "N" end
            if to_text(item.XML_ID) and to_text(item.XML_ID) ~= "" then have.XML_ID = to_text(item.XML_ID) end
         elseif id <= 0 and value ~= "" then
            store.multi_id = store.multi_id + 1
            local xml = to_text(item.XML_ID)
            if not xml or xml == "" then xml = _M.xml_id(store.multi_id) end
            list[#list + 1] = { ID = tostring(store.multi_id), SORT = tostring(sort), VALUE = value,
                                DEF = is_default and "Y" or "N", XML_ID = xml }
         end
      end
   end
   if default_taken then
      -- one default in a single-valued field: the first marked one
      local seen = false
      for _, item in ipairs(list) do
         if item.DEF == "Y" then
            if seen then item.DEF = "N" end
            seen = true
         end
      end
   end
   table_sort(list, function(a, b)
      local sa, sb = tonumber(a.SORT), tonumber(b.SORT)
      if sa ~= sb then return sa < sb end
      return tonumber(a.ID) < tonumber(b.ID)
   end)
   return list
end

-- main/classes/general/usertype.php CUserTypeEntity::CheckFields and Add's duplicate check: the
-- messages of a refused definition (the language file is not in the snapshot; the texts follow
-- its message names).
local function check(portal, entity, fields)
   local errors = {}
   local name = fields.FIELD_NAME
   if #name > 50 then errors[#errors + 1] = "The field code is too long (50 characters at most)." end
   if not string_find(name, "^[0-9A-Z_]+$") then
      errors[#errors + 1] = "The field code may contain only Latin letters, digits and underscores."
   end
   if not TYPES[fields.USER_TYPE_ID] then errors[#errors + 1] = "Invalid user field type." end
   if #errors == 0 then
      local store = store_of(portal)
      for _, id in ipairs(store.ids) do
         local row = store.rows[id]
         if row.ENTITY_ID == entity and row.FIELD_NAME == name then
            errors[#errors + 1] = "The field " .. name .. " already exists for " .. entity .. "."
            break
         end
      end
   end
   return errors
end

-- crm.<kind>.userfield.add (UserFieldProxy::add): fields under `fields` (any spelling) or the
-- parameters themselves; keys other than the definition's are dropped; USER_TYPE_ID and
-- FIELD_NAME required; FIELD_NAME upper-cased and given the UF_CRM_ prefix; LABEL the default of
-- every label; MULTIPLE, MANDATORY Y or N, SHOW_FILTER Y → E (by mask) else N. The new ID.
local function add(portal, kind, params, array_param)
   local fields = array_param(params, "fields")
   if type(fields) ~= "table" then fields = params end
   local default_label = type(fields.LABEL) == "string" and trim(fields.LABEL) or ""
   local clean = {}
   for k, v in pairs(fields) do
      if KNOWN[k] then clean[k] = v end
   end
   local errors = {}
   local user_type = trim(to_text(clean.USER_TYPE_ID) or "")
   if user_type == "" then errors[#errors + 1] = "The 'USER_TYPE_ID' field is not found." end
   local name = trim(to_text(clean.FIELD_NAME) or "")
   if name == "" then errors[#errors + 1] = "The 'FIELD_NAME' field is not found." end
   if #errors > 0 then return fail(table_concat(errors, "\n")) end
   name = string_upper(name)
   if string_sub(name, 1, 7) ~= "UF_CRM_" then
      name = string_sub(name, 1, 3) == "UF_" and "UF_CRM_" .. string_sub(name, 4) or "UF_CRM_" .. name
   end
   local entity = ENTITY_OF[kind]
   local def = { ENTITY_ID = entity, FIELD_NAME = name, USER_TYPE_ID = user_type }
   errors = check(portal, entity, def)
   if #errors > 0 then return fail(table_concat(errors, "<br>"), "ERROR_CORE") end
   if default_label == "" then default_label = name end
   for _, label in ipairs(LABELS) do def[label] = labels(clean[label], default_label) end
   def.MULTIPLE = string_upper(to_text(clean.MULTIPLE) or "") == "Y" and "Y" or "N"
   def.MANDATORY = string_upper(to_text(clean.MANDATORY) or "") == "Y" and "Y" or "N"
   def.SHOW_FILTER = string_upper(to_text(clean.SHOW_FILTER) or "") == "Y" and "E" or "N"
   def.SETTINGS = settings_of(user_type, type(clean.SETTINGS) == "table" and clean.SETTINGS or {}, def)
   if user_type == "employee" and def.SHOW_FILTER ~= "N" then def.SHOW_FILTER = "I" end
   -- CUserTypeEntity::Add: SORT 100 unless positive; SHOW_IN_LIST, EDIT_IN_LIST Y, IS_SEARCHABLE
   -- N unless given as Y/N; XML_ID as given (null otherwise)
   local sort = php_int(clean.SORT)
   def.SORT = tostring(sort > 0 and sort or 100)
   def.XML_ID = to_text(clean.XML_ID)
   for _, flag in ipairs(FLAGS) do
      local v = to_text(clean[flag])
      if v ~= "Y" and v ~= "N" then v = flag == "IS_SEARCHABLE" and "N" or "Y" end
      def[flag] = v
   end
   local store = store_of(portal)
   if user_type == "enumeration" then def.LIST = enum_items(store, nil, clean.LIST, def.MULTIPLE == "Y") end
   local id = store:take_id()
   def.ID = tostring(id)
   store:put(id, def)
   portal.dirty = true
   return id, { rows = 1 }
end

-- A definition as get prints it (CUserTypeEntity::GetByID: labels by language; an enumeration's
-- LIST without XML_ID) or as list prints it (labels in the portal's language; LIST with XML_ID).
local function view(def, in_list)
   local out = {}
   for _, k in ipairs({ "ID", "ENTITY_ID", "FIELD_NAME", "USER_TYPE_ID", "XML_ID", "SORT", "MULTIPLE", "MANDATORY",
                        "SHOW_FILTER", "SHOW_IN_LIST", "EDIT_IN_LIST", "IS_SEARCHABLE", "SETTINGS" }) do
      local v = def[k]
      if v == nil then v = null end
      out[k] = v
   end
   for _, label in ipairs(LABELS) do
      if in_list then
         local v = label_of(def, label)
         out[label] = v ~= "" and v or null
      else
         out[label] = def[label] or {}
      end
   end
   if def.USER_TYPE_ID == "enumeration" then
      out.LIST = {}
      for i, item in ipairs(def.LIST or {}) do
         out.LIST[i] = { ID = item.ID, SORT = item.SORT, VALUE = item.VALUE, DEF = item.DEF,
                         XML_ID = in_list and item.XML_ID or nil }
      end
   end
   return out
end

-- The definition with ID id for get/update/delete: def | nil, err. UserFieldProxy: an ID that
-- is not positive, one not found (ERROR_NOT_FOUND), one of another entity ("Access denied.").
local function lookup(portal, kind, id)
   if not id then return fail("ID is not defined or invalid.") end
   local def = store_of(portal).rows[id]
   if not def then return fail("The entity with ID '" .. id .. "' is not found.", "ERROR_NOT_FOUND") end
   if def.ENTITY_ID ~= ENTITY_OF[kind] then return fail("Access denied.") end
   return def
end

-- crm.<kind>.userfield.list (UserFieldProxy::getList → CUserTypeEntity::GetList): filter by the
-- definition's columns (equality), order by them (ASC unless DESC), all rows, total their count.
local function list(portal, kind, params, array_param, sent)
   local order = array_param(params, "order") or {}
   if type(order) ~= "table" then return fail("Parameter 'order' must be array.") end
   local filter = array_param(params, "filter") or {}
   if type(filter) ~= "table" then return fail("Parameter 'filter' must be array.") end
   local rows = {}
   for _, def in ipairs(_M.of(portal, kind)) do
      local ok = true
      for k, v in pairs(filter) do
         local key = type(k) == "string" and string_upper(k) or ""
         if KNOWN[key] and key ~= "ENTITY_ID" and type(v) ~= "table" and def[key] ~= to_text(v) then ok = false end
      end
      if ok then rows[#rows + 1] = def end
   end
   table_sort(rows, function(a, b) return tonumber(a.ID) < tonumber(b.ID) end)
   local keys, rank = {}, {}
   for i, k in ipairs(sent or {}) do rank[k] = rank[k] or i end
   for k, v in pairs(order) do
      if type(k) == "string" and KNOWN[string_upper(k)] then
         keys[#keys + 1] = { key = k, name = string_upper(k), desc = string_upper(to_text(v) or "") == "DESC" }
      end
   end
   -- the keys as sent (b24.emulator.order), else alphabetically
   table_sort(keys, function(a, b)
      local ra, rb = rank[a.key] or 1e9, rank[b.key] or 1e9
      if ra ~= rb then return ra < rb end
      return a.key < b.key
   end)
   if #keys > 0 then
      table_sort(rows, function(a, b)
         for _, key in ipairs(keys) do
            local r = storage.compare(to_text(a[key.name]) or "", to_text(b[key.name]) or "")
            if r ~= 0 then if key.desc then return r > 0 else return r < 0 end end
         end
         return tonumber(a.ID) < tonumber(b.ID)
      end)
   end
   local out = {}
   for i, def in ipairs(rows) do out[i] = view(def, true) end
   return out, { total = #out, rows = #out }
end

-- crm.<kind>.userfield.update (UserFieldProxy::update): labels, SORT, XML_ID, MANDATORY,
-- SHOW_FILTER (Y → E), the flags, the type's settings and an enumeration's LIST change;
-- ENTITY_ID, FIELD_NAME, USER_TYPE_ID and MULTIPLE stay (CUserTypeEntity::Update).
local function update(portal, kind, id, fields)
   local def, err = lookup(portal, kind, id)
   if not def then return nil, err end
   for _, label in ipairs(LABELS) do
      if fields[label] ~= nil then
         local merged = labels(fields[label], "")
         for lid, v in pairs(merged) do
            if v == "" and type(def[label]) == "table" then merged[lid] = def[label][lid] or "" end
         end
         def[label] = merged
      end
   end
   if fields.SORT ~= nil then
      local sort = php_int(fields.SORT)
      def.SORT = tostring(sort > 0 and sort or 100)
   end
   if fields.XML_ID ~= nil then def.XML_ID = to_text(fields.XML_ID) end
   if fields.MANDATORY ~= nil then
      def.MANDATORY = string_upper(to_text(fields.MANDATORY) or "") == "Y" and "Y" or "N"
   end
   if fields.SHOW_FILTER ~= nil then
      def.SHOW_FILTER = string_upper(to_text(fields.SHOW_FILTER) or "") == "Y" and "E" or "N"
   end
   for _, flag in ipairs(FLAGS) do
      local v = to_text(fields[flag])
      if v == "Y" or v == "N" then def[flag] = v end
   end
   if type(fields.SETTINGS) == "table" and next(fields.SETTINGS) ~= nil then
      local merged = settings_of(def.USER_TYPE_ID, fields.SETTINGS, {})
      for k, v in pairs(merged) do
         if fields.SETTINGS[k] ~= nil then def.SETTINGS[k] = v end
      end
   end
   if def.USER_TYPE_ID == "enumeration" and fields.LIST ~= nil then
      def.LIST = enum_items(store_of(portal), def.LIST, fields.LIST, def.MULTIPLE == "Y")
   end
   portal.dirty = true
   return true, { rows = 1 }
end

-- crm.<kind>.userfield.delete: the definition goes, and with it the column: the rows lose the
-- field's values.
local function delete(portal, kind, id)
   local def, err = lookup(portal, kind, id)
   if not def then return nil, err end
   store_of(portal):remove(id)
   local rows = portal.stores[kind]
   if rows then
      for _, row in pairs(rows.rows) do row[def.FIELD_NAME] = nil end
   end
   portal.dirty = true
   return true, { rows = 1 }
end

-- Registers crm.<kind>.userfield.* for each kind (restservice.php CCrmRestProxyBase::
-- processMethodRequest USERFIELD); array_param and id_param are crm.lua's parameter readers,
-- order_keys(portal, params) the keys of the request's order as sent.
function _M.register(portal, methods, kinds, array_param, id_param, order_keys)
   store_of(portal)
   for _, kind in ipairs(kinds) do
      local prefix = "crm." .. kind .. ".userfield."
      methods[prefix .. "add"] = function(p, params) return add(p, kind, params, array_param) end
      methods[prefix .. "get"] = function(p, params)
         local def, err = lookup(p, kind, id_param(params))
         if not def then return nil, err end
         return view(def, false), { rows = 1 }
      end
      methods[prefix .. "list"] = function(p, params)
         return list(p, kind, params, array_param, order_keys and order_keys(p, params))
      end
      methods[prefix .. "update"] = function(p, params)
         local id = id_param(params)
         local fields = array_param(params, "fields") or {}
         if type(fields) ~= "table" then return fail("Parameter 'fields' must be array.") end
         return update(p, kind, id, fields)
      end
      methods[prefix .. "delete"] = function(p, params) return delete(p, kind, id_param(params)) end
   end
end

return _M
