-- b24.emulator.crm_catalog: the CRM's reference data on a fresh portal and the methods that read
-- it: the statuses the portal installs (crm.status.list, crm.status.fields,
-- crm.status.entity.items), the deal categories (crm.category.list, crm.deal.category.list), and
-- the descriptions of the legacy entities' fields that crm.<kind>.fields prints.
--
-- The snapshot carries no language files (crm/lang/en is absent), so English names and titles
-- come from the REST docs' captured answers (bitrix24/b24restdocs api-reference/crm/…).
local cjson = require("cjson.safe")
local storage = require "b24.emulator.store"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local string_upper = string.upper
local string_lower = string.lower
local string_find = string.find
local string_gmatch = string.gmatch
local table_sort = table.sort
local next = next
local null = cjson.null

local _M = {}

-- crm/classes/general/crm_status.php InstallDefault (GetDefaultLeadStatuses, GetDefaultSources,
-- GetDefaultContactTypes, GetDefaultCompanyTypes, GetDefaultDealStages): STATUS_ID, SORT,
-- SYSTEM, COLOR, SEMANTICS ("S" success, "F" failure: crm/lib/PhaseSemantics.php), English
-- NAME. Deal stage colors as DefaultProcessColorGenerator gives them on a fresh portal (the
-- docs' crm.status.list answer). DEAL_TYPE is installed by the module's installer, whose
-- values (SALE, COMPLEX, GOODS, SERVICES, SERVICE) a fresh portal lists.
local DEFAULT_STATUSES = {
   { "STATUS", {
      { "NEW", 10, "Y", "#39A8EF", nil, "New" },
      { "IN_PROCESS", 20, "N", "#2FC6F6", nil, "In process" },
      { "PROCESSED", 30, "N", "#55D0E0", nil, "Processed" },
      { "CONVERTED", 40, "Y", "#7BD500", "S", "Qualified lead" },
      { "JUNK", 50, "Y", "#FF5752", "F", "Junk lead" } } },
   { "SOURCE", {
      { "CALL", 10, "Y", nil, nil, "Call" }, { "EMAIL", 20, "N", nil, nil, "E-mail" },
      { "WEB", 30, "N", nil, nil, "Website" }, { "ADVERTISING", 40, "N", nil, nil, "Advertising" },
      { "PARTNER", 50, "N", nil, nil, "Existing client" },
      { "RECOMMENDATION", 60, "N", nil, nil, "By recommendation" },
      { "TRADE_SHOW", 70, "N", nil, nil, "Trade show" }, { "WEBFORM", 75, "Y", nil, nil, "CRM form" },
      { "REPEAT_SALE", 76, "Y", nil, nil, "Repeat sale" }, { "CALLBACK", 77, "Y", nil, nil, "Callback" },
      { "RC_GENERATOR", 78, "Y", nil, nil, "Sales generator" },
      { "STORE", 79, "Y", nil, nil, "Online store" }, { "OTHER", 80, "N", nil, nil, "Other" },
      { "BOOKING", 81, "Y", nil, nil, "Booking" } } },
   { "CONTACT_TYPE", {
      { "CLIENT", 10, "N", nil, nil, "Clients" }, { "SUPPLIER", 20, "N", nil, nil, "Suppliers" },
      { "PARTNER", 30, "N", nil, nil, "Partners" }, { "OTHER", 40, "N", nil, nil, "Other" } } },
   { "COMPANY_TYPE", {
      { "CUSTOMER", 10, "N", nil, nil, "Client" }, { "SUPPLIER", 20, "N", nil, nil, "Supplier" },
      { "COMPETITOR", 30, "N", nil, nil, "Competitor" }, { "PARTNER", 40, "N", nil, nil, "Partner" },
      { "OTHER", 50, "N", nil, nil, "Other" } } },
   { "DEAL_STAGE", {
      { "NEW", 10, "Y", "#39A8EF", nil, "New" },
      { "PREPARATION", 20, "N", "#2FC6F6", nil, "Document preparation" },
      { "PREPAYMENT_INVOICE", 30, "N", "#55D0E0", nil, "Prepayment invoice" },
      { "EXECUTING", 40, "N", "#47E4C2", nil, "In progress" },
      { "FINAL_INVOICE", 50, "N", "#FFA900", nil, "Final invoice" },
      { "WON", 60, "Y", "#7BD500", "S", "Deal successful" },
      { "LOSE", 70, "Y", "#FF5752", "F", "Deal failed" },
      { "APOLOGY", 80, "N", "#FF5752", "F", "Failure reason analysis" } } },
   { "DEAL_TYPE", {
      { "SALE", 10, "N", nil, nil, "Sales" }, { "COMPLEX", 20, "N", nil, nil, "Integrated sale" },
      { "GOODS", 30, "N", nil, nil, "Merchandise sale" }, { "SERVICES", 40, "N", nil, nil, "Service sale" },
      { "SERVICE", 50, "N", nil, nil, "After-sale service" } } },
}

-- The fields of the legacy entities as crm.<kind>.fields prints them (crm/classes/general/
-- crm_lead.php, crm_deal.php, crm_contact.php, crm_company.php GetFieldsInfo, with the multi
-- fields of restservice.php prepareMultiFieldsInfo), in that order: "NAME|type|flags|Title|x",
-- flags R required, O read-only, I immutable, M multiple, X deprecated; x the statusType of a
-- crm_status field or the parentEntityTypeId of a parent field. Titles as a portal in English
-- prints them (the docs' crm.<kind>.fields answers; a field without a caption shows its name).
local FIELDS = {
   lead = {
      "ID|integer|O|ID", "TITLE|string||Lead Title", "HONORIFIC|crm_status||Salutation|HONORIFIC",
      "NAME|string||First Name", "SECOND_NAME|string||Middle Name", "LAST_NAME|string||Last Name",
      "BIRTHDATE|date||Birthdate", "COMPANY_TITLE|string||Company Name", "SOURCE_ID|crm_status||Source|SOURCE",
      "SOURCE_DESCRIPTION|string||Source Description", "STATUS_ID|crm_status||Stage|STATUS",
      "STATUS_DESCRIPTION|string||Stage Description", "STATUS_SEMANTIC_ID|string|O|Status Semantic",
      "POST|string||Position", "ADDRESS|string||Address", "ADDRESS_2|string||Address (Line 2)",
      "ADDRESS_CITY|string||City", "ADDRESS_POSTAL_CODE|string||Postal Code", "ADDRESS_REGION|string||Region",
      "ADDRESS_PROVINCE|string||Province", "ADDRESS_COUNTRY|string||Country",
      "ADDRESS_COUNTRY_CODE|string||Country Code", "ADDRESS_LOC_ADDR_ID|integer||Location Address ID",
      "CURRENCY_ID|crm_currency||Currency", "OPPORTUNITY|double||Amount",
      "IS_MANUAL_OPPORTUNITY|char||IS_MANUAL_OPPORTUNITY", "OPENED|char||Available to All",
      "COMMENTS|string||Comments", "HAS_PHONE|char|O|Phone Provided", "HAS_EMAIL|char|O|Email Provided",
      "HAS_IMOL|char|O|Open Line Assigned", "ASSIGNED_BY_ID|user||Responsible User",
      "CREATED_BY_ID|user|O|Created By", "MODIFY_BY_ID|user|O|Modified By", "MOVED_BY_ID|user|O|MOVED_BY_ID",
      "DATE_CREATE|datetime|O|Creation Date", "DATE_MODIFY|datetime|O|Modification Date",
      "MOVED_TIME|datetime|O|MOVED_TIME", "COMPANY_ID|crm_company||Company|4", "CONTACT_ID|crm_contact|X|Contact",
      "CONTACT_IDS|crm_contact|M|CONTACT_IDS", "IS_RETURN_CUSTOMER|char|O|Returning Lead",
      "DATE_CLOSED|datetime|O|Closing Date", "ORIGINATOR_ID|string||External Source",
      "ORIGIN_ID|string||Identifier in External Source", "UTM_SOURCE|string||Advertising System",
      "UTM_MEDIUM|string||Traffic Type", "UTM_CAMPAIGN|string||Campaign Identifier",
      "UTM_CONTENT|string||Campaign Content", "UTM_TERM|string||Campaign Search Term",
      "LAST_ACTIVITY_TIME|datetime|O|LAST_ACTIVITY_TIME", "LAST_ACTIVITY_BY|user|O|LAST_ACTIVITY_BY",
      "PHONE|crm_multifield|M|Phone", "EMAIL|crm_multifield|M|E-mail", "WEB|crm_multifield|M|Website",
      "IM|crm_multifield|M|Messenger", "LINK|crm_multifield|M|LINK",
   },
   deal = {
      "ID|integer|O|ID", "TITLE|string||Title", "TYPE_ID|crm_status||Type|DEAL_TYPE",
      "CATEGORY_ID|crm_category|I|Sales Funnel", "STAGE_ID|crm_status||Deal Stage|DEAL_STAGE",
      "STAGE_SEMANTIC_ID|string|O|Stage Group", "IS_NEW|char|O|New Deal", "IS_RECURRING|char||Recurring Deal",
      "IS_RETURN_CUSTOMER|char||Repeat Deal", "IS_REPEATED_APPROACH|char||Repeated Approach",
      "PROBABILITY|integer||Probability", "CURRENCY_ID|crm_currency||Currency", "OPPORTUNITY|double||Amount",
      "IS_MANUAL_OPPORTUNITY|char||IS_MANUAL_OPPORTUNITY", "TAX_VALUE|double||Tax Rate",
      "COMPANY_ID|crm_company||Company|4", "CONTACT_ID|crm_contact|X|Contact", "CONTACT_IDS|crm_contact|M|Contacts",
      "QUOTE_ID|crm_quote|O|Estimate|7", "BEGINDATE|date||Start Date", "CLOSEDATE|date||Close Date",
      "OPENED|char||Available to All", "CLOSED|char||Closed", "COMMENTS|string||Comment",
      "ASSIGNED_BY_ID|user||Responsible", "CREATED_BY_ID|user|O|Created By", "MODIFY_BY_ID|user|O|Modified By",
      "MOVED_BY_ID|user|O|MOVED_BY_ID", "DATE_CREATE|datetime|O|Creation Date",
      "DATE_MODIFY|datetime|O|Modification Date", "MOVED_TIME|datetime|O|MOVED_TIME",
      "SOURCE_ID|crm_status||Source|SOURCE", "SOURCE_DESCRIPTION|string||Additional Info about Source",
      "LEAD_ID|crm_lead|O|Lead|1", "ADDITIONAL_INFO|string||Additional Information", "LOCATION_ID|location||Location",
      "ORIGINATOR_ID|string||External Source", "ORIGIN_ID|string||Identifier in External Source",
      "UTM_SOURCE|string||Advertising System", "UTM_MEDIUM|string||Traffic Type",
      "UTM_CAMPAIGN|string||Campaign Identifier", "UTM_CONTENT|string||Campaign Content",
      "UTM_TERM|string||Campaign Search Condition", "LAST_ACTIVITY_TIME|datetime|O|LAST_ACTIVITY_TIME",
      "LAST_ACTIVITY_BY|user|O|LAST_ACTIVITY_BY",
   },
   contact = {
      "ID|integer|O|ID", "HONORIFIC|crm_status||Salutation|HONORIFIC", "NAME|string|R|First Name",
      "SECOND_NAME|string|R|Middle Name", "LAST_NAME|string|R|Last Name", "PHOTO|file||Photo",
      "BIRTHDATE|date||Birthdate", "TYPE_ID|crm_status||Contact Type|CONTACT_TYPE",
      "SOURCE_ID|crm_status||Source|SOURCE", "SOURCE_DESCRIPTION|string||Additional Source Information",
      "POST|string||Position", "ADDRESS|string||Address", "ADDRESS_2|string||Address (Line 2)",
      "ADDRESS_CITY|string||City", "ADDRESS_POSTAL_CODE|string||Postal Code", "ADDRESS_REGION|string||Region",
      "ADDRESS_PROVINCE|string||Province", "ADDRESS_COUNTRY|string||Country",
      "ADDRESS_COUNTRY_CODE|string||Country Code", "ADDRESS_LOC_ADDR_ID|integer||Location Address ID",
      "COMMENTS|string||Comment", "OPENED|char||Available to All", "EXPORT|char||Participates in Contact Export",
      "HAS_PHONE|char|O|Phone Set", "HAS_EMAIL|char|O|E-mail Set", "HAS_IMOL|char|O|Open Line Set",
      "ASSIGNED_BY_ID|user||Responsible Person", "CREATED_BY_ID|user|O|Created By", "MODIFY_BY_ID|user|O|Modified By",
      "DATE_CREATE|datetime|O|Creation Date", "DATE_MODIFY|datetime|O|Modification Date",
      "COMPANY_ID|crm_company|X|Company", "COMPANY_IDS|crm_company|M|COMPANY_IDS", "LEAD_ID|crm_lead|O|Lead|1",
      "ORIGINATOR_ID|string||External Source", "ORIGIN_ID|string||Identifier in External Source",
      "ORIGIN_VERSION|string||Original Version", "UTM_SOURCE|string||Advertising System",
      "UTM_MEDIUM|string||Traffic Type", "UTM_CAMPAIGN|string||Campaign Identifier",
      "UTM_CONTENT|string||Campaign Content", "UTM_TERM|string||Campaign Search Condition",
      "LAST_ACTIVITY_TIME|datetime|O|Last Activity", "LAST_ACTIVITY_BY|user|O|Last Activity By",
      "PHONE|crm_multifield|M|Phone", "EMAIL|crm_multifield|M|E-mail", "WEB|crm_multifield|M|Website",
      "IM|crm_multifield|M|Messenger", "LINK|crm_multifield|M|LINK",
   },
   company = {
      "ID|integer|O|ID", "TITLE|string|R|Company Name", "COMPANY_TYPE|crm_status||Company Type|COMPANY_TYPE",
      "LOGO|file||Logo", "ADDRESS|string||Physical Address", "ADDRESS_2|string||Address (line 2)",
      "ADDRESS_CITY|string||City", "ADDRESS_POSTAL_CODE|string||Postal Code", "ADDRESS_REGION|string||Region",
      "ADDRESS_PROVINCE|string||Province", "ADDRESS_COUNTRY|string||Country",
      "ADDRESS_COUNTRY_CODE|string||Country Code", "ADDRESS_LOC_ADDR_ID|integer||Location Address ID",
      "ADDRESS_LEGAL|string||Legal Address", "REG_ADDRESS|string||Legal Address",
      "REG_ADDRESS_2|string||Legal Address (line 2)", "REG_ADDRESS_CITY|string||Legal Address City",
      "REG_ADDRESS_POSTAL_CODE|string||Legal Address Postal Code", "REG_ADDRESS_REGION|string||Legal Address Region",
      "REG_ADDRESS_PROVINCE|string||Legal Address Province", "REG_ADDRESS_COUNTRY|string||Legal Address Country",
      "REG_ADDRESS_COUNTRY_CODE|string||Legal Address Country Code",
      "REG_ADDRESS_LOC_ADDR_ID|integer||Legal Address Location ID", "BANKING_DETAILS|string||Banking Details",
      "INDUSTRY|crm_status||Industry|INDUSTRY", "EMPLOYEES|crm_status||Number of Employees|EMPLOYEES",
      "CURRENCY_ID|crm_currency||Currency", "REVENUE|double||Annual Revenue", "OPENED|char||Available to Everyone",
      "COMMENTS|string||Comment", "HAS_PHONE|char|O|Phone Set", "HAS_EMAIL|char|O|E-mail Set",
      "HAS_IMOL|char|O|Open Line Set", "IS_MY_COMPANY|char||My Company", "ASSIGNED_BY_ID|user||Responsible Person",
      "CREATED_BY_ID|user|O|Created By", "MODIFY_BY_ID|user|O|Modified By", "DATE_CREATE|datetime|O|Creation Date",
      "DATE_MODIFY|datetime|O|Modification Date", "CONTACT_ID|crm_contact|M|Contact", "LEAD_ID|crm_lead|O|Lead|1",
      "ORIGINATOR_ID|string||External Source", "ORIGIN_ID|string||Identifier in External Source",
      "ORIGIN_VERSION|string||Original Version", "UTM_SOURCE|string||Advertising System",
      "UTM_MEDIUM|string||Traffic Type", "UTM_CAMPAIGN|string||Campaign Identifier",
      "UTM_CONTENT|string||Campaign Content", "UTM_TERM|string||Campaign Search Term",
      "LAST_ACTIVITY_TIME|datetime||Last Activity Time", "LAST_ACTIVITY_BY|user||Last Activity Author",
      "LAST_COMMUNICATION_TIME|string|O|Last Communication Date", "PHONE|crm_multifield|M|Phone",
      "EMAIL|crm_multifield|M|E-mail", "WEB|crm_multifield|M|Website", "IM|crm_multifield|M|Messenger",
      "LINK|crm_multifield|M|LINK",
   },
}

-- The field specs of kind: { name, type, required, read_only, immutable, multiple, deprecated,
-- title, status_type, parent }, in order (built once).
local specs_cache = {}
function _M.fields(kind)
   if specs_cache[kind] then return specs_cache[kind] end
   local out = {}
   for _, line in ipairs(FIELDS[kind] or {}) do
      local parts = {}
      for part in string_gmatch(line .. "|", "([^|]*)|") do parts[#parts + 1] = part end
      local flags = parts[3]
      local spec = { name = parts[1], type = parts[2], title = parts[4],
                     required = string_find(flags, "R", 1, true) ~= nil,
                     read_only = string_find(flags, "O", 1, true) ~= nil,
                     immutable = string_find(flags, "I", 1, true) ~= nil,
                     multiple = string_find(flags, "M", 1, true) ~= nil,
                     deprecated = string_find(flags, "X", 1, true) ~= nil }
      local extra = parts[5]
      if extra and extra ~= "" then
         if spec.type == "crm_status" then spec.status_type = extra else spec.parent = tonumber(extra) end
      end
      out[#out + 1] = spec
   end
   specs_cache[kind] = out
   return out
end

local function fail(desc, code)
   return nil, { status = 400, error = code or "", error_description = desc }
end

-- The status store of a portal (ENTITY_ID, STATUS_ID, … as strings), seeded with the defaults.
local STATUS_DEF = { fields = { { "ID", "integer" }, { "ENTITY_ID", "string" }, { "STATUS_ID", "string" },
   { "NAME", "string" }, { "NAME_INIT", "string" }, { "SORT", "integer" }, { "SYSTEM", "char" },
   { "CATEGORY_ID", "integer" }, { "COLOR", "string" }, { "SEMANTICS", "char" } } }

local function seed_statuses(store)
   for _, group in ipairs(DEFAULT_STATUSES) do
      for _, s in ipairs(group[2]) do
         local id = store:take_id()
         -- crm_status.php Add: NAME_INIT keeps the name of a system status, SEMANTICS is stored
         -- for success and failure only
         store:put(id, { ID = tostring(id), ENTITY_ID = group[1], STATUS_ID = s[1], NAME = s[6],
                         NAME_INIT = s[3] == "Y" and s[6] or "", SORT = tostring(s[2]), SYSTEM = s[3],
                         COLOR = s[4], SEMANTICS = s[5] })
      end
   end
end

-- The SORT of status status_id in entity_id ("STATUS", "DEAL_STAGE", …): a number, or nil when
-- there is no such status (a LEFT JOIN that finds nothing: NULL).
function _M.sort_of(portal, entity_id, status_id)
   local store = portal.stores.status
   if not store or type(status_id) ~= "string" then return nil end
   local index = store.sort_index
   -- built once per set of rows (import replaces the rows table; statuses are not edited)
   if not index or store.sort_index_of ~= store.rows then
      index = {}
      for _, id in ipairs(store.ids) do
         local row = store.rows[id]
         index[row.ENTITY_ID .. "\0" .. row.STATUS_ID] = tonumber(row.SORT)
      end
      store.sort_index, store.sort_index_of = index, store.rows
   end
   return index[entity_id .. "\0" .. status_id]
end

-- The semantic id of a status (crm/lib/PhaseSemantics.php): "S" success, "F" failure (a failure
-- status, or one sorted after the final one: CCrmLead::GetSemanticID, CCrmDeal::GetSemanticID),
-- "P" in progress.
function _M.semantic_id(portal, entity_id, status_id)
   local store = portal.stores.status
   if not store or type(status_id) ~= "string" then return "P" end
   local final
   for _, id in ipairs(store.ids) do
      local row = store.rows[id]
      if row.ENTITY_ID == entity_id and row.STATUS_ID == status_id and row.SEMANTICS then return row.SEMANTICS end
      if row.ENTITY_ID == entity_id and row.SEMANTICS == "S" then final = tonumber(row.SORT) end
   end
   local sort = _M.sort_of(portal, entity_id, status_id)
   if sort and final and sort > final then return "F" end
   return "P"
end

-- restservice.php CCrmStatusRestProxy prepareExtra: EXTRA { SEMANTICS, COLOR } for lead statuses
-- and deal stages; CCrmLead::GetStatusSemantics / CCrmDeal::GetStageSemantics: "success",
-- "failure", and past the final status "apology", else "process".
local FINAL = { STATUS = "CONVERTED", DEAL_STAGE = "WON" }
local SUCCESS = { STATUS = "CONVERTED", DEAL_STAGE = "WON" }
local FAILURE = { STATUS = "JUNK", DEAL_STAGE = "LOSE" }

local function status_view(portal, row)
   local out = { ID = row.ID, ENTITY_ID = row.ENTITY_ID, STATUS_ID = row.STATUS_ID, NAME = row.NAME,
                 NAME_INIT = row.NAME_INIT or "", SORT = row.SORT, SYSTEM = row.SYSTEM,
                 CATEGORY_ID = row.CATEGORY_ID or null, COLOR = row.COLOR or null,
                 SEMANTICS = row.SEMANTICS or null }
   local entity = row.ENTITY_ID
   if FINAL[entity] then
      local semantics = "process"
      if row.STATUS_ID == SUCCESS[entity] then semantics = "success"
      elseif row.STATUS_ID == FAILURE[entity] then semantics = "failure"
      elseif (tonumber(row.SORT) or 0) > (_M.sort_of(portal, entity, FINAL[entity]) or 0) then
         semantics = "apology"
      end
      out.EXTRA = { SEMANTICS = semantics, COLOR = row.COLOR or "" }
   end
   return out
end

-- crm_status.php CCrmStatus::GetList: filter keys taken as upper case but only bare names (a
-- prefixed key names no column); an empty value is skipped; NAME is a search (a substring
-- here), the others equality. Order: the known columns, any direction but ASC is DESC; no
-- known column: ID DESC.
local STATUS_FILTERS = { ID = true, ENTITY_ID = true, STATUS_ID = true, NAME = true, SORT = true, SYSTEM = true,
                         CATEGORY_ID = true, SEMANTICS = true }

local function status_matches(row, filter)
   for k, v in pairs(filter) do
      local key = type(k) == "string" and string_upper(k) or ""
      local want = storage.to_text(v)
      if STATUS_FILTERS[key] and want and want ~= "" then
         local have = row[key] or ""
         if key == "NAME" then
            if not string_find(string_lower(have), string_lower(want), 1, true) then return false end
         elseif key == "SYSTEM" then
            if have ~= (want == "Y" and "Y" or "N") then return false end
         elseif key == "CATEGORY_ID" then
            if have ~= tostring(storage.php_int(want)) then return false end
         elseif storage.compare(have, want) ~= 0 then
            return false
         end
      end
   end
   return true
end

-- crm.status.list (restservice.php CCrmStatusRestProxy::innerGetList): order defaults to
-- SORT ascending; ENTITY_ID, STATUS_ID, SORT, SEMANTICS must not be arrays ("Filter by … must be a
-- string"); internalizeFilterFields first drops keys that are not exact field names; all rows,
-- total their count (prepareListFromArray, setNavData).
local function status_list(portal, params, array_param, order_keys)
   local order = array_param(params, "order") or {}
   if type(order) ~= "table" then return fail("Parameter 'order' must be array.") end
   local filter = array_param(params, "filter") or {}
   if type(filter) ~= "table" then return fail("Parameter 'filter' must be array.") end
   local kept = {}
   for k, v in pairs(filter) do
      local name = type(k) == "string" and (k:match("^[!+]?[<>=@%%]*=?(.*)$")) or nil
      if name and STATUS_FILTERS[name] then kept[k] = v end
   end
   for _, name in ipairs({ "ENTITY_ID", "STATUS_ID", "SORT", "SEMANTICS" }) do
      if type(kept[name]) == "table" then return fail("Filter by " .. name .. " must be a string") end
   end
   local rows = {}
   local store = portal.stores.status
   for _, id in ipairs(store.ids) do
      local row = store.rows[id]
      if status_matches(row, kept) then rows[#rows + 1] = row end
   end
   local keys = {}
   local rank = {}
   for i, k in ipairs(order_keys or {}) do rank[k] = i end
   for k, v in pairs(order) do
      if type(k) == "string" and STATUS_FILTERS[string_upper(k)] then
         keys[#keys + 1] = { key = k, name = string_upper(k),
                             desc = string_upper(storage.to_text(v) or "") ~= "ASC" }
      end
   end
   table_sort(keys, function(a, b)
      local ra, rb = rank[a.key] or 1e9, rank[b.key] or 1e9
      if ra ~= rb then return ra < rb end
      return a.key < b.key
   end)
   if next(order) == nil then keys = { { name = "SORT", desc = false } } end
   if #keys == 0 then keys = { { name = "ID", desc = true } } end
   table_sort(rows, function(a, b)
      for _, key in ipairs(keys) do
         local r = storage.compare(a[key.name] or "", b[key.name] or "")
         if r ~= 0 then if key.desc then return r > 0 else return r < 0 end end
      end
      return tonumber(a.ID) < tonumber(b.ID)
   end)
   local out = {}
   for i, row in ipairs(rows) do out[i] = status_view(portal, row) end
   return out, { total = #out, rows = #out }
end

-- crm_status.php GetFieldsInfo, printed by CCrmRestHelper::prepareFieldInfos.
local STATUS_FIELDS = {
   { "ID", "integer", "O", "ID" }, { "ENTITY_ID", "string", "RI", "Entity" },
   { "STATUS_ID", "string", "RI", "Status ID" }, { "SORT", "integer", "", "Sort" },
   { "NAME", "string", "R", "Name" }, { "NAME_INIT", "string", "O", "Default name" },
   { "SYSTEM", "char", "O", "System" }, { "CATEGORY_ID", "integer", "I", "Category ID" },
   { "COLOR", "string", "", "Color" }, { "SEMANTICS", "char", "I", "Semantics" },
   { "EXTRA", "crm_status_extra", "", "EXTRA" },
}

local function status_fields()
   local out = {}
   for _, f in ipairs(STATUS_FIELDS) do
      out[f[1]] = { type = f[2], isRequired = string_find(f[3], "R", 1, true) ~= nil,
                    isReadOnly = string_find(f[3], "O", 1, true) ~= nil,
                    isImmutable = string_find(f[3], "I", 1, true) ~= nil, isMultiple = false,
                    isDynamic = false, title = f[4] }
   end
   return out
end

-- crm.status.entity.items (CCrmStatusRestProxy::getEntityItems): NAME, SORT (a number),
-- STATUS_ID of entityId's statuses by SORT.
local function entity_items(portal, params)
   local entity = params.entityId or params.ENTITY_ID or params.entity_id or params.EntityId
   if entity == nil or entity == "" then
      return fail("The parameter entityId is not defined or invalid.")
   end
   if type(entity) ~= "string" then return fail("The parameter entityId must be a string.") end
   local rows = status_list(portal, { filter = { ENTITY_ID = string_upper(entity) } },
      function(p, name) return p[name] end)
   local out = {}
   for i, row in ipairs(rows) do
      out[i] = { NAME = row.NAME, SORT = tonumber(row.SORT), STATUS_ID = row.STATUS_ID }
   end
   return out, { rows = #out }
end

-- The deal categories: the default one only on a fresh portal (crm/lib/Category/DealCategory.php
-- getDefaultCategoryName/getDefaultCategorySort: "General", the option's sort, 0).
local DEFAULT_CATEGORY = { id = 0, name = "General", sort = 0, entityTypeId = 2, isDefault = "Y" }

-- crm.category.list (crm/lib/controller/category.php listAction): the factory's categories as
-- the Category converter prints them (getData in camelCase); an entity type without categories
-- answers ENTITY_TYPE_NOT_SUPPORTED (crm/lib/controller/errorcode.php), an unknown one
-- NOT_FOUND.
local ENTITY_NAMES = { [1] = "Lead", [3] = "Contact", [4] = "Company" }
local function category_list(_, params)
   local type_id = tonumber(storage.to_text(params.entityTypeId) or "")
   if type_id == 2 then
      local c = DEFAULT_CATEGORY
      -- filter[code]: the categories with that code; the default one has none
      if type(params.filter) == "table" and params.filter.code ~= nil then
         return { categories = {} }, { total = 0, rows = 0 }
      end
      return { categories = { { id = c.id, name = c.name, sort = c.sort, entityTypeId = c.entityTypeId,
                                isDefault = c.isDefault } } }, { total = 1, rows = 1 }
   end
   if type_id and ENTITY_NAMES[type_id] then
      return fail("Entity type " .. ENTITY_NAMES[type_id] .. " is not supported", "ENTITY_TYPE_NOT_SUPPORTED")
   end
   return fail("Smart process not found", "NOT_FOUND")
end

-- Registers the status store into portal.stores (so --data keeps it) and the catalog methods;
-- array_param and order_keys(portal, params) are crm.lua's readers of a parameter and of the
-- order's keys as sent.
function _M.register(portal, methods, array_param, order_keys)
   local store = storage.new("status", STATUS_DEF)
   seed_statuses(store)
   portal.stores.status = store
   methods["crm.status.list"] = function(p, params)
      return status_list(p, params, array_param, order_keys(p, params))
   end
   methods["crm.status.fields"] = function() return status_fields() end
   methods["crm.status.entity.items"] = entity_items
   methods["crm.category.list"] = category_list
   -- restservice.php CCrmDealCategoryProxy::innerGetList: the rows of b_crm_deal_category, which
   -- holds the categories added after the default one: none on a fresh portal
   methods["crm.deal.category.list"] = function() return {}, { total = 0, rows = 0 } end
end

return _M
