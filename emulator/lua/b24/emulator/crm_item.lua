-- b24.emulator.crm_item: crm.item.* (crm/lib/controller/item.php). Items of entityTypeId 1-4
-- are the legacy CRM entities' rows (portal.stores lead, deal, contact, company: the factory's
-- common field names over their columns); items of a smart process are rows of their own store
-- (b24.emulator.smart, which also answers crm.type.*). Names are printed in lower camel case and
-- read back through the converter; filter and order are validated; lists page as the ORM does
-- (protocol.md §4).
local cjson = require("cjson.safe")
local storage = require "b24.emulator.store"
local crm = require "b24.emulator.crm"
local smart = require "b24.emulator.smart"
local dates = require "b24.emulator.dates"
local userfields = require "b24.emulator.userfields"
local order_of = require "b24.emulator.order"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local next = next
local string_format = string.format
local string_lower = string.lower
local string_upper = string.upper
local string_sub = string.sub
local string_find = string.find
local string_gsub = string.gsub
local string_match = string.match
local table_sort = table.sort
local table_remove = table.remove
local null = cjson.null
local to_text = storage.to_text
local php_int = storage.php_int
local fail = crm.fail

local _M = {}

-- crm.item.* names: the factory's common field names (crm/lib/Service/Factory/*.php
-- getFieldsMap maps them to the entity's columns), printed in lower camel case.
local ITEM_NAMES = {
   CREATED_BY_ID = "CREATED_BY", MODIFY_BY_ID = "UPDATED_BY", DATE_CREATE = "CREATED_TIME",
   DATE_MODIFY = "UPDATED_TIME",
}
-- Company.php getFieldsSettings: IS_MY_COMPANY is Immutable (set on add only).
local IMMUTABLE = { IS_MY_COMPANY = true }
-- The rest of each factory's getFieldsMap: Lead.php STAGE_ID is STATUS_ID (and its semantics),
-- Company.php TYPE_ID is COMPANY_TYPE; MOVED_BY is MOVED_BY_ID (Lead.php, Deal.php),
-- OBSERVERS is OBSERVER_IDS.
local ENTITY_ITEM_NAMES = {
   lead = { STATUS_ID = "STAGE_ID", STATUS_SEMANTIC_ID = "STAGE_SEMANTIC_ID", MOVED_BY_ID = "MOVED_BY",
            OBSERVER_IDS = "OBSERVERS" },
   deal = { MOVED_BY_ID = "MOVED_BY", OBSERVER_IDS = "OBSERVERS" },
   contact = { OBSERVER_IDS = "OBSERVERS" },
   company = { COMPANY_TYPE = "TYPE_ID", OBSERVER_IDS = "OBSERVERS" },
}
local ENTITY_TYPES = { [1] = "lead", [2] = "deal", [3] = "contact", [4] = "company" }
_M.ENTITY_TYPES = ENTITY_TYPES
-- The legacy column types as the factories type the same fields (Lead.php … getFieldsSettings:
-- OPENED, HAS_PHONE, HAS_EMAIL are Field::TYPE_BOOLEAN).
local FACTORY_TYPES = { char = "boolean" }
-- Their crm_status fields' CRM_STATUS_TYPE (StatusTable::ENTITY_ID_*; a lead's stages are
-- STATUS, the deal's default category's DEAL_STAGE: getStagesEntityId).
local STATUS_TYPES = {
   lead = { STAGE_ID = "STATUS", SOURCE_ID = "SOURCE" }, deal = { TYPE_ID = "DEAL_TYPE", STAGE_ID = "DEAL_STAGE" },
   contact = { TYPE_ID = "CONTACT_TYPE", SOURCE_ID = "SOURCE" },
   company = { TYPE_ID = "COMPANY_TYPE", INDUSTRY = "INDUSTRY" },
}

-- crm/lib/Service/Converter.php isSpecialDecodeWayFromUpperToCamel: a user field whose name is
-- not all letters and not UF_CRM_<n>_<digits or letters> is spelled the simplified way.
local function special_uf(name)
   if string_find(name, "^[A-Z_]+$") or string_find(name, "^UF_CRM_%d%d?%d?%d?_[%d_]+$") or
      string_find(name, "^UF_CRM_%d%d?%d?%d?_[A-Z_]+$") then
      return false
   end
   return string_find(string_upper(name), "^UF_") ~= nil
end

-- Converter.php convertFieldNameFromUpperCaseToCamelCase: "UF_CRM_1_1639" -> "ufCrm1_1639"
-- (an underscore between digits kept), "UF_CRM_1720019876534" -> "ufCrm_1720019876534",
-- anything else StringHelper::snake2camel + lcfirst ("STAGE_ID" -> "stageId"); the legacy
-- column names are printed under their common names (DATE_CREATE -> createdTime).
local function camel(name)
   if special_uf(name) then
      if string_find(name, "^[uU][fF]_[cC][rR][mM]_") then return "ufCrm_" .. string_sub(name, 8) end
      if string_find(name, "^[uU][fF]_[cC][rR][mM]") then return "ufCrm" .. string_sub(name, 7) end
      return "uf" .. string_sub(name, 4)
   end
   local s = string_lower(ITEM_NAMES[name] or name)
   s = string_gsub(s, "(%d)_(%d)", "%1~~~%2")
   s = string_gsub(s, "(%d)_(%d)", "%1~~~%2")
   s = string_gsub(s, "_+(%w)", function(c) return string_upper(c) end)
   s = string_gsub(s, "_", "")
   return (string_gsub(s, "~~~", "_"))
end
_M.camel = camel

-- main/lib/engine/response/converter.php TO_UPPER | TO_SNAKE_DIGIT, as crm/lib/Service/
-- Converter.php convertFieldNameFromCamelCaseToUpperCase applies it to a name its cache does not
-- know: "stageId" -> "STAGE_ID", ">id" -> ">ID", but "ID" -> "I_D" and ">ID" -> ">_ID".
local function snake_digit_upper(s)
   s = string_gsub(s, "(%d+)(%a)", "%1_%2")
   s = string_gsub(s, "(%a)(%d)", "%1_%2")
   s = string_gsub(s, "([^_])(%u)", "%1_%2")
   return string_upper(s)
end

-- Converter.php convertFieldNameFromCamelCaseToUpperCase after Item::getFieldsInfo's names were
-- cached (item.php getFactory, preprocessUpperFieldNames): a common upper name stays, its camel
-- case is looked up, a user field in camel case ("ufCrm5_1") is spelled UF_…, anything else
-- goes through the converter.
local function to_upper(names, key)
   if names.common[key] then return key end
   if names.camel[key] then return names.camel[key] end
   if string_find(key, "^[uU][fF]") and not string_find(key, "^[%a_]+$") and
      not string_find(key, "^ufCrm%d+_[%d_]+$") and not string_find(key, "^ufCrm%d+[%a_]+$") then
      if string_find(key, "^[uU][fF][cC][rR][mM]_") then return "UF_CRM_" .. string_sub(key, 7) end
      if string_find(key, "^[uU][fF][cC][rR][mM]") then return "UF_CRM" .. string_sub(key, 6) end
      return "UF_" .. string_sub(key, 3)
   end
   return snake_digit_upper(key)
end

-- crm/lib/controller/validator/filter.php: the prefixes a filter key may carry, and those that
-- allow an array value.
local FILTER_PREFIXES = { "", "=", "%", ">", "<", "@", "!", "!@", "!=", "!%", "><", ">=", "<=", "=%", "%=",
                          "!><", "!=%", "!%=" }
local ARRAY_PREFIXES = { ["@"] = true, ["!@"] = true, ["!="] = true, ["="] = true, [""] = true }
local IS_PREFIX = {}
for _, p in ipairs(FILTER_PREFIXES) do IS_PREFIX[p] = true end

local function invalid(desc)
   return nil, { status = 400, error = "INVALID_ARG_VALUE", error_description = desc }
end

local function is_numeric_key(k)
   return type(k) == "number" or string_find(k, "^%s*[+-]?%d+%.?%d*$") ~= nil
end

-- The prefix and field of a converted filter key when the field is allowed.
local function split_filter_key(key, allowed)
   if key == "logic" or key == "LOGIC" then return "", key end
   for _, p in ipairs(FILTER_PREFIXES) do
      local field = string_sub(key, #p + 1)
      if string_sub(key, 1, #p) == p and (allowed[field] or string_sub(field, 1, 3) == "UF_") then
         return p, field
      end
   end
   return nil
end

-- Filter::doValidate on the converted filter: nested arrays first, then an unknown key ("Invalid
-- filter: field '…' is not allowed in filter"), then a value of a type the prefix does not take;
-- the first error is the answer (rest/lib/engine/restmanager.php createExceptionFromErrors: 400).
local function validate_filter(filter, allowed)
   for k, v in pairs(filter) do
      if type(v) == "table" then
         local ok, err = validate_filter(v, allowed)
         if not ok then return nil, err end
      end
      local key = type(k) == "number" and string_format("%d", k - 1) or k
      if not split_filter_key(key, allowed) and not is_numeric_key(key) then
         return invalid("Invalid filter: field '" .. key .. "' is not allowed in filter")
      end
      local prefix = string_match(key, "^([=%%><@!]*)[%w_]+$")
      if prefix and not IS_PREFIX[prefix] then prefix = nil end
      if type(v) == "table" and not (prefix and ARRAY_PREFIXES[prefix]) then
         return invalid("Invalid filter: field '" .. key .. "' has invalid value")
      end
   end
   return true
end

-- Order::validate: each converted key an allowed field, each direction ASC or DESC after
-- upper-casing (convertValuesToUpper).
local function validate_order(order, allowed)
   for k, v in pairs(order) do
      local dir = type(v) == "string" and string_upper(v) or v
      if not allowed[k] and string_sub(k, 1, 3) ~= "UF_" then
         return invalid("Invalid order: field '" .. tostring(k) .. "' is not allowed in order")
      end
      if dir ~= "ASC" and dir ~= "DESC" then
         return invalid("Invalid order: allowed sort directions are ASC, DESC. But got '" ..
            (to_text(v) or "") .. "' for field '" .. tostring(k) .. "'")
      end
   end
   return true
end

-- The converter's names of a field list: common upper names and their camel case.
local function converter_names(fields)
   local common, camel_of = {}, {}
   for _, f in ipairs(fields) do
      common[f.upper] = true
      camel_of[camel(f.upper)] = f.upper
   end
   return { common = common, camel = camel_of }
end

-- A legacy entity as its factory sees it: common upper name -> column, column -> common name,
-- every name a filter or order may use (listAction's $allowedFields: the factory's field names
-- and the data class's columns), and the fields (multi-fields left out: crm.item prints them
-- under fm).
local function legacy_entity(kind, n, store)
   local def = store.def
   if store.item_entity then return store.item_entity end
   local renames = ENTITY_ITEM_NAMES[kind] or {}
   local column_of, allowed, fields, by_upper = {}, {}, {}, {}
   for _, f in ipairs(def.fields) do
      local spec = def.by_name[f[1]]
      local column = spec.name
      local common = renames[column] or ITEM_NAMES[column] or column
      column_of[common] = column
      allowed[common], allowed[column] = true, true
      column_of[column] = column_of[column] or column
      if not spec.multiple then
         local field = { upper = common, column = column, type = FACTORY_TYPES[spec.type] or spec.type,
                         read_only = spec.read_only, required = column == "OPENED", multiple = false,
                         status_type = STATUS_TYPES[kind][common] or spec.status_type, title = spec.title,
                         immutable = spec.immutable or IMMUTABLE[column] or false }
         fields[#fields + 1] = field
         by_upper[common] = field
      end
   end
   store.item_entity = {
      id = n, kind = kind, store = store, fields = fields, by_upper = by_upper, column_of = column_of,
      allowed = allowed, names = converter_names(fields), event = "ONCRM" .. string_upper(kind),
      defaults = def.defaults, multi_fields = def.by_name.PHONE ~= nil,
   }
   return store.item_entity
end

-- A smart process's items as its factory sees them (crm/lib/Service/Factory/Dynamic.php).
local function smart_entity(t, store)
   local def = store.def
   if store.item_entity then return store.item_entity end
   local column_of, allowed, fields, by_upper = {}, {}, {}, {}
   for _, name in ipairs(def.standard) do
      local spec = def.by_name[name]
      local field = { upper = name, column = name, type = spec.type, read_only = spec.read_only,
                      required = spec.required, multiple = false, status_type = spec.status_type }
      fields[#fields + 1] = field
      by_upper[name], column_of[name], allowed[name] = field, name, true
   end
   store.item_entity = {
      id = t.ENTITY_TYPE_ID, type = t, store = store, fields = fields, by_upper = by_upper,
      column_of = column_of, allowed = allowed, names = converter_names(fields), event = "ONCRMDYNAMICITEM",
      extra = { ENTITY_TYPE_ID = t.ENTITY_TYPE_ID }, stages = smart.stages(t),
   }
   return store.item_entity
end

-- crm_owner_type.php isUseFactoryBasedApproach: the lead, deal, contact, company, quote, the
-- smart invoice and documents, and every id a smart process may have.
local function factory_based(n)
   if n == 1 or n == 2 or n == 3 or n == 4 or n == 7 or n == 31 or n == 36 or n == 39 then return true end
   if n >= 1030 then return n % 2 == 0 end
   return n >= 128 and n < 192
end

-- item.php getFactory: the entity of entityTypeId n | nil, err. A type that does not use the
-- factory: ENTITY_TYPE_NOT_SUPPORTED (errorcode.php getEntityTypeNotSupportedError; its
-- #ENTITY# is CCrmOwnerType::GetDescription, '' for an unknown id); no factory: NOT_FOUND
-- (CRM_TYPE_TYPE_NOT_FOUND). The quote and the smart invoice/documents are not modelled.
local function entity_of(portal, n)
   local kind = ENTITY_TYPES[n]
   if kind then return legacy_entity(kind, n, portal.stores[kind]) end
   local t = smart.type_of(n)
   if t then return smart_entity(t, portal.stores[smart.store_kind(n)]) end
   if factory_based(n) then return fail("Smart process not found", "NOT_FOUND") end
   return fail("Entity type  is not supported", "ENTITY_TYPE_NOT_SUPPORTED")
end

-- PHP's string interpolation of a request value ("{$value}" in the binder's message).
local function php_text(v)
   if type(v) == "table" then return "Array" end
   if v == true then return "1" end
   if v == false or v == nil or v == null then return "" end
   return to_text(v) or ""
end

-- PHP's is_numeric of a request value.
local function is_numeric(v)
   if type(v) == "number" then return true end
   if type(v) ~= "string" then return false end
   return tonumber(string_match(v, "^%s*(.-)%s*$")) ~= nil and not string_find(v, "^%s*0[xX]") and
      not string_find(v, "[iInN]")
end

-- main/lib/engine/autowire/binder.php: the action's parameters bound in their declared order;
-- a missing one without a default: "Could not find value for parameter {name}"; a value the
-- type refuses (TypeDeclarationChecker: int wants is_numeric, array an array, null only where
-- the default is null): "Invalid value {…} to match with parameter {name}. Should be value of
-- type …"; both a BinderArgumentException (an ArgumentException: code 100), answered 400 by
-- rest/lib/engine/restmanager.php. specs: { name, "int" | "array", optional }. Returns the
-- bound values by name | nil, err.
local function bind(params, specs)
   local out = {}
   for _, s in ipairs(specs) do
      local name, kind, optional = s[1], s[2], s[3]
      local v = params[name]
      if v == nil then
         if not optional then
            return fail("Could not find value for parameter {" .. name .. "}", "100")
         end
      elseif v == null and optional then
         v = nil
      else
         local ok
         if kind == "int" then ok = is_numeric(v) else ok = type(v) == "table" end
         if not ok then
            return fail("Invalid value {" .. php_text(v) .. "} to match with parameter {" .. name ..
               "}. Should be value of type " .. kind .. ".", "100")
         end
         if kind == "int" then v = php_int(tonumber(v) or v) end
      end
      out[name] = v
   end
   return out
end

-- A date field's value as crm.item prints it: CRestUtil::ConvertDate (rest/classes/general/
-- rest_util.php) is date('c', MakeTimeStamp(date) + date("Z")), the day's midnight shifted by
-- the zone's offset: "2026-12-07T03:00:00+03:00" in +03:00.
local function print_date(v, tz)
   local day = string_match(v, "^(%d%d%d%d%-%d%d%-%d%d)") or v
   local t = dates.parse(day, tz)
   if not t then return v end
   return dates.format(t + (dates.offset_seconds(tz) or 0), tz)
end

-- A datetime kept as the portal printed it, printed again in the portal's zone.
local function print_datetime(v, tz)
   local t = dates.parse(v, tz)
   if not t then return v end
   return dates.format(t, tz)
end

local NUMBERS = { integer = true, double = true, user = true, crm_company = true, crm_contact = true,
                  crm_lead = true, crm_category = true, crm_quote = true, crm_deal = true }

-- The multi-field types (crm/classes/general/crm_field_multi.php) the legacy rows keep.
local MULTI = { PHONE = true, EMAIL = true, WEB = true, IM = true, LINK = true }
local MULTI_ORDER = { "PHONE", "EMAIL", "WEB", "IM", "LINK" }

-- item.php getFm: a lead's, contact's or company's multi-fields, by id.
local function fm_view(row)
   local out = {}
   for _, name in ipairs(MULTI_ORDER) do
      for _, v in ipairs(type(row[name]) == "table" and row[name] or {}) do
         out[#out + 1] = { id = tonumber(v.ID) or v.ID, valueType = v.VALUE_TYPE, value = v.VALUE,
                           typeId = v.TYPE_ID }
      end
   end
   table_sort(out, function(a, b) return (tonumber(a.id) or 0) < (tonumber(b.id) or 0) end)
   return out
end

-- A row as crm.item.* prints it (crm/lib/Service/Converter/Item.php toJson): every field in
-- camel case, numbers where the ORM holds numbers, booleans Y/N, dates as ConvertDate(Time),
-- user fields (under their UF_ names with useOriginalUfNames=Y), entityTypeId, and fm where
-- the factory has multi-fields; with select, only the keys selected (getJsonForItems).
local function item_view(portal, entity, row, selected, original)
   local out, tz = {}, portal.timezone
   for _, f in ipairs(entity.fields) do
      local v = row[f.column]
      if v == nil then v = null
      elseif NUMBERS[f.type] then v = tonumber(v) or v
      elseif f.type == "datetime" then v = print_datetime(v, tz)
      elseif f.type == "date" then v = print_date(v, tz)
      end
      out[camel(f.upper)] = v
   end
   if entity.kind then
      for _, uf in ipairs(userfields.of(portal, entity.kind)) do
         local name = uf.FIELD_NAME
         local v = userfields.printed(uf, row[name], tz)
         if uf.USER_TYPE_ID == "integer" or uf.USER_TYPE_ID == "double" then
            if type(v) == "table" then
               for i, x in ipairs(v) do v[i] = tonumber(x) or x end
            elseif type(v) == "string" then
               v = tonumber(v) or v
            end
         end
         out[original and name or camel(name)] = v
      end
   end
   out.entityTypeId = entity.id
   if entity.multi_fields then out.fm = fm_view(row) end
   if selected then
      for k in pairs(out) do
         if not selected[k] then out[k] = nil end
      end
   end
   return out
end

-- A field's value to store (item.php processFields): an empty value is null; a date or
-- datetime through unConvertDate(Time) (a value that does not read is not set: false); a
-- boolean Y/N (prepareBooleanFieldValue); numbers as the columns keep them. Returns the text,
-- or nil, "skip" to leave the field as it was.
local function stored(f, v, tz)
   if v == nil or v == null or v == "" or v == false and f.type ~= "boolean" then return nil end
   if type(v) == "table" then return nil, "skip" end
   if f.type == "boolean" then
      return (v == true or v == "true" or v == "y" or v == "Y") and "Y" or "N"
   end
   if f.type == "date" or f.type == "datetime" then
      local t = dates.parse(to_text(v), tz)
      if not t then return nil, "skip" end
      if f.type == "date" then return dates.format_date(t, tz) end
      return dates.format(t, tz)
   end
   if f.type == "double" then
      local n = tonumber(to_text(v))
      return n and string_format("%.2f", n) or to_text(v)
   end
   if NUMBERS[f.type] then return string_format("%d", php_int(v)) end
   return to_text(v)
end

-- item.php getFmValues, Assembler::updateCollectionByArray: fields.fm, a list or map of
-- { typeId, value, valueType } (or one such entry itself): under the key of an existing
-- multi-field's id it changes it (an empty value removes it), under any other key it is added.
-- HAS_PHONE and HAS_EMAIL follow.
local function apply_fm(store, row, fm)
   local entries = {}
   if fm.typeId ~= nil and fm.value ~= nil then entries[1] = { "new", fm } end
   for k, v in pairs(fm) do
      if type(v) == "table" and v.typeId ~= nil and v.value ~= nil then
         entries[#entries + 1] = { type(k) == "number" and string_format("%d", k - 1) or k, v }
      end
   end
   for _, e in ipairs(entries) do
      local key, v = e[1], e[2]
      local type_id = to_text(v.typeId)
      local list = MULTI[type_id] and (row[type_id] or {})
      if list then
         local found
         for i, have in ipairs(list) do
            if is_numeric(key) and tonumber(have.ID) == tonumber(key) then found = i end
         end
         local value = to_text(v.value)
         if value == nil or value == "" then
            if found then table_remove(list, found) end
         elseif found then
            list[found].VALUE = value
            if v.valueType ~= nil then list[found].VALUE_TYPE = to_text(v.valueType) or "" end
         else
            store.multi_id = store.multi_id + 1
            list[#list + 1] = { ID = tostring(store.multi_id), TYPE_ID = type_id, VALUE = value,
                                VALUE_TYPE = to_text(v.valueType) or "WORK" }
         end
         row[type_id] = list
         if type_id == "PHONE" or type_id == "EMAIL" then row["HAS_" .. type_id] = #list > 0 and "Y" or "N" end
      end
   end
end

-- item.php convertFieldNamesToUpper: a key through the converter, or kept when it is a user
-- field's UF_ name and useOriginalUfNames is Y (after a filter's prefix, CSQLWhere::MakeOperation).
local function upper_key(entity, key, original, prefixed)
   if original then
      local field = prefixed and string_match(key, "^[=%%><@!]*(.*)$") or key
      if string_sub(field, 1, 3) == "UF_" then return key end
   end
   return to_upper(entity.names, key)
end

-- Sets the fields of a request (keys converted to upper case) on row; read-only fields, on an
-- update immutable ones (CCrmFieldInfoAttr::Immutable: a company's isMyCompany), and names the
-- factory does not have are passed over; defined user fields as userfields.value; fm as apply_fm.
local function apply_fields(portal, entity, row, fields, original, updating)
   if entity.multi_fields and type(fields.fm) == "table" then apply_fm(entity.store, row, fields.fm) end
   for k, v in pairs(fields) do
      if type(k) == "string" and not (k == "fm" and entity.multi_fields) then
         local upper = upper_key(entity, k, original)
         local f = entity.by_upper[upper]
         if f and not f.read_only and not (updating and f.immutable) then
            local value, skip = stored(f, v, portal.timezone)
            if not skip then row[f.column] = value end
         elseif not f and entity.kind and string_sub(upper, 1, 3) == "UF_" then
            -- only a defined user field is written (b24.emulator.userfields)
            local uf = userfields.find(portal, entity.kind, upper)
            if uf then
               local value = userfields.value(uf, v, portal.timezone)
               if value ~= nil then row[upper] = value end
            end
         end
      end
   end
end

-- A new legacy row as crm.lua's add makes one (the defaults of the entity, the dates now).
local function legacy_row(portal, entity, id, now)
   local user = tostring(portal.user_id)
   local row = { ID = tostring(id), DATE_CREATE = now, DATE_MODIFY = now, ASSIGNED_BY_ID = user,
                 CREATED_BY_ID = user, MODIFY_BY_ID = user }
   for k, v in pairs(entity.defaults or {}) do row[k] = v end
   if entity.store.def.by_name.HAS_PHONE then row.HAS_PHONE, row.HAS_EMAIL = "N", "N" end
   return row
end

-- The item of entityTypeId and id: entity, row | nil, err (CRM_TYPE_ITEM_NOT_FOUND).
local function find(portal, n, id)
   local entity, err = entity_of(portal, n)
   if not entity then return nil, err end
   local row = entity.store.rows[id]
   if not row then return fail("Element not found", "NOT_FOUND") end
   return entity, row
end

-- crm.item.add (item.php addAction): fields converted to upper case and set; the operation's
-- defaults; the entity's add event (Lead.php … configureAddOperation: OnAfterCrmLeadAdd, the
-- REST ONCRMLEADADD; Dynamic.php: onCrmDynamicItemAdd with ENTITY_TYPE_ID).
local function item_add(portal, params)
   local p, err = bind(params, { { "entityTypeId", "int" }, { "fields", "array" } })
   if not p then return nil, err end
   local entity
   entity, err = entity_of(portal, p.entityTypeId)
   if not entity then return nil, err end
   local store = entity.store
   local id, now = store:take_id(), portal:date()
   local row = entity.type and smart.new_row(portal, entity, id, now) or legacy_row(portal, entity, id, now)
   local original = params.useOriginalUfNames == "Y"
   apply_fields(portal, entity, row, p.fields, original)
   if entity.type then smart.after(portal, entity, row, nil, now) end
   store:put(id, row)
   portal:changed(entity.event .. "ADD", id, entity.extra)
   return { item = item_view(portal, entity, row, nil, original) }, { rows = 1 }
end

-- crm.item.update (item.php updateAction): NOT_FOUND before the fields; the dates and users of
-- the change; the entity's update event.
local function item_update(portal, params)
   local p, err = bind(params, { { "entityTypeId", "int" }, { "id", "int" }, { "fields", "array" } })
   if not p then return nil, err end
   local entity, row = find(portal, p.entityTypeId, p.id)
   if not entity then return nil, row end
   local before, now = {}, portal:date()
   for k, v in pairs(row) do before[k] = v end
   local original = params.useOriginalUfNames == "Y"
   apply_fields(portal, entity, row, p.fields, original, true)
   if entity.type then
      smart.after(portal, entity, row, before, now)
      row.UPDATED_TIME, row.UPDATED_BY = now, tostring(portal.user_id)
   else
      row.DATE_MODIFY, row.MODIFY_BY_ID = now, tostring(portal.user_id)
   end
   portal:changed(entity.event .. "UPDATE", p.id, entity.extra)
   return { item = item_view(portal, entity, row, nil, original) }, { rows = 1 }
end

-- crm.item.get (item.php getAction: id is bound before entityTypeId).
local function item_get(portal, params)
   local p, err = bind(params, { { "id", "int" }, { "entityTypeId", "int" } })
   if not p then return nil, err end
   local entity, row = find(portal, p.entityTypeId, p.id)
   if not entity then return nil, row end
   return { item = item_view(portal, entity, row, nil, params.useOriginalUfNames == "Y") }, { rows = 1 }
end

-- crm.item.delete (item.php deleteAction): [] and the entity's delete event (Lead.php
-- getDeleteOperation: OnAfterCrmLeadDelete; Dynamic.php: onCrmDynamicItemDelete).
local function item_delete(portal, params)
   local p, err = bind(params, { { "entityTypeId", "int" }, { "id", "int" } })
   if not p then return nil, err end
   local entity, row = find(portal, p.entityTypeId, p.id)
   if not entity then return nil, row end
   entity.store:remove(p.id)
   portal:changed(entity.event .. "DELETE", p.id, entity.extra)
   return {}, { rows = 1 }
end

-- crm.item.fields (item.php fieldsAction, controller/base.php prepareFieldsInfo,
-- crm/classes/general/restservice.php CCrmRestHelper::prepareFieldInfos): each field under its
-- camel case name with type, isRequired, isReadOnly, isImmutable, isMultiple, isDynamic, title
-- (the caption: a legacy field's title where crm.lua's catalog has one, else the upper name, as
-- prepareFieldInfos falls back to it), statusType for crm_status, upperName.
local function item_fields(portal, params)
   local p, err = bind(params, { { "entityTypeId", "int" } })
   if not p then return nil, err end
   local entity
   entity, err = entity_of(portal, p.entityTypeId)
   if not entity then return nil, err end
   local out = {}
   for _, f in ipairs(entity.fields) do
      local info = { type = f.type, isRequired = f.required or false, isReadOnly = f.read_only or false,
                     isImmutable = f.immutable or false, isMultiple = f.multiple or false, isDynamic = false,
                     title = f.title or f.upper, upperName = f.upper }
      if f.type == "crm_status" then info.statusType = f.status_type or "" end
      out[camel(f.upper)] = info
   end
   -- $factory->getUserFieldsInfo()
   if entity.kind then
      for _, uf in ipairs(userfields.of(portal, entity.kind)) do
         local info = userfields.describe(uf)
         info.upperName = uf.FIELD_NAME
         out[params.useOriginalUfNames == "Y" and uf.FIELD_NAME or camel(uf.FIELD_NAME)] = info
      end
   end
   return { fields = out }
end

-- The select of crm.item.list as getJsonForItems applies it: nil for every field ('*' or
-- none), else the camel case names of the converted names.
local function selection(entity, select, original)
   if type(select) ~= "table" or next(select) == nil then return nil end
   local selected = {}
   for _, key in pairs(select) do
      key = to_text(key)
      if key == "*" then return nil end
      if key then
         local upper = upper_key(entity, key, original)
         selected[original and upper or camel(upper)] = true
      end
   end
   return selected
end

-- crm.item.list (crm/lib/controller/item.php listAction): entityTypeId picks the entity; filter
-- and order keys are converted to upper case and must name allowed fields, the filter checked
-- before the order; dates compare as dates in the portal's zone; start=-1 counts nothing, so
-- the answer has neither total nor next (rest/lib/engine/restmanager.php getNavigationData).
local function item_list(portal, params)
   local p, err = bind(params, { { "entityTypeId", "int" }, { "select", "array", true },
                                 { "order", "array", true }, { "filter", "array", true } })
   if not p then return nil, err end
   local entity
   entity, err = entity_of(portal, p.entityTypeId)
   if not entity then return nil, err end
   local original = params.useOriginalUfNames == "Y"
   local function convert(t)
      local out = {}
      for k, v in pairs(t) do
         if type(k) == "string" then k = upper_key(entity, k, original, true) end
         out[k] = type(v) == "table" and convert(v) or v
      end
      return out
   end
   local filter, order = convert(p.filter or {}), {}
   local ok
   ok, err = validate_filter(filter, entity.allowed)
   if not ok then return nil, err end
   if p.order then
      for k, v in pairs(p.order) do
         if type(k) == "string" then order[upper_key(entity, k, original)] = v end
      end
      ok, err = validate_order(order, entity.allowed)
      if not ok then return nil, err end
   end
   -- to the entity's columns (the factory's prepareFilter and getFieldsMap)
   local columns = {}
   for k, v in pairs(filter) do
      local prefix, field = split_filter_key(type(k) == "string" and k or "", entity.allowed)
      if prefix and field ~= "logic" and field ~= "LOGIC" then
         columns[prefix .. (entity.column_of[field] or field)] = v
      end
   end
   -- the keys in the order sent (b24.emulator.order: PHP arrays keep it; the ORM orders by them so)
   local sorted, keys = {}, {}
   for k, v in pairs(order) do sorted[entity.column_of[k] or k] = v end
   for i, k in ipairs(order_of.keys(portal, { "order" }, params) or {}) do
      local upper = upper_key(entity, k, original)
      keys[i] = entity.column_of[upper] or upper
   end
   local rows, meta = entity.store:query({ filter = columns, order = sorted, start = params.start },
      { name = function(key) return key end, paging = "orm", timezone = portal.timezone, order_keys = keys })
   if php_int(params.start) == -1 then meta.total, meta.next = nil, nil end
   local selected = selection(entity, p.select, original)
   local items = {}
   for i, row in ipairs(rows) do items[i] = item_view(portal, entity, row, selected, original) end
   return { items = items }, meta
end

-- Registers crm.item.* into methods, and crm.type.list/get and the smart processes' stores
-- (b24.emulator.smart, handed the converter, the validators and the binder).
function _M.register(portal, methods)
   smart.register(portal, methods, { camel = camel, to_upper = to_upper, validate_filter = validate_filter,
                                     validate_order = validate_order, bind = bind, print_datetime = print_datetime })
   methods["crm.item.add"] = item_add
   methods["crm.item.update"] = item_update
   methods["crm.item.get"] = item_get
   methods["crm.item.delete"] = item_delete
   methods["crm.item.fields"] = item_fields
   methods["crm.item.list"] = item_list
end

return _M
