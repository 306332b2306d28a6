-- The emulator against the platform's PHP (yuliai/bitrix-modules at a3a2a579, platform 26.250.100),
-- over real HTTP: one describe per row of issue 14's table, each asserting what the portal does.
-- docs/emulator.md names the PHP file of every behaviour.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local cjson = require "cjson"

local call, form = emu.call, emu.form

local function ids(rows)
   local out = {}
   for i, row in ipairs(rows) do out[i] = tonumber(row.ID or row.id) end
   return out
end

local function range(a, b)
   local out = {}
   for i = a, b do out[#out + 1] = i end
   return out
end

describe("emulator as the platform", function()
   local srv
   setup(function()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "120", "--seed-tasks", "120",
                                  "--time-scale", "100000" } }
   end)
   teardown(function() if srv then srv:stop() end end)

   -- main/lib/httprequest.php isJson, main/lib/web/httpheaders.php getContentType
   describe("row 8: the body's media type", function()
      local body = cjson.encode({ filter = { ID = 7 }, select = { "ID" } })

      it("reads JSON under application/json with parameters, in any case, and under +json", function()
         for _, ct in ipairs({ "application/json; charset=utf-8", "Application/JSON", " application/json ;q=1",
                               "application/vnd.api+json" }) do
            local status, got = call(srv, "crm.lead.list", nil, { content_type = ct, body = body })
            assert.equal(200, status, ct)
            assert.same({ 7 }, ids(got.result), ct)
            assert.equal(1, got.total, ct)
         end
      end)

      it("reads a form under any other type, and an invalid JSON body adds nothing", function()
         local status, got = call(srv, "crm.lead.list", nil,
            { content_type = "text/plain", body = "filter[ID]=9&select[]=ID" })
         assert.equal(200, status)
         assert.same({ 9 }, ids(got.result))
         status, got = call(srv, "crm.lead.list", nil,
            { content_type = "application/json; charset=utf-8", body = "filter[ID]=9" })
         assert.equal(200, status)
         assert.equal(120, got.total)
      end)
   end)

   -- rest/classes/general/rest_util.php CRestUtil::sendHeaders, rest/include.php OnBeforeProlog
   describe("row 9: CORS", function()
      it("answers carry Access-Control-Allow-Origin and -Headers, errors too", function()
         local res = assert(srv:request{ method = "POST", path = emu.path("crm.lead.get"),
            headers = { ["Content-Type"] = "application/json" }, body = '{"id":1}' })
         assert.equal(200, res.status)
         assert.equal("*", res.headers["access-control-allow-origin"])
         assert.equal("origin, content-type, accept", res.headers["access-control-allow-headers"])
         res = assert(srv:request{ method = "POST", path = emu.path("crm.lead.get", "wrongcode0000000"),
            headers = { ["Content-Type"] = "application/json" }, body = '{"id":1}' })
         assert.equal(401, res.status)
         assert.equal("*", res.headers["access-control-allow-origin"])
         res = assert(srv:request{ method = "GET", path = emu.path("crm.lead.get.xml") .. "?id=1" })
         assert.equal(200, res.status)
         assert.equal("*", res.headers["access-control-allow-origin"])
      end)

      it("answers a preflight under /rest/ with the headers and an empty body, before credentials", function()
         local res = assert(srv:request{ method = "OPTIONS", path = "/REST/1/nocode/crm.lead.add" })
         assert.equal(200, res.status)
         assert.equal("", res.body)
         assert.equal("*", res.headers["access-control-allow-origin"])
         assert.equal("origin, content-type, accept", res.headers["access-control-allow-headers"])
      end)
   end)

   -- rest/classes/general/rest.php processExecution, rest/classes/general/rest_util.php checkAuth
   describe("row 15: a path without user and code", function()
      it("is 401 NO_AUTH_FOUND for a known method, 404 for an unknown one", function()
         local res = assert(srv:request{ method = "POST", path = "/rest/crm.lead.list",
            headers = { ["Content-Type"] = "application/json" }, body = "{}" })
         assert.equal(401, res.status)
         assert.same({ error = "NO_AUTH_FOUND", error_description = "Wrong authorization data" },
            cjson.decode(res.body))
         res = assert(srv:request{ method = "GET", path = "/rest/crm.lead.list.json" })
         assert.equal(401, res.status)
         res = assert(srv:request{ method = "GET", path = "/rest/crm.nothing.here" })
         assert.equal(404, res.status)
         assert.equal("ERROR_METHOD_NOT_FOUND", cjson.decode(res.body).error)
      end)
   end)

   -- crm/classes/general/restservice.php CCrmRestProxyBase::processMethodRequest
   describe("row 11: scalar filter, order, fields", function()
      it("refuses them with 400, code '' and the PHP's texts", function()
         local status, got = call(srv, "crm.lead.list", { filter = "ID=1" })
         assert.equal(400, status)
         assert.same({ error = "", error_description = "Parameter 'filter' must be array." }, got)
         status, got = call(srv, "crm.lead.list", { order = "ID", filter = "x" })
         assert.equal(400, status)
         assert.same({ error = "", error_description = "Parameter 'order' must be array." }, got)
         status, got = call(srv, "crm.deal.add", { fields = "TITLE" })
         assert.equal(400, status)
         assert.same({ error = "", error_description = "Parameter 'fields' must be array." }, got)
         -- update checks fields before the id
         status, got = call(srv, "crm.lead.update", { id = 999999, fields = "x" })
         assert.equal(400, status)
         assert.equal("Parameter 'fields' must be array.", got.error_description)
         status, got = call(srv, "crm.lead.add", { fields = { TITLE = "p" }, params = "x" })
         assert.equal(400, status)
         assert.equal("Parameter 'params' must be array.", got.error_description)
      end)
   end)

   -- crm/classes/general/restservice.php CCrmRestHelper::resolveArrayParam, resolveEntityID
   describe("row 3: parameter names in other cases", function()
      it("takes FILTER, ORDER, SELECT in upper case, Filter and arFilter", function()
         local _, got = call(srv, "crm.lead.list", { FILTER = { ["<=ID"] = 3 }, ORDER = { ID = "DESC" },
                                                     SELECT = { "ID" } })
         assert.same({ 3, 2, 1 }, ids(got.result))
         assert.same({ "ID" }, emu.keys(got.result[1]))
         _, got = call(srv, "crm.lead.list", { Filter = { ID = 4 } })
         assert.same({ 4 }, ids(got.result))
         _, got = call(srv, "crm.lead.list", { arFilter = { ID = 5 } })
         assert.same({ 5 }, ids(got.result))
         -- the name as given wins over the upper case
         _, got = call(srv, "crm.lead.list", { filter = { ID = 6 }, FILTER = { ID = 8 } })
         assert.same({ 6 }, ids(got.result))
      end)

      it("takes FIELDS in add and update, ID or id (not Id)", function()
         local status, id = call(srv, "crm.contact.add", { FIELDS = { NAME = "Upper" } })
         assert.equal(200, status)
         id = emu.str(id.result)
         local _, got = call(srv, "crm.contact.get", { ID = id })
         assert.equal("Upper", got.result.NAME)
         status = call(srv, "crm.contact.update", { ID = id, arFields = { NAME = "Hungarian" } })
         assert.equal(200, status)
         _, got = call(srv, "crm.contact.get", { id = id })
         assert.equal("Hungarian", got.result.NAME)
         status, got = call(srv, "crm.contact.get", { Id = id })
         assert.equal(400, status)
         assert.equal("ID is not defined or invalid.", got.error_description)
      end)
   end)

   -- rest/classes/general/rest.php IRestService::getNavData/setNavData,
   -- main/classes/general/dbresult.php NavQuery/calculatePageNumber, rest/lib/engine/restmanager.php
   describe("row 6: start", function()
      it("legacy lists round start down to a page: start=49 is rows 1-50, next 50", function()
         local _, got = call(srv, "crm.lead.list", { order = { ID = "ASC" }, select = { "ID" }, start = 49 })
         assert.same(range(1, 50), ids(got.result))
         assert.equal(50, got.next)
         assert.equal(120, got.total)
         _, got = form(srv, "crm.lead.list", "order[ID]=ASC&select[]=ID&start=75")
         assert.same(range(51, 100), ids(got.result))
         assert.equal(100, got.next)
         _, got = call(srv, "crm.lead.list", { order = { ID = "ASC" }, select = { "ID" }, start = 110 })
         assert.same(range(101, 120), ids(got.result))
         assert.is_nil(got.next)
      end)

      it("a legacy page past the end is page 1 with next 50", function()
         local _, got = call(srv, "crm.lead.list", { order = { ID = "ASC" }, select = { "ID" }, start = 500 })
         assert.same(range(1, 50), ids(got.result))
         assert.equal(50, got.next)
         assert.equal(120, got.total)
      end)

      it("a negative start on a legacy list counts nothing", function()
         local _, got = call(srv, "crm.lead.list", { order = { ID = "ASC" }, select = { "ID" }, start = -7 })
         assert.same(range(1, 50), ids(got.result))
         assert.equal(0, got.total)
         assert.is_nil(got.next)
      end)

      it("in a batch too", function()
         local status, got = emu.batch(srv, { { "a", "crm.lead.list?order[ID]=ASC&select[]=ID&start=49" },
                                              { "b", "crm.lead.list?order[ID]=ASC&select[]=ID&start=999" } })
         assert.equal(200, status)
         assert.same(range(1, 50), ids(got.result.result.a))
         assert.equal(50, got.result.result_next.a)
         assert.same(range(1, 50), ids(got.result.result.b))
      end)

      it("ORM lists round down too, and past the end give an empty page", function()
         local _, got = call(srv, "crm.item.list", { entityTypeId = 1, order = { id = "ASC" }, select = { "id" },
                                                     start = 75 })
         assert.same(range(51, 100), ids(got.result.items))
         assert.equal(100, got.next)
         assert.equal(120, got.total)
         _, got = call(srv, "crm.item.list", { entityTypeId = 1, select = { "id" }, start = 500 })
         assert.same({}, got.result.items)
         assert.is_nil(got.next)
         assert.equal(120, got.total)
         _, got = call(srv, "tasks.task.list", { order = { ID = "ASC" }, select = { "ID" }, start = 49 })
         assert.same(range(1, 50), ids(got.result.tasks))
         assert.equal(50, got.next)
         _, got = call(srv, "tasks.task.list", { select = { "ID" }, start = 200 })
         assert.same({}, got.result.tasks)
         assert.is_nil(got.next)
      end)
   end)

   -- rest/classes/general/rest_provider.php CRestProvider::methodsBatch,
   -- rest/classes/general/rest_util.php processBatchElement/processBatchStructure
   describe("row 13: batch references, cmd and halt", function()
      it("gives successes a result_time and errors none", function()
         local status, got = emu.batch(srv, { { "a", "crm.lead.get?id=1" }, { "b", "crm.lead.get?id=999999" } })
         assert.equal(200, status)
         assert.equal("number", type(got.result.result_time.a.start))
         assert.same({ "a" }, emu.keys(got.result.result_time))
         assert.same({ "b" }, emu.keys(got.result.result_error))
      end)

      it("stops a missing path at the deepest value found, and leaves a non-scalar in text as written", function()
         local _, got = emu.batch(srv, {
            { "a", "crm.lead.list?order[ID]=ASC&filter[%3C%3DID]=3&select[]=ID" },
            -- an add's result is the id: [ID] is not set in a number, so the walk stops at the id
            { "n", "crm.lead.add?fields[TITLE]=deep" },
            { "b", "crm.lead.get?id=$result[n][ID]" },
            -- inside a text, an array is not replaced: [9] is past a's 3 rows, the walk stops at
            -- a's list and the title keeps the reference
            { "c", "crm.lead.add?fields[TITLE]=x+$result[a][9][ID]" },
            { "d", "crm.lead.get?id=$result[c]" },
         })
         assert.same({}, got.result.result_error)
         assert.equal("deep", got.result.result.b.TITLE)
         assert.equal("x $result[a][9][ID]", got.result.result.d.TITLE)
      end)

      it("resolves $time[…] and $error[…]; upper-case kinds name nothing", function()
         local _, got = emu.batch(srv, {
            { "a", "crm.lead.get?id=999999" },
            { "b", "crm.lead.add?fields[TITLE]=$error[a][error_description]&fields[COMMENTS]=$time[b0][duration]" },
            { "b0", "crm.lead.get?id=1" },
            { "c", "crm.lead.update?id=$result[b]&fields[COMMENTS]=t+$time[b0][start]&fields[NAME]=n+$RESULT[b]" },
            { "d", "crm.lead.get?id=$result[b]" },
         })
         assert.same({}, got.result.result_error.b or {})
         local lead = got.result.result.d
         assert.equal("Not found", lead.TITLE)
         assert.matches("^t %d+%.?%d*", lead.COMMENTS)
         assert.equal("n $RESULT[b]", lead.NAME)
      end)

      it("takes CMD and HALT in any case, halt as PHP reads it", function()
         local status, got = call(srv, "batch", nil,
            { body = '{"Halt":"N","CMD":{"a":"crm.lead.get?id=999999","b":"crm.lead.get?id=1"}}' })
         assert.equal(200, status)
         assert.same({ "a" }, emu.keys(got.result.result_error))
         assert.same({}, got.result.result)
         status, got = form(srv, "batch", "HALT=0&Cmd[a]=crm.lead.get%3Fid%3D999999&Cmd[b]=crm.lead.get%3Fid%3D1")
         assert.equal(200, status)
         assert.equal(1, tonumber(got.result.result.b.ID))
         status, got = emu.batch(srv, { { "a", "crm.lead.get?id=999999" }, { "b", "crm.lead.get?id=1" } },
                                 { halt = "false" })
         assert.equal(200, status)
         assert.is_nil(got.result.result.b)
         status, got = emu.batch(srv, { { "a", "crm.lead.get?id=999999" }, { "b", "crm.lead.get?id=1" } },
                                 { halt = 0 })
         assert.equal(200, status)
         assert.equal(1, tonumber(got.result.result.b.ID))
      end)

      it("passes over a command that is not a string", function()
         local status, got = call(srv, "batch", { cmd = { a = 5, b = "crm.lead.get?id=2" } })
         assert.equal(200, status)
         assert.same({ "b" }, emu.keys(got.result.result))
         assert.same({}, got.result.result_error)
      end)
   end)

   -- rest/lib/api/user.php User::userCurrent, getUserData, $allowedUserFields, isAdmin
   describe("row 12: user.current and user.admin", function()
      it("user.current shows the allowed fields only: no ADMIN, UF_DEPARTMENT and IS_ONLINE", function()
         local status, got = call(srv, "user.current", {})
         assert.equal(200, status)
         local user = got.result
         assert.is_nil(user.ADMIN)
         assert.equal("1", user.ID)
         assert.is_true(user.ACTIVE)
         assert.equal("Y", user.IS_ONLINE)
         assert.same({ 1 }, user.UF_DEPARTMENT)
         assert.equal("", user.XML_ID)
         assert.equal("employee", user.USER_TYPE)
         assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%+00:00$", user.LAST_LOGIN)
         local allowed = {}
         for _, name in ipairs(require("b24.emulator.users").ALLOWED) do allowed[name] = true end
         for name in pairs(user) do assert.is_true(allowed[name], name) end
      end)

      it("user.admin answers whether the webhook's user administers the portal", function()
         local status, got = call(srv, "user.admin", {})
         assert.equal(200, status)
         assert.is_true(got.result)
         status, got = emu.batch(srv, { { "a", "user.admin" } })
         assert.equal(200, status)
         assert.is_true(got.result.result.a)
      end)
   end)

   -- crm/lib/controller/item.php listAction, crm/lib/controller/validator/filter.php and
   -- order.php, rest/lib/engine/restmanager.php createExceptionFromErrors
   describe("row 2: crm.item.list refuses an unknown filter field and a bad order", function()
      local function refused(params, text)
         params.entityTypeId = params.entityTypeId or 1
         local status, got = call(srv, "crm.item.list", params)
         assert.equal(400, status)
         assert.same({ error = "INVALID_ARG_VALUE", error_description = text }, got)
      end

      it("names the converted field of the filter", function()
         refused({ filter = { noSuchField = 1 } }, "Invalid filter: field 'NO_SUCH_FIELD' is not allowed in filter")
         -- the converter's cache does not know ">ID": it becomes ">_ID"
         refused({ filter = { [">ID"] = 1 } }, "Invalid filter: field '>_ID' is not allowed in filter")
         refused({ filter = { [">title"] = { "a" } } }, "Invalid filter: field '>TITLE' has invalid value")
      end)

      it("refuses an unknown order field and a direction other than ASC/DESC", function()
         refused({ order = { nope = "ASC" } }, "Invalid order: field 'NOPE' is not allowed in order")
         refused({ order = { id = "up" } },
            "Invalid order: allowed sort directions are ASC, DESC. But got 'up' for field 'ID'")
         -- the filter is checked first
         refused({ filter = { bad = 1 }, order = { nope = "ASC" } },
            "Invalid filter: field 'BAD' is not allowed in filter")
      end)

      it("takes known fields with any allowed prefix, lower-case directions, and in a batch", function()
         local status, got = call(srv, "crm.item.list", { entityTypeId = 1, order = { id = "desc" }, select = { "id" },
            filter = { [">=id"] = 118, ["<=id"] = 120, ["!@id"] = { 120 } } })
         assert.equal(200, status)
         assert.same({ 119, 118 }, ids(got.result.items))
         status, got = emu.batch(srv, { { "a", "crm.item.list?entityTypeId=1&filter[bogus]=1" } })
         assert.equal(200, status)
         assert.equal("INVALID_ARG_VALUE", got.result.result_error.a.error)
      end)
   end)

   -- crm/lib/Service/Factory/Lead.php and Company.php getFieldsMap, crm/lib/controller/item.php
   describe("row 1: crm.item.list names a lead's status stageId, a company's type typeId", function()
      it("prints and filters a lead's STATUS_ID as stageId (statusId, the column, still filters)", function()
         local status, got = call(srv, "crm.item.list", { entityTypeId = 1, order = { id = "ASC" },
            filter = { stageId = "JUNK", ["<=id"] = 120 } })
         assert.equal(200, status)
         assert.equal(24, #got.result.items)
         assert.equal("JUNK", got.result.items[1].stageId)
         assert.is_nil(got.result.items[1].statusId)
         local _, by_column = call(srv, "crm.item.list", { entityTypeId = 1, select = { "id" },
            filter = { statusId = "JUNK", ["<=id"] = 120 } })
         assert.equal(24, #by_column.result.items)
         local _, sorted = call(srv, "crm.item.list", { entityTypeId = 1, order = { stageId = "DESC" },
                                                        select = { "id", "stageId" }, filter = { ["<=id"] = 10 } })
         assert.equal("PROCESSED", sorted.result.items[1].stageId)
      end)

      it("prints and filters a company's COMPANY_TYPE as typeId", function()
         local status, added = call(srv, "crm.company.add", { fields = { TITLE = "Typed", COMPANY_TYPE = "PARTNER" } })
         assert.equal(200, status)
         local _, got = call(srv, "crm.item.list", { entityTypeId = 4, filter = { typeId = "PARTNER" } })
         assert.equal(1, #got.result.items)
         assert.equal(tonumber(added.result), got.result.items[1].id)
         assert.equal("PARTNER", got.result.items[1].typeId)
         assert.is_nil(got.result.items[1].companyType)
      end)
   end)
end)

describe("row 16: the operating budget's default", function()
   it("is loadlimiter.php's $limitTime, 420 s per method per 10-minute window, an option", function()
      local limits = require "b24.emulator.limits"
      local l = limits.new{ clock = function() return 0 end, wall = function() return 0 end }
      assert.equal(420, l.operating_limit)
      assert.equal(600, l.window)
      assert.equal(90, limits.new{ operating_limit = 90, clock = function() return 0 end }.operating_limit)
   end)
end)
