-- crm.item.* and crm.type.* of b24 emulate against the platform's PHP (yuliai/bitrix-modules at
-- a3a2a579): crm/lib/controller/item.php, crm/lib/controller/type.php, crm/lib/Service/Factory/
-- Dynamic.php, crm/lib/Service/Converter.php; over real HTTP.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local core = require "bitrix24.core"
local cjson = require "cjson"

local call = emu.call
local ISO = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[+-]%d%d:%d%d$"

-- A recording receiver of the portal's events: every body on a line of a file.
local function recorder(dir)
   local file = dir .. "/bodies.txt"
   local srv = b24.start{ args = { "--workers", "1" }, script = ([[
      local host = require "b24.host"
      local n = 0
      return function(req)
         n = n + 1
         local f = assert(io.open(%q, "ab"))
         f:write(req.body, "\n")
         f:close()
         host.log("info", "recorded", { seq = "r" .. n .. "r" })
         return 200, { ["Content-Type"] = "text/plain" }, "ok"
      end]]):format(file) }
   -- waits for n deliveries; returns their decoded forms
   function srv.received(n)
      assert(srv:wait_log("seq=r" .. n .. "r"), "delivery " .. n .. " did not arrive")
      local out = {}
      for line in io.lines(file) do out[#out + 1] = core.form_decode(line) end
      return out
   end
   return srv
end

describe("emulator crm.item", function()
   local srv
   setup(function()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "3", "--seed-companies", "2",
                                  "--timezone", "+05:00", "--time-scale", "100000" } }
   end)
   teardown(function() if srv then srv:stop() end end)

   -- crm/lib/controller/type.php listAction, getAction; crm/lib/Service/Converter/Type.php
   describe("crm.type", function()
      it("lists the seeded smart process under types, camel case, flags Y/N, with total", function()
         local status, got = call(srv, "crm.type.list", {})
         assert.equal(200, status)
         assert.equal(1, got.total)
         local t = got.result.types[1]
         assert.equal(1, t.id)
         assert.equal(128, t.entityTypeId)
         assert.equal("Emulated process", t.title)
         assert.equal("Y", t.isStagesEnabled)
         assert.equal("N", t.isCategoriesEnabled)
         assert.equal(cjson.null, t.customSectionId)
         assert.matches("%+05:00$", t.createdTime)
         assert.is_nil(t.relations) -- list prints the columns only
      end)

      it("filters on TypeTable's fields in camel case and refuses others", function()
         local _, got = call(srv, "crm.type.list", { filter = { entityTypeId = 130 } })
         assert.same({}, got.result.types)
         _, got = call(srv, "crm.type.list", { filter = { ["=entityTypeId"] = 128 } })
         assert.equal(1, #got.result.types)
         local status, err = call(srv, "crm.type.list", { filter = { nope = 1 } })
         assert.equal(400, status)
         assert.same({ error = "INVALID_ARG_VALUE",
                       error_description = "Invalid filter: field 'NOPE' is not allowed in filter" }, err)
      end)

      it("gets a type by id with relations, and answers an unknown id with code 0", function()
         local status, got = call(srv, "crm.type.get", { id = 1 })
         assert.equal(200, status)
         assert.equal(128, got.result.type.entityTypeId)
         assert.same({ parent = {}, child = {} }, got.result.type.relations)
         local err
         status, err = call(srv, "crm.type.get", { id = 7 })
         assert.equal(400, status)
         assert.same({ error = "0", error_description = "Smart process not found" }, err)
      end)
   end)

   -- crm/lib/controller/item.php addAction, getAction, updateAction, deleteAction;
   -- crm/lib/Service/Factory/Dynamic.php; crm/lib/Model/Dynamic/PrototypeItem.php
   describe("a smart process item", function()
      it("is added, read, updated, listed and deleted with the platform's shapes", function()
         local status, got = call(srv, "crm.item.add", { entityTypeId = 128,
            fields = { title = "First", begindate = "2026-03-01", ufCrm1_999 = "x" } })
         assert.equal(200, status)
         local item = got.result.item
         local id = item.id
         assert.is_number(id)
         assert.equal(128, item.entityTypeId)
         assert.equal("First", item.title)
         assert.equal("DT128_1:NEW", item.stageId) -- the default category's first stage
         assert.equal(1, item.categoryId)
         assert.equal(1, item.createdBy)
         assert.equal("N", item.opened)
         -- CRestUtil::ConvertDate: the day's midnight shifted by the zone's offset
         assert.equal("2026-03-01T05:00:00+05:00", item.begindate)
         assert.matches(ISO, item.createdTime)
         assert.matches("%+05:00$", item.createdTime)
         assert.equal(item.createdTime, item.updatedTime)
         assert.equal(item.createdTime, item.movedTime)

         status, got = call(srv, "crm.item.get", { entityTypeId = 128, id = id })
         assert.equal(200, status)
         assert.same(item, got.result.item)

         status, got = call(srv, "crm.item.update", { entityTypeId = 128, id = id,
            fields = { title = "Second", stageId = "DT128_1:CLIENT", createdBy = 5 } })
         assert.equal(200, status)
         local updated = got.result.item
         assert.equal("Second", updated.title)
         assert.equal("DT128_1:CLIENT", updated.stageId)
         assert.equal("DT128_1:NEW", updated.previousStageId)
         assert.equal(1, updated.createdBy) -- read-only
         assert.equal(item.createdTime, updated.createdTime)

         -- a stage that is not the category's keeps the item where it was (Field\Stage)
         got = select(2, call(srv, "crm.item.update", { entityTypeId = 128, id = id, fields = { stageId = "NOPE" } }))
         assert.equal("DT128_1:CLIENT", got.result.item.stageId)

         got = select(2, call(srv, "crm.item.list", { entityTypeId = 128, filter = { ["=title"] = "Second" },
                                                      select = { "id", "TITLE" } }))
         assert.same({ { id = id, title = "Second" } }, got.result.items)
         assert.equal(1, got.total)

         local raw
         status, got, raw = call(srv, "crm.item.delete", { entityTypeId = 128, id = id })
         assert.equal(200, status)
         assert.same({}, got.result)
         assert.truthy(raw:find('"result":[]', 1, true))
         local err
         status, err = call(srv, "crm.item.get", { entityTypeId = 128, id = id })
         assert.equal(400, status)
         assert.same({ error = "NOT_FOUND", error_description = "Element not found" }, err)
      end)

      it("gets the type's placeholder title when none is given (Model/Dynamic/Item.php)", function()
         local _, got = call(srv, "crm.item.add", { entityTypeId = 128, fields = {} })
         local item = got.result.item
         assert.equal("Emulated process #" .. emu.str(item.id), item.title)
         _, got = call(srv, "crm.item.update", { entityTypeId = 128, id = item.id, fields = { title = "" } })
         assert.equal("Emulated process #" .. emu.str(item.id), got.result.item.title)
      end)

      it("describes its fields with upperName, statusType and the attributes", function()
         local status, got = call(srv, "crm.item.fields", { entityTypeId = 128 })
         assert.equal(200, status)
         local f = got.result.fields
         assert.same({ type = "crm_status", isRequired = false, isReadOnly = false, isImmutable = false,
                       isMultiple = false, isDynamic = false, title = "STAGE_ID", upperName = "STAGE_ID",
                       statusType = "DYNAMIC_128_STAGE_1" }, f.stageId)
         assert.is_true(f.createdTime.isReadOnly)
         assert.equal("datetime", f.createdTime.type)
         assert.is_true(f.opened.isRequired)
         assert.equal("boolean", f.opened.type)
         assert.equal("BEGINDATE", f.begindate.upperName)
      end)
   end)

   describe("a legacy entity through crm.item", function()
      it("adds a lead the legacy methods read, with the factory's names", function()
         local status, got = call(srv, "crm.item.add", { entityTypeId = 1,
            fields = { title = "Via item", stageId = "IN_PROCESS", opportunity = 12.5, opened = false } })
         assert.equal(200, status)
         local item = got.result.item
         assert.equal(1, item.entityTypeId)
         assert.equal("IN_PROCESS", item.stageId)
         assert.equal(12.5, item.opportunity)
         assert.equal("N", item.opened)
         assert.matches("%+05:00$", item.createdTime)
         local _, lead = call(srv, "crm.lead.get", { id = item.id })
         assert.equal("Via item", lead.result.TITLE)
         assert.equal("IN_PROCESS", lead.result.STATUS_ID)
         assert.equal("12.50", lead.result.OPPORTUNITY)
         assert.equal(item.createdTime, lead.result.DATE_CREATE)
      end)

      it("updates a company's typeId (COMPANY_TYPE) and moves its updatedTime, not createdTime", function()
         local _, got = call(srv, "crm.item.update", { entityTypeId = 4, id = 1,
            fields = { typeId = "PARTNER", isMyCompany = "Y" } })
         assert.equal("PARTNER", got.result.item.typeId)
         assert.equal("N", got.result.item.isMyCompany) -- immutable (Company.php)
         local _, company = call(srv, "crm.company.get", { id = 1 })
         assert.equal("PARTNER", company.result.COMPANY_TYPE)
         assert.equal(got.result.item.updatedTime, company.result.DATE_MODIFY)
      end)

      -- item.php getFm, getFmValues; crm/lib/Multifield/Assembler.php updateCollectionByArray
      it("writes and prints a contact's multi-fields under fm", function()
         local _, got = call(srv, "crm.item.add", { entityTypeId = 3, fields = { name = "Fm",
            fm = { { typeId = "PHONE", value = "+100", valueType = "MOBILE" },
                   { typeId = "EMAIL", value = "a@b.c" } } } })
         local item = got.result.item
         assert.equal(2, #item.fm)
         local phone, email = item.fm[1], item.fm[2]
         assert.same({ "PHONE", "+100", "MOBILE" }, { phone.typeId, phone.value, phone.valueType })
         assert.same({ "EMAIL", "a@b.c", "WORK" }, { email.typeId, email.value, email.valueType })
         assert.is_number(phone.id)
         local _, contact = call(srv, "crm.contact.get", { id = item.id })
         assert.equal("+100", contact.result.PHONE[1].VALUE)
         assert.equal("Y", contact.result.HAS_PHONE)
         -- under an existing id: an empty value removes it, another value changes it
         _, got = call(srv, "crm.item.update", { entityTypeId = 3, id = item.id, fields = { fm = {
            [emu.str(phone.id)] = { typeId = "PHONE", value = "" },
            [emu.str(email.id)] = { typeId = "EMAIL", value = "x@y.z" } } } })
         assert.same({ { id = email.id, typeId = "EMAIL", value = "x@y.z", valueType = "WORK" } },
                     got.result.item.fm)
         assert.equal("N", got.result.item.hasPhone)
         -- a deal has no multi-fields
         _, got = call(srv, "crm.item.add", { entityTypeId = 2, fields = { title = "no fm" } })
         assert.is_nil(got.result.item.fm)
      end)

      -- item.php fieldsAction (getUserFieldsInfo), getJsonForItems (useOriginalUfNames);
      -- crm/lib/Service/Converter.php: UF_CRM_ITEMSPEC is ufCrmItemspec, UF_CRM_7 is ufCrm_7
      it("writes, prints, filters and describes defined user fields only", function()
         local status = call(srv, "crm.deal.userfield.add",
            { fields = { FIELD_NAME = "ITEMSPEC", USER_TYPE_ID = "double" } })
         assert.equal(200, status)
         status = call(srv, "crm.deal.userfield.add", { fields = { FIELD_NAME = "7", USER_TYPE_ID = "string" } })
         assert.equal(200, status)
         local _, got = call(srv, "crm.item.add", { entityTypeId = 2,
            fields = { title = "uf", ufCrmItemspec = 12.5, ufCrm_7 = "seven", ufCrmUndefined = "x" } })
         local item = got.result.item
         assert.equal(12.5, item.ufCrmItemspec)
         assert.equal("seven", item.ufCrm_7)
         assert.is_nil(item.ufCrmUndefined)
         local _, deal = call(srv, "crm.deal.get", { id = item.id })
         assert.equal(12.5, tonumber(deal.result.UF_CRM_ITEMSPEC))
         assert.equal("seven", deal.result.UF_CRM_7)

         _, got = call(srv, "crm.item.get", { entityTypeId = 2, id = item.id, useOriginalUfNames = "Y" })
         assert.equal(12.5, got.result.item.UF_CRM_ITEMSPEC)
         assert.is_nil(got.result.item.ufCrmItemspec)

         _, got = call(srv, "crm.item.list", { entityTypeId = 2, filter = { ufCrmItemspec = 12.5 },
                                               select = { "id", "ufCrmItemspec" } })
         assert.same({ { id = item.id, ufCrmItemspec = 12.5 } }, got.result.items)

         _, got = call(srv, "crm.item.fields", { entityTypeId = 2 })
         local f = got.result.fields.ufCrmItemspec
         assert.equal("UF_CRM_ITEMSPEC", f.upperName)
         assert.equal("double", f.type)
         assert.is_true(f.isDynamic)
         assert.equal("UF_CRM_7", got.result.fields.ufCrm_7.upperName)
      end)

      it("describes a lead's fields as the factory (stageId of STATUS, opened boolean)", function()
         local _, got = call(srv, "crm.item.fields", { entityTypeId = 1 })
         local f = got.result.fields
         assert.equal("STATUS", f.stageId.statusType)
         assert.equal("STAGE_ID", f.stageId.upperName)
         assert.equal("boolean", f.opened.type)
         assert.is_true(f.opened.isRequired)
         assert.is_nil(f.statusId)
         _, got = call(srv, "crm.item.fields", { entityTypeId = 4 })
         assert.is_true(got.result.fields.isMyCompany.isImmutable)
      end)
   end)

   -- main/classes/general/sql_util.php CSqlUtil::PrepareSql: a multi-key order in the order sent
   describe("order", function()
      it("applies the keys of a multi-key order in the order sent", function()
         local function ids(order_json)
            local _, got = call(srv, "crm.item.list", nil, { body = '{"entityTypeId":1,"filter":{"@id":[1,2,3]},' ..
               '"order":' .. order_json .. ',"select":["id"]}' })
            local out = {}
            for i, item in ipairs(got.result.items) do out[i] = item.id end
            return out
         end
         -- seeded leads: 1 and 3 came by CALL, 2 from WEB
         assert.same({ 3, 1, 2 }, ids('{"sourceId":"ASC","id":"DESC"}'))
         assert.same({ 3, 2, 1 }, ids('{"id":"DESC","sourceId":"ASC"}'))
      end)
   end)

   -- crm/lib/controller/item.php getFactory; main/lib/engine/autowire/binder.php;
   -- crm/lib/controller/errorcode.php; rest/lib/engine/restmanager.php createExceptionFromErrors
   describe("errors", function()
      local function fails(method, params, code, desc)
         local status, err = call(srv, method, params)
         assert.equal(400, status, method)
         assert.same({ error = code, error_description = desc }, err, method)
      end

      it("answers a missing or non-numeric parameter as the binder (code 100)", function()
         fails("crm.item.get", { entityTypeId = 1 }, "100", "Could not find value for parameter {id}")
         -- getAction binds id before entityTypeId
         fails("crm.item.get", {}, "100", "Could not find value for parameter {id}")
         fails("crm.item.add", { fields = {} }, "100", "Could not find value for parameter {entityTypeId}")
         fails("crm.item.add", { entityTypeId = 1 }, "100", "Could not find value for parameter {fields}")
         fails("crm.item.list", { entityTypeId = "abc" }, "100",
               "Invalid value {abc} to match with parameter {entityTypeId}. Should be value of type int.")
         fails("crm.item.list", { entityTypeId = 1, filter = "x" }, "100",
               "Invalid value {x} to match with parameter {filter}. Should be value of type array.")
      end)

      it("answers unknown types and items", function()
         fails("crm.item.get", { entityTypeId = 5, id = 1 }, "ENTITY_TYPE_NOT_SUPPORTED",
               "Entity type  is not supported")
         fails("crm.item.list", { entityTypeId = 130 }, "NOT_FOUND", "Smart process not found")
         fails("crm.item.fields", { entityTypeId = 1032 }, "NOT_FOUND", "Smart process not found")
         fails("crm.item.update", { entityTypeId = 2, id = 999, fields = {} }, "NOT_FOUND", "Element not found")
         fails("crm.item.delete", { entityTypeId = 128, id = 999 }, "NOT_FOUND", "Element not found")
      end)
   end)

   -- rest/lib/engine/restmanager.php initialize (DONT_CALCULATE_COUNT), getNavigationData
   describe("row 14: start=-1 on crm.item.list", function()
      it("omits total and next; other starts count", function()
         local status, got, raw = call(srv, "crm.item.list", { entityTypeId = 1, start = -1, select = { "id" } })
         assert.equal(200, status)
         assert.is_true(#got.result.items >= 3)
         assert.is_nil(got.total)
         assert.is_nil(got.next)
         assert.is_nil(raw:find('"total"', 1, true))
         got = select(2, call(srv, "crm.item.list", { entityTypeId = 1, start = 0, select = { "id" } }))
         assert.equal(#got.result.items, got.total)
      end)
   end)

   -- crm/lib/controller/item.php prepareFilter; rest_util.php CRestUtil::unConvertDateTime
   describe("dates", function()
      it("filters createdTime with >, >=, <, <= as dates in any offset", function()
         local _, got = call(srv, "crm.item.add", { entityTypeId = 128, fields = { title = "dated" } })
         local item = got.result.item
         local created = item.createdTime
         -- the same instant written in UTC
         local y, mo, d, h, mi, s = created:match("^(%d+)%-(%d+)%-(%d+)T(%d+):(%d+):(%d+)")
         local utc = os.time{ year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(h),
                              min = tonumber(mi), sec = tonumber(s) } - 5 * 3600
         local in_utc = os.date("%Y-%m-%dT%H:%M:%S", utc) .. "+00:00"
         local function count(filter)
            filter["=id"] = item.id
            local _, list = call(srv, "crm.item.list", { entityTypeId = 128, filter = filter })
            return #list.result.items
         end
         assert.equal(1, count{ [">=createdTime"] = in_utc })
         assert.equal(1, count{ ["<=createdTime"] = in_utc })
         assert.equal(0, count{ [">createdTime"] = in_utc })
         assert.equal(0, count{ ["<createdTime"] = in_utc })
         assert.equal(1, count{ [">updatedTime"] = "01.01.2020" })
         assert.equal(0, count{ [">updatedTime"] = "01.01.2099" })
      end)
   end)
end)

-- Lead.php configureAddOperation … (OnAfterCrmLeadAdd/Update/Delete); Dynamic.php
-- configureAddOperation (onCrmDynamicItemAdd), crm/lib/integration/rest/eventmanager.php
describe("emulator crm.item events", function()
   local dir, rec, srv
   setup(function()
      dir = b24.tmpdir()
      rec = recorder(dir)
      srv = b24.emulate{ args = { "--code", emu.CODE, "--events-to", rec.base .. "/hook" } }
   end)
   teardown(function()
      if srv then srv:stop() end
      if rec then rec:stop() end
      os.execute("rm -rf " .. b24.quote(dir))
   end)

   it("raises the legacy events for a lead and ONCRMDYNAMICITEM* for a smart item", function()
      local _, lead = call(srv, "crm.item.add", { entityTypeId = 1, fields = { title = "ev" } })
      local lead_id = emu.str(lead.result.item.id)
      call(srv, "crm.item.update", { entityTypeId = 1, id = lead.result.item.id, fields = { title = "ev2" } })
      call(srv, "crm.item.delete", { entityTypeId = 1, id = lead.result.item.id })
      local _, item = call(srv, "crm.item.add", { entityTypeId = 128, fields = { title = "ev" } })
      local item_id = emu.str(item.result.item.id)
      call(srv, "crm.item.update", { entityTypeId = 128, id = item.result.item.id, fields = { title = "ev2" } })
      call(srv, "crm.item.delete", { entityTypeId = 128, id = item.result.item.id })
      -- a smart item's change sends the common event and its type's own
      -- (eventmanager.php getItemEventNameWithEntityTypeId), both with ENTITY_TYPE_ID
      local seen = {}
      for _, d in ipairs(rec.received(9)) do
         local f = d.data and (d.data.FIELDS or d.data.FIELDS_AFTER or d.data.FIELDS_BEFORE)
         local line = d.event .. " " .. tostring(type(f) == "table" and f.ID)
         if d.event:find("^ONCRMDYNAMICITEM") then line = line .. " " .. tostring(f.ENTITY_TYPE_ID) end
         seen[#seen + 1] = line
      end
      table.sort(seen)
      local want = { "ONCRMDYNAMICITEMADD " .. item_id .. " 128", "ONCRMDYNAMICITEMADD_128 " .. item_id .. " 128",
                     "ONCRMDYNAMICITEMDELETE " .. item_id .. " 128",
                     "ONCRMDYNAMICITEMDELETE_128 " .. item_id .. " 128",
                     "ONCRMDYNAMICITEMUPDATE " .. item_id .. " 128",
                     "ONCRMDYNAMICITEMUPDATE_128 " .. item_id .. " 128",
                     "ONCRMLEADADD " .. lead_id, "ONCRMLEADDELETE " .. lead_id, "ONCRMLEADUPDATE " .. lead_id }
      assert.same(want, seen)
   end)
end)

describe("emulator crm.item --data", function()
   it("keeps a smart process's items across a restart", function()
      local dir = b24.tmpdir()
      local data = dir .. "/portal.json"
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local args = { "--code", emu.CODE, "--data", data }
      local srv = b24.emulate{ args = args }
      local _, got = call(srv, "crm.item.add", { entityTypeId = 128, fields = { title = "durable" } })
      local id = got.result.item.id
      assert.equal(0, srv:stop())
      srv = b24.emulate{ args = args }
      finally(function() srv:stop() end)
      _, got = call(srv, "crm.item.get", { entityTypeId = 128, id = id })
      assert.equal("durable", got.result.item.title)
      _, got = call(srv, "crm.item.add", { entityTypeId = 128, fields = { title = "next" } })
      assert.equal(id + 1, got.result.item.id)
   end)
end)
