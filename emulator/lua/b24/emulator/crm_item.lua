-- b24.emulator.crm_item: crm.item.* (crm/lib/controller/item.php) over the legacy CRM entities
-- stores: the factory's common field names in lower camel case, the converter of filter and
-- order keys, their validation, and the ORM paging of protocol.md §4.
local cjson = require("cjson.safe")
local storage = require "b24.emulator.store"
local crm = require "b24.emulator.crm"

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
local null = cjson.null
local to_text = storage.to_text
local fail = crm.fail

local _M = {}

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


-- Registers crm.item.list into methods.
function _M.register(_, methods)
   methods["crm.item.list"] = item_list
end

return _M
