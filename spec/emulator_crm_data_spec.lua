-- The legacy CRM's data against the platform's PHP (yuliai/bitrix-modules at a3a2a579), over real
-- HTTP: dates in the portal's zone and date filters (issue 14 row 4, section 3), the order of a
-- multi-key order and STATUS_ID/STAGE_ID by the status's SORT (row 10), crm.status.list and the
-- categories, user fields (row 7) and crm.<kind>.fields.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local dates = require "b24.emulator.dates"
local cjson = require "cjson"

local call, form = emu.call, emu.form

local function ids(rows)
   local out = {}
   for i, row in ipairs(rows) do out[i] = tonumber(row.ID or row.id) end
   return out
end

local function column(rows, name)
   local out = {}
   for i, row in ipairs(rows) do out[i] = row[name] end
   return out
end

-- The distinct values of a column, in the order they first appear.
local function runs(rows, name)
   local out, last = {}, nil
   for _, row in ipairs(rows) do
      if row[name] ~= last then out[#out + 1] = row[name]; last = row[name] end
   end
   return out
end

-- A JSON body whose order object keeps the keys in the order given (cjson would not).
local function ordered(keys, extra)
   local parts = {}
   for i, k in ipairs(keys) do parts[i] = cjson.encode(k[1]) .. ":" .. cjson.encode(k[2]) end
   return '{"order":{' .. table.concat(parts, ",") .. '}' .. (extra or "") .. "}"
end

describe("emulator CRM data", function()
   local srv
   setup(function()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "20", "--seed-deals", "4",
                                  "--timezone", "+05:00", "--time-scale", "100000" } }
   end)
   teardown(function() if srv then srv:stop() end end)

   -- crm/classes/general/restservice.php internalizeFilterFields (CRestUtil::unConvertDateTime),
   -- main/classes/general/sql_util.php CSqlUtil::PrepareWhere
   describe("row 4: dates in the portal's zone", function()
      local created, t
      setup(function()
         local _, got = call(srv, "crm.lead.get", { id = 1 })
         created = got.result.DATE_CREATE
         t = dates.parse(created, "+00:00")
      end)

      local function count(filter)
         local status, got = call(srv, "crm.lead.list", { filter = filter, select = { "ID" } })
         assert.equal(200, status)
         return got.total
      end

      it("sets DATE_CREATE and DATE_MODIFY on add and update, printed in --timezone", function()
         assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%+05:00$", created)
         local _, id = call(srv, "crm.contact.add", { fields = { NAME = "Dated" } })
         local _, got = call(srv, "crm.contact.get", { id = id.result })
         assert.matches("%+05:00$", got.result.DATE_CREATE)
         assert.equal(got.result.DATE_CREATE, got.result.DATE_MODIFY)
         assert.equal(200, (call(srv, "crm.contact.update", { id = id.result, fields = { NAME = "Redated" } })))
         local _, again = call(srv, "crm.contact.get", { id = id.result })
         assert.is_true(dates.parse(again.result.DATE_MODIFY) >= dates.parse(got.result.DATE_CREATE))
      end)

      it("compares >=, <, <= as times: ISO with any offset, dd.mm.yyyy, yyyy-mm-dd, a time alone", function()
         assert.equal(20, count({ [">=DATE_CREATE"] = dates.format(t - 3600, "+00:00") }))
         assert.equal(20, count({ [">=DATE_CREATE"] = dates.format(t - 3600, "-08:00") }))
         assert.equal(0, count({ [">=DATE_CREATE"] = "01.01.2030" }))
         assert.equal(20, count({ ["<DATE_CREATE"] = "01.01.2030" }))
         assert.equal(20, count({ [">DATE_CREATE"] = "2020-01-01" }))
         assert.equal(0, count({ ["<=DATE_CREATE"] = "2020-01-01 10:00:00" }))
         assert.equal(0, count({ ["<DATE_MODIFY"] = dates.format(t - 1, "+05:00") }))
      end)

      it("matches = by the instant, whatever the offset it is written in", function()
         local _, got = call(srv, "crm.lead.list", { filter = { DATE_CREATE = dates.format(t, "-03:30") },
                                                     select = { "ID", "DATE_CREATE" } })
         assert.is_true(got.total >= 1)
         for _, row in ipairs(got.result) do assert.equal(created, row.DATE_CREATE) end
      end)

      it("reads a value that is no date as IS NULL, and with ! as IS NOT NULL", function()
         assert.equal(0, count({ [">=DATE_CREATE"] = "yesterday-ish" }))
         assert.equal(0, count({ ["<DATE_CREATE"] = "not a date" }))
         assert.equal(20, count({ ["!DATE_CREATE"] = "yesterday-ish" }))
      end)

      it("serves crm.item.list's createdTime the same way", function()
         local _, got = call(srv, "crm.item.list", { entityTypeId = 1, filter = { [">=createdTime"] = "01.01.2030" } })
         assert.equal(0, #got.result.items)
         _, got = call(srv, "crm.item.list", { entityTypeId = 1, filter = { ["<createdTime"] = "01.01.2030" } })
         assert.equal(20, got.total)
      end)
   end)

   -- main/classes/general/sql_util.php CSqlUtil::PrepareSql; restservice.php
   -- CCrmLeadRestProxy/CCrmDealRestProxy::innerGetList; crm_lead.php/crm_deal.php STATUS_SORT
   describe("row 10: order", function()
      local function list(body, method)
         local status, got = call(srv, method or "crm.lead.list", nil, { body = body })
         assert.equal(200, status)
         return got.result
      end

      it("applies a JSON order's keys in the order sent", function()
         local sel = ',"select":["ID","SOURCE_ID"]'
         local rows = list(ordered({ { "SOURCE_ID", "ASC" }, { "ID", "DESC" } }, sel))
         assert.same({ "CALL", "WEB" }, runs(rows, "SOURCE_ID"))
         assert.equal(19, tonumber(rows[1].ID))
         rows = list(ordered({ { "ID", "DESC" }, { "SOURCE_ID", "ASC" } }, sel))
         assert.same({ 20, 19, 18 }, { ids(rows)[1], ids(rows)[2], ids(rows)[3] })
      end)

      it("applies a form's order[KEY] pairs in the order sent", function()
         local _, got = form(srv, "crm.lead.list", "order[SOURCE_ID]=DESC&order[ID]=ASC&select[]=ID&select[]=SOURCE_ID")
         assert.same({ "WEB", "CALL" }, runs(got.result, "SOURCE_ID"))
         assert.equal(2, tonumber(got.result[1].ID))
         -- the query string's order when the body has none (array_replace keeps it)
         _, got = form(srv, "crm.lead.list", "select[]=ID", "order[OPPORTUNITY]=DESC&order[ID]=ASC")
         assert.same({ 20, 19 }, { ids(got.result)[1], ids(got.result)[2] })
      end)

      it("inside a batch, applies the command's order[KEY] pairs in the order sent", function()
         local status, got = emu.batch(srv, {
            { "a", "crm.lead.list?order[SOURCE_ID]=ASC&order[ID]=DESC&select[]=ID&select[]=SOURCE_ID" },
            { "b", "crm.lead.list?order[ID]=DESC&order[SOURCE_ID]=ASC&select[]=ID" } })
         assert.equal(200, status)
         assert.same({ "CALL", "WEB" }, runs(got.result.result.a, "SOURCE_ID"))
         assert.equal(19, ids(got.result.result.a)[1])
         assert.equal(20, ids(got.result.result.b)[1])
      end)

      it("sorts a lead's STATUS_ID by the status's SORT, not as text", function()
         local rows = list('{"order":{"STATUS_ID":"ASC"},"select":["ID","STATUS_ID"]}')
         assert.same({ "NEW", "IN_PROCESS", "PROCESSED", "CONVERTED", "JUNK" }, runs(rows, "STATUS_ID"))
         rows = list('{"order":{"STATUS_ID":"DESC"},"select":["ID","STATUS_ID"]}')
         assert.same({ "JUNK", "CONVERTED", "PROCESSED", "IN_PROCESS", "NEW" }, runs(rows, "STATUS_ID"))
      end)

      it("moves STATUS_ID to the end of the order, as the proxy's unset and append do", function()
         local rows = list(ordered({ { "STATUS_ID", "ASC" }, { "ID", "DESC" } }, ',"select":["ID","STATUS_ID"]'))
         assert.same({ 20, 19 }, { ids(rows)[1], ids(rows)[2] })
      end)

      it("sorts a key that is not exactly STATUS_ID as text, and any direction but ASC as DESC", function()
         local rows = list('{"order":{"status_id":"ASC"},"select":["ID","STATUS_ID"]}')
         assert.same({ "CONVERTED", "IN_PROCESS", "JUNK", "NEW", "PROCESSED" }, runs(rows, "STATUS_ID"))
         rows = list('{"order":{"ID":"down"},"select":["ID"]}')
         assert.equal(20, ids(rows)[1])
      end)

      it("sorts a deal's STAGE_ID by the stage's SORT", function()
         call(srv, "crm.deal.add", { fields = { TITLE = "won", STAGE_ID = "WON" } })
         call(srv, "crm.deal.add", { fields = { TITLE = "executing", STAGE_ID = "EXECUTING" } })
         local rows = list('{"order":{"STAGE_ID":"DESC"},"select":["ID","STAGE_ID"]}', "crm.deal.list")
         assert.same({ "WON", "EXECUTING", "PREPARATION", "NEW" }, runs(rows, "STAGE_ID"))
      end)
   end)

   -- restservice.php CCrmStatusRestProxy, crm_status.php InstallDefault;
   -- crm/lib/controller/category.php listAction; CCrmDealCategoryProxy
   describe("statuses and categories", function()
      it("lists the lead statuses a portal installs, by SORT, with EXTRA", function()
         local status, got = call(srv, "crm.status.list", { filter = { ENTITY_ID = "STATUS" } })
         assert.equal(200, status)
         assert.equal(5, got.total)
         assert.same({ "NEW", "IN_PROCESS", "PROCESSED", "CONVERTED", "JUNK" }, column(got.result, "STATUS_ID"))
         assert.same({ "10", "20", "30", "40", "50" }, column(got.result, "SORT"))
         local junk = got.result[5]
         assert.equal("STATUS", junk.ENTITY_ID)
         assert.equal("Y", junk.SYSTEM)
         assert.equal("F", junk.SEMANTICS)
         assert.same({ SEMANTICS = "failure", COLOR = "#FF5752" }, junk.EXTRA)
         assert.equal(cjson.null, got.result[2].SEMANTICS)
         assert.equal("", got.result[2].NAME_INIT)
      end)

      it("lists deal stages, sources and company types; ENTITY_ID as an array is refused", function()
         local _, got = call(srv, "crm.status.list", { filter = { ENTITY_ID = "DEAL_STAGE" } })
         assert.same({ "NEW", "PREPARATION", "PREPAYMENT_INVOICE", "EXECUTING", "FINAL_INVOICE", "WON", "LOSE",
                       "APOLOGY" }, column(got.result, "STATUS_ID"))
         assert.equal("apology", got.result[8].EXTRA.SEMANTICS)
         assert.equal("success", got.result[6].EXTRA.SEMANTICS)
         _, got = call(srv, "crm.status.list", { filter = { ENTITY_ID = "SOURCE" } })
         assert.equal("CALL", got.result[1].STATUS_ID)
         assert.is_nil(got.result[1].EXTRA)
         _, got = call(srv, "crm.status.list", { filter = { ENTITY_ID = "COMPANY_TYPE" }, order = { SORT = "DESC" } })
         assert.equal("OTHER", got.result[1].STATUS_ID)
         local status, err = call(srv, "crm.status.list", { filter = { ENTITY_ID = { "STATUS" } } })
         assert.equal(400, status)
         assert.equal("Filter by ENTITY_ID must be a string", err.error_description)
      end)

      it("crm.category.list gives the default deal category; leads have none", function()
         local status, got = call(srv, "crm.category.list", { entityTypeId = 2 })
         assert.equal(200, status)
         assert.same({ { id = 0, name = "General", sort = 0, entityTypeId = 2, isDefault = "Y" } },
                     got.result.categories)
         assert.equal(1, got.total)
         status, got = call(srv, "crm.category.list", { entityTypeId = 2, filter = { code = "none" } })
         assert.equal(200, status)
         assert.same({}, got.result.categories)
         local st, err = call(srv, "crm.category.list", { entityTypeId = 1 })
         assert.equal(400, st)
         assert.equal("ENTITY_TYPE_NOT_SUPPORTED", err.error)
      end)

      it("crm.deal.category.list gives the categories beside the default one: none", function()
         local status, got = call(srv, "crm.deal.category.list", {})
         assert.equal(200, status)
         assert.same({}, got.result)
         assert.equal("[]", (select(3, call(srv, "crm.deal.category.list", {}))):match('"result":(%b[])'))
      end)
   end)

   -- rest/lib/userfieldproxy.php, restservice.php CCrmUserFieldRestProxy, internalizeFields,
   -- crm/classes/general/crm_usertype.php PrepareFieldsInfo
   describe("row 7: user fields", function()
      it("adds a field with the UF_CRM_ prefix and answers its new id; get and list show it", function()
         local status, got = call(srv, "crm.lead.userfield.add", { fields = { FIELD_NAME = "rating",
            USER_TYPE_ID = "integer", LABEL = "Rating", XML_ID = "RATING" } })
         assert.equal(200, status)
         local id = got.result
         assert.equal("number", type(id))
         local _, one = call(srv, "crm.lead.userfield.get", { id = id })
         assert.equal("UF_CRM_RATING", one.result.FIELD_NAME)
         assert.equal("CRM_LEAD", one.result.ENTITY_ID)
         assert.equal("integer", one.result.USER_TYPE_ID)
         assert.equal("N", one.result.MULTIPLE)
         assert.equal("100", one.result.SORT)
         assert.same({ en = "Rating" }, one.result.EDIT_FORM_LABEL)
         local _, all = call(srv, "crm.lead.userfield.list", { filter = { FIELD_NAME = "UF_CRM_RATING" } })
         assert.equal(1, all.total)
         assert.equal("Rating", all.result[1].LIST_COLUMN_LABEL)
      end)

      it("reads a form body's fields[LIST][n] items in order", function()
         local status, got = form(srv, "crm.deal.userfield.add", "fields[FIELD_NAME]=size&fields[USER_TYPE_ID]="
            .. "enumeration&fields[LIST][0][VALUE]=S&fields[LIST][1][VALUE]=M&fields[LIST][2][VALUE]=L")
         assert.equal(200, status)
         local _, def = call(srv, "crm.deal.userfield.get", { id = got.result })
         assert.equal("UF_CRM_SIZE", def.result.FIELD_NAME)
         assert.same({ "S", "M", "L" }, column(def.result.LIST, "VALUE"))
         assert.same({ "N", "N", "N" }, column(def.result.LIST, "DEF"))
      end)

      it("refuses a field without USER_TYPE_ID or FIELD_NAME, and a duplicate", function()
         local status, err = call(srv, "crm.deal.userfield.add", { fields = { LABEL = "x" } })
         assert.equal(400, status)
         assert.equal("The 'USER_TYPE_ID' field is not found.\nThe 'FIELD_NAME' field is not found.",
                      err.error_description)
         assert.equal(200, (call(srv, "crm.deal.userfield.add", { fields = { FIELD_NAME = "UF_CRM_TWICE",
            USER_TYPE_ID = "string" } })))
         status, err = call(srv, "crm.deal.userfield.add",
            { fields = { FIELD_NAME = "twice", USER_TYPE_ID = "string" } })
         assert.equal(400, status)
         assert.equal("ERROR_CORE", err.error)
      end)

      it("writes only defined user fields, under their exact names", function()
         call(srv, "crm.contact.userfield.add", { fields = { FIELD_NAME = "NOTE", USER_TYPE_ID = "string" } })
         local _, id = call(srv, "crm.contact.add", { fields = { NAME = "Uf", UF_CRM_NOTE = "kept",
            UF_CRM_UNDEFINED = "dropped", title = "lower case is no field" } })
         local _, got = call(srv, "crm.contact.get", { id = id.result })
         assert.equal("kept", got.result.UF_CRM_NOTE)
         assert.is_nil(got.result.UF_CRM_UNDEFINED)
         local _, listed = call(srv, "crm.contact.list", { filter = { ID = id.result }, select = { "ID", "UF_*" } })
         assert.equal("kept", listed.result[1].UF_CRM_NOTE)
         assert.is_nil(listed.result[1].UF_CRM_UNDEFINED)
      end)

      it("keeps a multiple enumeration's values as a list, and describes it in crm.<kind>.fields", function()
         local _, added = call(srv, "crm.company.userfield.add", { fields = { FIELD_NAME = "TAGS",
            USER_TYPE_ID = "enumeration", MULTIPLE = "Y", MANDATORY = "Y", LABEL = "Tags",
            LIST = { { VALUE = "Red" }, { VALUE = "Blue", SORT = 10 } } } })
         local _, def = call(srv, "crm.company.userfield.get", { id = added.result })
         assert.same({ "Blue", "Red" }, column(def.result.LIST, "VALUE"))
         local blue, red = def.result.LIST[1].ID, def.result.LIST[2].ID
         local _, id = call(srv, "crm.company.add", { fields = { TITLE = "Tagged", UF_CRM_TAGS = { red, blue } } })
         local _, got = call(srv, "crm.company.get", { id = id.result })
         assert.same({ red, blue }, got.result.UF_CRM_TAGS)
         local _, fields = call(srv, "crm.company.fields", {})
         local f = fields.result.UF_CRM_TAGS
         assert.equal("enumeration", f.type)
         assert.is_true(f.isMultiple)
         assert.is_true(f.isRequired)
         assert.is_true(f.isDynamic)
         assert.equal("UF_CRM_TAGS", f.title)
         assert.equal("Tags", f.listLabel)
         assert.same({ { ID = blue, VALUE = "Blue" }, { ID = red, VALUE = "Red" } }, f.items)
         local _, found = call(srv, "crm.company.list", { filter = { UF_CRM_TAGS = red }, select = { "ID" } })
         assert.same({ id.result }, ids(found.result))
         _, found = call(srv, "crm.company.list", { filter = { ["!UF_CRM_TAGS"] = red }, select = { "ID" } })
         assert.equal(0, found.total)
      end)

      it("drops a filter key that names no field (restservice.php internalizeFilterFields)", function()
         local _, all = call(srv, "crm.lead.list", { select = { "ID" } })
         for _, filter in ipairs({ { UF_CRM_NO_SUCH = "x" }, { NO_SUCH_FIELD = 1 }, { title = "nothing" } }) do
            local _, got = call(srv, "crm.lead.list", { filter = filter, select = { "ID" } })
            assert.equal(all.total, got.total)
         end
         local _, got = call(srv, "crm.lead.list", { filter = { [">ID"] = 18 }, select = { "ID" } })
         assert.is_true(got.total < all.total)
      end)

      -- main/classes/general/sql_util.php GetFilterOperation (=% RLIKE, %= LLIKE) and
      -- sqlwhere.php operation M: LIKE with the caller's own wildcards, in any case
      it("reads =% and %= as LIKE with the caller's wildcards, legacy lists and crm.item.list alike", function()
         local _, got = call(srv, "crm.lead.list", { filter = { ["=%TITLE"] = "Lead #1%" }, select = { "ID" } })
         assert.equal(11, got.total) -- #1 and #10 … #19 of the 20 seeded
         _, got = call(srv, "crm.lead.list", { filter = { ["%=TITLE"] = "lead #1_" }, select = { "ID" } })
         assert.equal(10, got.total)
         _, got = call(srv, "crm.lead.list", { filter = { ["!=%TITLE"] = "Lead #1%" }, select = { "ID" } })
         assert.equal(9, got.total)
         _, got = call(srv, "crm.item.list", { entityTypeId = 1, filter = { ["=%title"] = "Lead #2%" } })
         assert.equal(2, #got.result.items) -- #2 and #20
      end)

      it("compares a crm_status field with = where a LIKE is asked", function()
         local _, got = call(srv, "crm.lead.list", { filter = { ["%STATUS_ID"] = "PROC" }, select = { "ID" } })
         assert.equal(0, got.total)
         _, got = call(srv, "crm.lead.list", { filter = { ["%STATUS_ID"] = "JUNK" }, select = { "ID" } })
         assert.equal(4, got.total)
         _, got = call(srv, "crm.lead.list", { filter = { ["%TITLE"] = "Lead #1" }, select = { "ID" } })
         assert.equal(11, got.total)
      end)

      it("updates labels, deletes the field (its values go), and checks the entity of an id", function()
         local _, added = call(srv, "crm.lead.userfield.add",
            { fields = { FIELD_NAME = "GONE", USER_TYPE_ID = "string" } })
         local _, lead = call(srv, "crm.lead.add", { fields = { TITLE = "g", UF_CRM_GONE = "v" } })
         assert.equal(200, (call(srv, "crm.lead.userfield.update", { id = added.result,
            fields = { EDIT_FORM_LABEL = "Renamed" } })))
         local _, def = call(srv, "crm.lead.userfield.get", { id = added.result })
         assert.same({ en = "Renamed" }, def.result.EDIT_FORM_LABEL)
         local status, err = call(srv, "crm.deal.userfield.get", { id = added.result })
         assert.equal(400, status)
         assert.equal("Access denied.", err.error_description)
         assert.equal(200, (call(srv, "crm.lead.userfield.delete", { id = added.result })))
         status, err = call(srv, "crm.lead.userfield.get", { id = added.result })
         assert.equal(400, status)
         assert.equal("ERROR_NOT_FOUND", err.error)
         local _, got = call(srv, "crm.lead.get", { id = lead.result })
         assert.is_nil(got.result.UF_CRM_GONE)
         local _, fields = call(srv, "crm.lead.fields", {})
         assert.is_nil(fields.result.UF_CRM_GONE)
      end)
   end)

   -- CCrmRestHelper::prepareFieldInfos of crm_lead.php/crm_deal.php/crm_contact.php GetFieldsInfo
   describe("crm.<kind>.fields", function()
      it("prints type, the is* flags in camelCase, statusType and the English title", function()
         local _, got = call(srv, "crm.lead.fields", {})
         local f = got.result
         assert.same({ type = "crm_status", isRequired = false, isReadOnly = false, isImmutable = false,
                       isMultiple = false, isDynamic = false, statusType = "STATUS", title = "Stage" }, f.STATUS_ID)
         assert.equal("Lead Title", f.TITLE.title)
         assert.is_true(f.ID.isReadOnly)
         assert.is_true(f.DATE_CREATE.isReadOnly)
         assert.equal("datetime", f.DATE_CREATE.type)
         assert.is_true(f.PHONE.isMultiple)
         assert.is_true(f.CONTACT_ID.isDeprecated)
         assert.same({ parentEntityTypeId = 4 }, f.COMPANY_ID.settings)
         _, got = call(srv, "crm.contact.fields", {})
         assert.is_true(got.result.NAME.isRequired)
         _, got = call(srv, "crm.deal.fields", {})
         assert.is_true(got.result.CATEGORY_ID.isImmutable)
         assert.equal("DEAL_STAGE", got.result.STAGE_ID.statusType)
      end)

      it("prints a date field as ConvertDate does: the day's midnight plus the zone's offset", function()
         local _, id = call(srv, "crm.deal.add", { fields = { TITLE = "dated", BEGINDATE = "07.12.2026",
                                                              CLOSEDATE = "not a date" } })
         local _, got = call(srv, "crm.deal.get", { id = id.result })
         assert.equal("2026-12-07T05:00:00+05:00", got.result.BEGINDATE)
         assert.equal(cjson.null, got.result.CLOSEDATE)
         -- a date field's filter value counts by its day (CRestUtil::unConvertDate)
         local _, found = call(srv, "crm.deal.list", { filter = { [">=BEGINDATE"] = "2026-12-07T18:00:00+05:00" },
                                                       select = { "ID" } })
         assert.same({ id.result }, ids(found.result))
         _, found = call(srv, "crm.deal.list", { filter = { [">BEGINDATE"] = "07.12.2026" }, select = { "ID" } })
         assert.equal(0, found.total)
      end)
   end)
end)

-- rest/lib/userfieldproxy.php add; persist.lua saves every store in portal.stores
describe("emulator CRM data --data", function()
   it("keeps user field definitions and their values across a restart", function()
      local dir = b24.tmpdir()
      local data = dir .. "/portal.json"
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local args = { "--code", emu.CODE, "--data", data }
      local srv = b24.emulate{ args = args }
      call(srv, "crm.deal.userfield.add", { fields = { FIELD_NAME = "DURABLE", USER_TYPE_ID = "string" } })
      local _, id = call(srv, "crm.deal.add", { fields = { TITLE = "d", UF_CRM_DURABLE = "yes" } })
      assert.equal(0, srv:stop())
      srv = b24.emulate{ args = args }
      finally(function() srv:stop() end)
      local _, got = call(srv, "crm.deal.get", { id = id.result })
      assert.equal("yes", got.result.UF_CRM_DURABLE)
      local _, list = call(srv, "crm.deal.userfield.list", {})
      assert.same({ "UF_CRM_DURABLE" }, column(list.result, "FIELD_NAME"))
   end)
end)
