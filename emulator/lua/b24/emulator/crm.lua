-- b24.emulator.crm: the legacy CRM entities of the emulated portal (crm.lead.*, crm.deal.*,
-- crm.contact.*, crm.company.*) and crm.item.list: their fields, how values are stored (rows of
-- strings, PHONE/EMAIL multi-fields) and printed, and select. Rows and the list semantics of
-- protocol.md §4 (filter, order, pages) are b24.emulator.store's.
local cjson = require("cjson.safe")
local storage = require "b24.emulator.store"

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
local table_remove = table.remove
local math_floor = math.floor
local null = cjson.null
local to_text = storage.to_text

local _M = {}

-- Field lists: name, type, read-only, multiple. Multi-fields (PHONE, EMAIL) are returned by
-- list only when named in select.
local COMMON_TAIL = {
   { "ASSIGNED_BY_ID", "user" }, { "CREATED_BY_ID", "user", true }, { "MODIFY_BY_ID", "user", true },
   { "DATE_CREATE", "datetime", true }, { "DATE_MODIFY", "datetime", true },
   { "OPENED", "char" }, { "COMMENTS", "string" },
}
local CONTACTS = {
   { "HAS_PHONE", "char", true }, { "HAS_EMAIL", "char", true },
   { "PHONE", "crm_multifield", false, true }, { "EMAIL", "crm_multifield", false, true },
}

local function fields_of(list, ...)
   local out = {}
   for _, part in ipairs({ list, ... }) do
      for _, f in ipairs(part) do out[#out + 1] = f end
   end
   return out
end

local ENTITIES = {
   lead = {
      fields = fields_of({ { "ID", "integer", true }, { "TITLE", "string" }, { "NAME", "string" },
         { "SECOND_NAME", "string" }, { "LAST_NAME", "string" }, { "STATUS_ID", "crm_status" },
         { "SOURCE_ID", "crm_status" }, { "OPPORTUNITY", "double" }, { "CURRENCY_ID", "crm_currency" },
         { "COMPANY_ID", "crm_company" }, { "CONTACT_ID", "crm_contact" } }, COMMON_TAIL, CONTACTS),
      defaults = { STATUS_ID = "NEW", OPPORTUNITY = "0.00", CURRENCY_ID = "USD", OPENED = "Y" },
   },
   deal = {
      fields = fields_of({ { "ID", "integer", true }, { "TITLE", "string" }, { "TYPE_ID", "crm_status" },
         { "STAGE_ID", "crm_status" }, { "CATEGORY_ID", "crm_category" }, { "OPPORTUNITY", "double" },
         { "CURRENCY_ID", "crm_currency" }, { "COMPANY_ID", "crm_company" },
         { "CONTACT_ID", "crm_contact" }, { "LEAD_ID", "crm_lead" }, { "BEGINDATE", "date" },
         { "CLOSEDATE", "date" }, { "CLOSED", "char" } }, COMMON_TAIL),
      defaults = { STAGE_ID = "NEW", CATEGORY_ID = "0", OPPORTUNITY = "0.00", CURRENCY_ID = "USD",
                   OPENED = "Y", CLOSED = "N" },
   },
   contact = {
      fields = fields_of({ { "ID", "integer", true }, { "NAME", "string" }, { "SECOND_NAME", "string" },
         { "LAST_NAME", "string" }, { "POST", "string" }, { "TYPE_ID", "crm_status" },
         { "SOURCE_ID", "crm_status" }, { "COMPANY_ID", "crm_company" } }, COMMON_TAIL, CONTACTS),
      defaults = { OPENED = "Y" },
   },
   company = {
      fields = fields_of({ { "ID", "integer", true }, { "TITLE", "string" },
         { "COMPANY_TYPE", "crm_status" }, { "INDUSTRY", "crm_status" }, { "REVENUE", "double" },
         { "CURRENCY_ID", "crm_currency" } }, COMMON_TAIL, CONTACTS),
      defaults = { COMPANY_TYPE = "CUSTOMER", CURRENCY_ID = "USD", OPENED = "Y" },
   },
}

for _, def in pairs(ENTITIES) do
   def.by_name = {}
   def.standard = {}
   for _, f in ipairs(def.fields) do
      local spec = { name = f[1], type = f[2], read_only = f[3] or false, multiple = f[4] or false }
      def.by_name[spec.name] = spec
      if not spec.multiple then def.standard[#def.standard + 1] = spec.name end
   end
end

local function fail(desc, code, status)
   return nil, { status = status or 400, error = code or "", error_description = desc }
end

local function normalize(spec, v)
   local s = to_text(v)
   if s == nil then return nil end
   if spec.type == "double" then
      local n = tonumber(s)
      return n and string_format("%.2f", n) or s
   end
   if spec.type == "integer" or spec.type == "user" or spec.type:match("^crm_[a-z]+$") and
      spec.type ~= "crm_status" and spec.type ~= "crm_currency" and spec.type ~= "crm_multifield" then
      local n = tonumber(s)
      return n and string_format("%d", math_floor(n)) or s
   end
   return s
end

-- crm/classes/general/restservice.php CCrmRestHelper::resolveEntityID: (int) of ID, else of id
-- (isset: null counts as absent); checkEntityID then wants an integer > 0 (nil otherwise).
local function id_param(params)
   local v = params.ID
   if v == nil or v == null then v = params.id end
   if v == nil or v == null then return nil end
   local n
   if type(v) == "table" then n = next(v) ~= nil and 1 or 0 else n = storage.php_int(v) end
   if n < 1 then return nil end
   return n
end

-- CCrmRestHelper::resolveArrayParam (restservice.php): the parameter under its name as given,
-- in upper case, lower case, capitalized or Hungarian ("filter", "FILTER", "Filter",
-- "arFilter"); the first that is set (not null) wins. nil when none is.
local function array_param(params, name)
   local lower = string_lower(name)
   local capitalized = string_upper(string_sub(lower, 1, 1)) .. string_sub(lower, 2)
   for _, key in ipairs({ name, string_upper(name), lower, capitalized, "ar" .. capitalized }) do
      local v = params[key]
      if v ~= nil and v ~= null then return v end
   end
   return nil
end

-- Applies PHONE/EMAIL items: with ID they update (or DELETE=Y remove) an item, without they add.
local function apply_multi(store, row, name, items)
   if type(items) ~= "table" then return end
   local list = row[name] or {}
   for _, item in pairs(items) do
      if type(item) == "table" then
         local id = to_text(item.ID)
         local found
         for i, have in ipairs(list) do
            if id and have.ID == id then found = i end
         end
         if found and to_text(item.DELETE) == "Y" then
            table_remove(list, found)
         elseif found then
            if item.VALUE ~= nil then list[found].VALUE = to_text(item.VALUE) or "" end
            if item.VALUE_TYPE ~= nil then list[found].VALUE_TYPE = to_text(item.VALUE_TYPE) or "" end
         elseif not id and to_text(item.VALUE) and to_text(item.VALUE) ~= "" then
            store.multi_id = store.multi_id + 1
            list[#list + 1] = { ID = tostring(store.multi_id), TYPE_ID = name,
                                VALUE = to_text(item.VALUE), VALUE_TYPE = to_text(item.VALUE_TYPE) or "WORK" }
         end
      end
   end
   row[name] = list
   row["HAS_" .. name] = #list > 0 and "Y" or "N"
end

local function apply_fields(store, def, row, fields)
   for k, v in pairs(fields) do
      if type(k) == "string" then
         local name = string_upper(k)
         local spec = def.by_name[name]
         if spec and spec.multiple then
            apply_multi(store, row, name, v)
         elseif spec and not spec.read_only then
            row[name] = normalize(spec, v)
         elseif not spec and string_sub(name, 1, 3) == "UF_" then
            row[name] = to_text(v)
         end
      end
   end
end

local function copy_multi(list)
   local out = {}
   for i, item in ipairs(list or {}) do
      out[i] = { ID = item.ID, TYPE_ID = item.TYPE_ID, VALUE = item.VALUE, VALUE_TYPE = item.VALUE_TYPE }
   end
   return out
end

local function view(def, row, selected)
   local out = {}
   for _, name in ipairs(def.standard) do
      if not selected or selected[name] then
         local v = row[name]
         if v == nil then v = null end
         out[name] = v
      end
   end
   for name, v in pairs(row) do
      if string_sub(name, 1, 3) == "UF_" and (not selected or selected[name] or selected["UF_*"]) then
         out[name] = v
      end
   end
   for _, name in ipairs({ "PHONE", "EMAIL" }) do
      if def.by_name[name] and (not selected and row[name] and #row[name] > 0 or selected and selected[name]) then
         out[name] = copy_multi(row[name])
      end
   end
   return out
end

local function parse_select(select)
   if type(select) ~= "table" or next(select) == nil then return nil end
   local set, star = {}, false
   for _, name in pairs(select) do
      name = to_text(name)
      if name then
         name = string_upper(name)
         if name == "*" then star = true else set[name] = true end
      end
   end
   return set, star
end

local function add(portal, store, fields)
   local def = store.def
   local id = store:take_id()
   local now = portal:date()
   local row = { ID = tostring(id), DATE_CREATE = now, DATE_MODIFY = now,
                 ASSIGNED_BY_ID = tostring(portal.user_id), CREATED_BY_ID = tostring(portal.user_id),
                 MODIFY_BY_ID = tostring(portal.user_id) }
   for k, v in pairs(def.defaults) do row[k] = v end
   if def.by_name.HAS_PHONE then row.HAS_PHONE, row.HAS_EMAIL = "N", "N" end
   apply_fields(store, def, row, fields)
   store:put(id, row)
   return id
end

-- CCrmRestProxyBase::processMethodRequest LIST (restservice.php): order and filter default to
-- [] and must be arrays (order checked first); select is cast with (array); paging is the
-- legacy CDBResult's (store.query "legacy").
local function list(store, params)
   local def = store.def
   local order = array_param(params, "order") or {}
   if type(order) ~= "table" then return fail("Parameter 'order' must be array.") end
   local filter = array_param(params, "filter") or {}
   if type(filter) ~= "table" then return fail("Parameter 'filter' must be array.") end
   local select = array_param(params, "select")
   if select ~= nil and type(select) ~= "table" then select = { select } end
   local rows, meta = store:query({ filter = filter, order = order, start = params.start }, { paging = "legacy" })
   local selected, star = parse_select(select)
   if selected and star then
      for _, name in ipairs(def.standard) do selected[name] = true end
   end
   local page = {}
   for i, row in ipairs(rows) do page[i] = view(def, row, selected or false) end
   if not selected then
      for _, r in ipairs(page) do r.PHONE, r.EMAIL = nil, nil end
   end
   return page, meta
end

-- crm.item.* names: the factory's common field names (crm/lib/Service/Factory/*.php
-- getFieldsMap maps them to the entity's columns), printed in lower camel case.
local ITEM_NAMES = {
   CREATED_BY_ID = "CREATED_BY", MODIFY_BY_ID = "UPDATED_BY", DATE_CREATE = "CREATED_TIME",
   DATE_MODIFY = "UPDATED_TIME",
}
-- Lead.php: STAGE_ID is the lead's STATUS_ID; Company.php: TYPE_ID is COMPANY_TYPE.
local ENTITY_ITEM_NAMES = { lead = { STATUS_ID = "STAGE_ID" }, company = { COMPANY_TYPE = "TYPE_ID" } }
local ENTITY_TYPES = { [1] = "lead", [2] = "deal", [3] = "contact", [4] = "company" }
_M.ENTITY_TYPES = ENTITY_TYPES

local function camel(name)
   local s = string_lower(ITEM_NAMES[name] or name)
   return (s:gsub("_(%w)", function(c) return string_upper(c) end))
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

-- The entity's names for crm.item.*: common upper name -> column, column -> common name, and
-- every name a filter or order may use (listAction's $allowedFields: the factory's field names
-- and the data class's columns).
local function item_names(kind, def)
   if def.item then return def.item end
   local renames = ENTITY_ITEM_NAMES[kind] or {}
   local column_of, common_of, allowed = {}, {}, {}
   for _, f in ipairs(def.fields) do
      local column = f[1]
      local common = renames[column] or ITEM_NAMES[column] or column
      column_of[common], common_of[column] = column, common
      allowed[common], allowed[column] = true, true
      column_of[column] = column_of[column] or column
   end
   def.item = { column_of = column_of, common_of = common_of, allowed = allowed }
   return def.item
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

-- A legacy row as crm.item.* prints it: common names in camelCase, numbers for ids and amounts.
local function item_view(def, names, row, selected)
   local out = {}
   for _, f in ipairs(def.fields) do
      local spec = def.by_name[f[1]]
      local key = camel(names.common_of[spec.name])
      if not spec.multiple and (not selected or selected[key]) then
         local v = row[spec.name]
         if v == nil then v = null
         elseif spec.type == "double" or spec.type == "integer" or spec.type == "user" or
            (spec.type:match("^crm_") and spec.type ~= "crm_status" and spec.type ~= "crm_currency") then
            v = tonumber(v) or v
         end
         out[key] = v
      end
   end
   for name, v in pairs(row) do
      if string_sub(name, 1, 3) == "UF_" then
         local key = camel(name)
         if not selected or selected[key] then out[key] = v end
      end
   end
   return out
end

-- The converter's names of an entity: common upper names and their camel case.
local function converter_names(def, names)
   if def.converter then return def.converter end
   local common, camel_of = {}, {}
   for _, name in pairs(names.common_of) do
      common[name] = true
      camel_of[camel(name)] = name
   end
   def.converter = { common = common, camel = camel_of }
   return def.converter
end

-- crm.item.list (crm/lib/controller/item.php listAction): entityTypeId picks the entity; filter
-- and order keys are converted to upper case and must name allowed fields, the filter checked
-- before the order; the rows print the factory's names (a lead's status is stageId, a
-- company's type typeId).
local function item_list(portal, params)
   local kind = ENTITY_TYPES[tonumber(to_text(params.entityTypeId) or "") or -1]
   if not kind then
      return fail("Smart process not found", "NOT_FOUND", 400)
   end
   local store = portal.stores[kind]
   local names = item_names(kind, store.def)
   local conv = converter_names(store.def, names)
   local filter, order = {}, {}
   local function convert(t)
      local out = {}
      for k, v in pairs(t) do
         if type(k) == "string" then k = to_upper(conv, k) end
         out[k] = type(v) == "table" and convert(v) or v
      end
      return out
   end
   if type(params.filter) == "table" then filter = convert(params.filter) end
   local ok, err = validate_filter(filter, names.allowed)
   if not ok then return nil, err end
   if type(params.order) == "table" then
      for k, v in pairs(params.order) do
         if type(k) == "string" then order[to_upper(conv, k)] = v end
      end
      ok, err = validate_order(order, names.allowed)
      if not ok then return nil, err end
   end
   -- to the entity's columns (the factory's prepareFilter and getFieldsMap)
   local columns = {}
   for k, v in pairs(filter) do
      local prefix, field = split_filter_key(type(k) == "string" and k or "", names.allowed)
      if prefix and field ~= "logic" and field ~= "LOGIC" then
         columns[prefix .. (names.column_of[field] or field)] = v
      end
   end
   local sorted = {}
   for k, v in pairs(order) do sorted[names.column_of[k] or k] = v end
   local rows, meta = store:query({ filter = columns, order = sorted, start = params.start },
                                  { name = function(key) return key end, paging = "orm" })
   local selected
   if type(params.select) == "table" and next(params.select) ~= nil then
      selected = {}
      for _, key in pairs(params.select) do
         key = to_text(key)
         if key == "*" then selected = nil; break end
         if key then selected[key] = true end
      end
   end
   local items = {}
   for i, row in ipairs(rows) do items[i] = item_view(store.def, names, row, selected) end
   return { items = items }, meta
end

local function fields_description(def)
   local out = {}
   for _, f in ipairs(def.fields) do
      local spec = def.by_name[f[1]]
      out[spec.name] = { type = spec.type, isRequired = false, isReadOnly = spec.read_only,
                         isImmutable = false, isMultiple = spec.multiple, isDynamic = false,
                         title = spec.name }
   end
   return out
end

-- Registers crm.<kind>.add|get|update|delete|list|fields for each entity, and crm.item.list,
-- into methods. Changes call portal:changed(event name, data) (events and persistence).
function _M.register(portal, methods)
   for kind in pairs(ENTITIES) do
      local store = storage.new(kind, ENTITIES[kind])
      portal.stores[kind] = store
      local prefix = "crm." .. kind .. "."
      local event = "ONCRM" .. string_upper(kind)
      -- processMethodRequest (restservice.php): fields and params default to [] and must be
      -- arrays, checked before the ID (update) and before anything is looked up
      local function fields_and_params(params)
         local fields = array_param(params, "fields") or {}
         if type(fields) ~= "table" then return fail("Parameter 'fields' must be array.") end
         local method_params = array_param(params, "params") or {}
         if type(method_params) ~= "table" then return fail("Parameter 'params' must be array.") end
         return fields
      end
      methods[prefix .. "add"] = function(p, params)
         local fields, err = fields_and_params(params)
         if not fields then return nil, err end
         local id = add(p, store, fields)
         p:changed(event .. "ADD", id)
         return id, { rows = 1 }
      end
      methods[prefix .. "get"] = function(_, params)
         local id = id_param(params)
         if not id then return fail("ID is not defined or invalid.") end
         local row = store.rows[id]
         if not row then return fail("Not found") end
         return view(store.def, row, false), { rows = 1 }
      end
      methods[prefix .. "update"] = function(p, params)
         local fields, err = fields_and_params(params)
         if not fields then return nil, err end
         local id = id_param(params)
         if not id then return fail("ID is not defined or invalid.") end
         local row = store.rows[id]
         if not row then return fail("Not found") end
         apply_fields(store, store.def, row, fields)
         row.DATE_MODIFY = p:date()
         row.MODIFY_BY_ID = tostring(p.user_id)
         p:changed(event .. "UPDATE", id)
         return true, { rows = 1 }
      end
      methods[prefix .. "delete"] = function(p, params)
         local id = id_param(params)
         if not id then return fail("ID is not defined or invalid.") end
         if not store:remove(id) then return fail("Not found") end
         p:changed(event .. "DELETE", id)
         return true, { rows = 1 }
      end
      methods[prefix .. "list"] = function(_, params) return list(store, params) end
      methods[prefix .. "fields"] = function() return fields_description(store.def) end
   end
   methods["crm.item.list"] = item_list
end

_M.fail = fail

local STATUSES = { "NEW", "IN_PROCESS", "PROCESSED", "JUNK", "CONVERTED" }

-- Fills the lead store with n leads (every third has a phone, every fifth an e-mail).
function _M.seed_leads(portal, n)
   local store = portal.stores.lead
   for i = 1, n do
      local fields = { TITLE = "Lead #" .. i, NAME = "Name" .. i, LAST_NAME = "Last" .. i,
                       STATUS_ID = STATUSES[(i - 1) % #STATUSES + 1], OPPORTUNITY = (i * 137) % 10000 + 0.5,
                       SOURCE_ID = i % 2 == 0 and "WEB" or "CALL" }
      if i % 3 == 0 then fields.PHONE = { { VALUE = "+1555" .. string_format("%07d", i), VALUE_TYPE = "WORK" } } end
      if i % 5 == 0 then fields.EMAIL = { { VALUE = "lead" .. i .. "@example.com", VALUE_TYPE = "WORK" } } end
      add(portal, store, fields)
   end
end

-- The entities --seed-deals, --seed-contacts and --seed-companies fill (option key suffix, store).
_M.SEEDED = { { plural = "deals", entity = "deal" }, { plural = "contacts", entity = "contact" },
              { plural = "companies", entity = "company" } }

local SEED_FIELDS = {
   deal = function(i)
      return { TITLE = "Deal #" .. i, STAGE_ID = i % 2 == 0 and "NEW" or "PREPARATION",
               OPPORTUNITY = (i * 211) % 10000 + 0.25, CURRENCY_ID = "USD" }
   end,
   contact = function(i)
      local f = { NAME = "Contact" .. i, LAST_NAME = "Last" .. i }
      if i % 2 == 0 then f.PHONE = { { VALUE = "+1666" .. string_format("%07d", i), VALUE_TYPE = "WORK" } } end
      return f
   end,
   company = function(i) return { TITLE = "Company #" .. i, COMPANY_TYPE = "CUSTOMER" } end,
}

-- Fills the store of `kind` ("lead", "deal", "contact", "company") with n rows.
function _M.seed(portal, kind, n)
   if kind == "lead" then return _M.seed_leads(portal, n) end
   local store, make = portal.stores[kind], SEED_FIELDS[kind]
   for i = 1, n do add(portal, store, make(i)) end
end

return _M
