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

-- Registers crm.<kind>.add|get|update|delete|list|fields for each entity into methods
-- (crm.item.* is b24.emulator.crm_item's). Changes call portal:changed(event name, data) (events and persistence).
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
end

_M.fail = fail
_M.ENTITIES = ENTITIES

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
