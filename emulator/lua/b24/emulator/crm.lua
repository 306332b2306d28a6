-- b24.emulator.crm: the legacy CRM entities of the emulated portal (crm.lead.*, crm.deal.*,
-- crm.contact.*, crm.company.*): their fields (b24.emulator.crm_catalog), how values are stored
-- (rows of strings, PHONE/EMAIL/WEB/IM/LINK multi-fields, the defined user fields of
-- b24.emulator.userfields) and printed, and select. Rows and the list semantics of protocol.md
-- §4 (filter, order, pages) are b24.emulator.store's; the order's keys as sent are
-- b24.emulator.order's.
local cjson = require("cjson.safe")
local storage = require "b24.emulator.store"
local catalog = require "b24.emulator.crm_catalog"
local userfields = require "b24.emulator.userfields"
local order_of = require "b24.emulator.order"
local dates = require "b24.emulator.dates"

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
local table_sort = table.sort
local math_floor = math.floor
local math_huge = math.huge
local null = cjson.null
local to_text = storage.to_text

local _M = {}

-- The fields of each entity (crm_catalog.lua, from the entities' GetFieldsInfo): def.fields
-- keeps { name, type, read-only, multiple } entries in the catalog's order (crm_item.lua reads
-- them), def.by_name the full specs; defaults are what a new row holds.
local ENTITIES = {
   lead = { defaults = { STATUS_ID = "NEW", OPPORTUNITY = "0.00", CURRENCY_ID = "USD", OPENED = "Y",
                         SOURCE_ID = "CALL", IS_MANUAL_OPPORTUNITY = "N", HAS_IMOL = "N", IS_RETURN_CUSTOMER = "N" } },
   deal = { defaults = { STAGE_ID = "NEW", CATEGORY_ID = "0", OPPORTUNITY = "0.00", CURRENCY_ID = "USD",
                         OPENED = "Y", CLOSED = "N", IS_MANUAL_OPPORTUNITY = "N", IS_NEW = "Y", IS_RECURRING = "N",
                         IS_RETURN_CUSTOMER = "N", IS_REPEATED_APPROACH = "N" } },
   contact = { defaults = { OPENED = "Y", EXPORT = "Y", HAS_IMOL = "N" } },
   company = { defaults = { COMPANY_TYPE = "CUSTOMER", CURRENCY_ID = "USD", OPENED = "Y", IS_MY_COMPANY = "N",
                            HAS_IMOL = "N" } },
}

-- Multi-fields (crm/classes/general/crm_field_multi.php): lists of { ID, TYPE_ID, VALUE,
-- VALUE_TYPE }; HAS_PHONE and HAS_EMAIL follow PHONE and EMAIL.
local MULTI = { "PHONE", "EMAIL", "WEB", "IM", "LINK" }
local HAS = { PHONE = "HAS_PHONE", EMAIL = "HAS_EMAIL" }

for kind, def in pairs(ENTITIES) do
   def.kind = kind
   def.fields, def.by_name, def.standard = {}, {}, {}
   for _, spec in ipairs(catalog.fields(kind)) do
      def.fields[#def.fields + 1] = { spec.name, spec.type, spec.read_only, spec.multiple }
      def.by_name[spec.name] = spec
      if not spec.multiple then def.standard[#def.standard + 1] = spec.name end
   end
end

local function fail(desc, code, status)
   return nil, { status = status or 400, error = code or "", error_description = desc }
end

-- A written value as the row keeps it; nil when the portal drops it. A date is read as
-- CRestUtil::unConvertDate reads it (restservice.php internalizeFields: one that does not parse
-- is unset), kept as YYYY-MM-DD in the portal's zone.
local function normalize(spec, v, tz)
   local s = to_text(v)
   if s == nil then return nil end
   if spec.type == "date" or spec.type == "datetime" then
      if s == "" then return "" end
      local t = dates.parse(s, tz)
      if not t then return nil end
      if spec.type == "date" then return dates.format_date(t, tz) end
      return dates.format(t, tz)
   end
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
   if HAS[name] then row[HAS[name]] = #list > 0 and "Y" or "N" end
end

-- restservice.php internalizeFields: a key that is not a field's exact name is dropped (so is a
-- UF_ key that names no defined user field), and so are read-only fields, and on update
-- immutable ones (CATEGORY_ID); multiple fields other than the multi-fields are not modelled.
local function apply_fields(portal, store, def, row, fields, updating)
   local tz = portal.timezone
   for name, v in pairs(fields) do
      if type(name) == "string" then
         local spec = def.by_name[name]
         if spec and spec.type == "crm_multifield" then
            apply_multi(store, row, name, v)
         elseif spec and not spec.read_only and not spec.multiple and not (updating and spec.immutable) then
            local value = normalize(spec, v, tz)
            if value ~= nil then row[name] = value end
         elseif not spec and string_sub(name, 1, 3) == "UF_" then
            local uf = userfields.find(portal, def.kind, name)
            if uf then
               local value = userfields.value(uf, v, tz)
               if value ~= nil then row[name] = value end
            end
         end
      end
   end
end

-- The status's semantic id a lead (STATUS_SEMANTIC_ID) or deal (STAGE_SEMANTIC_ID) keeps
-- beside its status (crm_lead.php, crm_deal.php Add/Update: GetSemanticID).
local SEMANTIC = { lead = { "STATUS_ID", "STATUS_SEMANTIC_ID", "STATUS" },
                   deal = { "STAGE_ID", "STAGE_SEMANTIC_ID", "DEAL_STAGE" } }
local function set_semantic(portal, def, row)
   local s = SEMANTIC[def.kind]
   if s then row[s[2]] = catalog.semantic_id(portal, s[3], row[s[1]]) end
end

local function copy_multi(list)
   local out = {}
   for i, item in ipairs(list or {}) do
      out[i] = { ID = item.ID, TYPE_ID = item.TYPE_ID, VALUE = item.VALUE, VALUE_TYPE = item.VALUE_TYPE }
   end
   return out
end

-- A date field's YYYY-MM-DD as CRestUtil::ConvertDate prints it: date('c') of the day's
-- midnight plus the zone's offset (rest/classes/general/rest_util.php), "…T03:00:00+03:00".
local function printed_date(s, tz)
   local t = dates.parse(s, tz)
   if not t then return s end
   return dates.format(t + (dates.offset_seconds(tz) or 0), tz)
end

-- A row as get (selected false: every field, the defined user fields, the multi-fields it
-- has) or list (the selected fields) prints it.
local function view(portal, def, row, selected, ufs)
   local tz = portal.timezone
   local out = {}
   for _, name in ipairs(def.standard) do
      if not selected or selected[name] then
         local v = row[name]
         if v == nil then v = null
         elseif def.by_name[name].type == "date" and v ~= "" then v = printed_date(v, tz) end
         out[name] = v
      end
   end
   for _, uf in ipairs(ufs or userfields.of(portal, def.kind)) do
      local name = uf.FIELD_NAME
      if not selected or selected[name] or selected["UF_*"] then
         out[name] = userfields.printed(uf, row[name], tz)
      end
   end
   for _, name in ipairs(MULTI) do
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
   apply_fields(portal, store, def, row, fields, false)
   set_semantic(portal, def, row)
   store:put(id, row)
   return id
end

-- The field a filter key names: CSqlUtil::GetFilterOperation's prefixes ("!", "+", ">=", ">",
-- "<=", "<", "@", "=%", "%=", "%", "?", "*=", "*%", "*", "=") taken off.
local FILTER_PREFIXES = { ">=", "<=", "=%", "%=", "*=", "*%", ">", "<", "@", "%", "?", "*", "=" }
local function filter_field(key)
   local rest = key
   if string_sub(rest, 1, 1) == "!" then rest = string_sub(rest, 2) end
   if string_sub(rest, 1, 1) == "+" then rest = string_sub(rest, 2) end
   for _, p in ipairs(FILTER_PREFIXES) do
      if string_sub(rest, 1, #p) == p then return string_sub(rest, #p + 1) end
   end
   return rest
end

local LIKE_AS_EQUAL = { crm_status = true, crm_company = true, crm_contact = true }

-- Whether name is a field of def's fields info (the entity's, its multi-fields', its defined
-- user fields'), spelled exactly.
local function known_field(portal, def, name)
   if def.by_name[name] then return true end
   return string_sub(name, 1, 3) == "UF_" and userfields.find(portal, def.kind, name) ~= nil
end

-- The order of a list as the platform applies it (main/classes/general/sql_util.php
-- CSqlUtil::PrepareSql: keys upper-cased, unknown fields skipped, any direction but ASC is
-- DESC; crm_entity_list_builder.php: a user field's direction other than ASC/DESC is ASC), the
-- keys as sent (b24.emulator.order). A lead's STATUS_ID (a deal's STAGE_ID) is sorted by the
-- status's SORT: restservice.php CCrmLeadRestProxy/CCrmDealRestProxy::innerGetList replace the
-- key with STATUS_SORT/STAGE_SORT, appended at the end of the order (unset + assign), which
-- crm_lead.php/crm_deal.php GetFields join from b_crm_status (ENTITY_ID STATUS; DEAL_STAGE, the
-- default category's stages). Returns the order map, its keys in order and the sort values.
local SORTED_BY_STATUS = { lead = { "STATUS_ID", "STATUS" }, deal = { "STAGE_ID", "DEAL_STAGE" } }
local function list_order(portal, def, order, params)
   local sent = order_of.keys(portal, nil, params) or {}
   local rank = {}
   for i, k in ipairs(sent) do rank[k] = rank[k] or i end
   local keys = {}
   for k in pairs(order) do
      if type(k) == "string" then keys[#keys + 1] = k end
   end
   table_sort(keys, function(a, b)
      local ra, rb = rank[a] or math_huge, rank[b] or math_huge
      if ra ~= rb then return ra < rb end
      return a < b
   end)
   local status = SORTED_BY_STATUS[def.kind]
   if status and order[status[1]] ~= nil then
      for i, k in ipairs(keys) do
         if k == status[1] then table_remove(keys, i); break end
      end
      keys[#keys + 1] = status[1]
   end
   local map, names, seen = {}, {}, {}
   for _, k in ipairs(keys) do
      local name = string_upper(k)
      local dir = string_upper(to_text(order[k]) or "")
      local is_uf = string_sub(name, 1, 3) == "UF_"
      if known_field(portal, def, name) and not seen[name] then
         seen[name] = true
         if is_uf then dir = dir == "DESC" and "DESC" or "ASC" else dir = dir == "ASC" and "ASC" or "DESC" end
         map[name] = dir
         names[#names + 1] = name
      end
   end
   local sort_value
   -- only the exact key is replaced (isset($order['STATUS_ID'])): "status_id" sorts as text
   if status and order[status[1]] ~= nil then
      local entity = status[2]
      sort_value = { [status[1]] = function(v) return catalog.sort_of(portal, entity, v) end }
   end
   return map, names, sort_value
end

-- CCrmRestProxyBase::processMethodRequest LIST (restservice.php): order and filter default to
-- [] and must be arrays (order checked first); select is cast with (array); getList's
-- internalizeFilterFields drops a filter key whose field is not an exact field name, and a date
-- field's value is read as a date in the portal's zone (store.lua); paging is the legacy
-- CDBResult's (store.query "legacy").
local function list(portal, store, params)
   local def = store.def
   local order = array_param(params, "order") or {}
   if type(order) ~= "table" then return fail("Parameter 'order' must be array.") end
   local filter = array_param(params, "filter") or {}
   if type(filter) ~= "table" then return fail("Parameter 'filter' must be array.") end
   local select = array_param(params, "select")
   if select ~= nil and type(select) ~= "table" then select = { select } end
   local kept = {}
   for k, v in pairs(filter) do
      local name = type(k) == "string" and filter_field(k)
      if name and known_field(portal, def, name) then
         local spec = def.by_name[name]
         local op = string_sub(k, 1, #k - #name)
         -- internalizeFilterFields: no LIKE on these types ("performance considerations"): =
         if spec and LIKE_AS_EQUAL[spec.type] and (op == "%" or op == "%=" or op == "=%") then k = "=" .. name end
         kept[k] = v
      end
   end
   local sorted, keys, sort_value = list_order(portal, def, order, params)
   local rows, meta = store:query({ filter = kept, order = sorted, start = params.start },
      { paging = "legacy", name = function(k) return k end, timezone = portal.timezone, order_keys = keys,
        sort_value = sort_value })
   local selected, star = parse_select(select)
   if selected and star then
      for _, name in ipairs(def.standard) do selected[name] = true end
   end
   -- no select: the entity's own fields, without multi-fields and user fields
   local ufs = selected and userfields.of(portal, def.kind) or {}
   local page = {}
   for i, row in ipairs(rows) do page[i] = view(portal, def, row, selected or false, ufs) end
   if not selected then
      for _, r in ipairs(page) do
         for _, name in ipairs(MULTI) do r[name] = nil end
      end
   end
   return page, meta
end

-- crm.<kind>.fields: CCrmRestHelper::prepareFieldInfos of the entity's fields info (type,
-- isRequired, isReadOnly, isImmutable, isMultiple, isDynamic, isDeprecated when set, statusType
-- of a crm_status field, settings.parentEntityTypeId of a parent, title the caption), then the
-- defined user fields (userfields.describe).
local function fields_description(portal, def)
   local out = {}
   for _, f in ipairs(def.fields) do
      local spec = def.by_name[f[1]]
      local field = { type = spec.type, isRequired = spec.required, isReadOnly = spec.read_only,
                      isImmutable = spec.immutable, isMultiple = spec.multiple, isDynamic = false,
                      title = spec.title }
      if spec.deprecated then field.isDeprecated = true end
      if spec.status_type then field.statusType = spec.status_type end
      if spec.parent then field.settings = { parentEntityTypeId = spec.parent } end
      out[spec.name] = field
   end
   for _, uf in ipairs(userfields.of(portal, def.kind)) do out[uf.FIELD_NAME] = userfields.describe(uf) end
   return out
end

-- Registers crm.<kind>.add|get|update|delete|list|fields for each entity into methods
-- (crm.item.* is b24.emulator.crm_item's). Changes call portal:changed(event name, data) (events and persistence).
function _M.register(portal, methods)
   local kinds = {}
   for kind in pairs(ENTITIES) do kinds[#kinds + 1] = kind end
   table_sort(kinds)
   local function keys_of(p, params) return order_of.keys(p, nil, params) end
   catalog.register(portal, methods, array_param, keys_of)
   userfields.register(portal, methods, kinds, array_param, id_param, keys_of)
   for _, kind in ipairs(kinds) do
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
      methods[prefix .. "get"] = function(p, params)
         local id = id_param(params)
         if not id then return fail("ID is not defined or invalid.") end
         local row = store.rows[id]
         if not row then return fail("Not found") end
         return view(p, store.def, row, false), { rows = 1 }
      end
      methods[prefix .. "update"] = function(p, params)
         local fields, err = fields_and_params(params)
         if not fields then return nil, err end
         local id = id_param(params)
         if not id then return fail("ID is not defined or invalid.") end
         local row = store.rows[id]
         if not row then return fail("Not found") end
         apply_fields(p, store, store.def, row, fields, true)
         set_semantic(p, store.def, row)
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
      methods[prefix .. "list"] = function(p, params) return list(p, store, params) end
      methods[prefix .. "fields"] = function(p) return fields_description(p, store.def) end
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
