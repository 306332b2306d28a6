-- b24 serve examples/emulate.lua over real HTTP: webhook routing, parameters, envelopes and
-- PHP JSON shapes, the CRM entities and their lists, batch, the leaky bucket, faults and latency.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local core = require "bitrix24.core"
local cjson = require "cjson"

local CODE = "spec0emu0code001"
local SCRIPT = b24.root .. "/examples/emulate.lua"

local function start(env, script)
   return b24.start{ script_path = script or SCRIPT, args = { "--workers", "1" }, env = env }
end

local function path(method, code, user)
   return "/rest/" .. (user or "1") .. "/" .. (code or CODE) .. "/" .. method
end

-- One call with a JSON body: status, decoded body, raw body.
local function call(srv, method, params, opts)
   opts = opts or {}
   local res = assert(srv:request{ method = "POST", path = path(method, opts.code, opts.user),
      headers = { ["Content-Type"] = opts.content_type or "application/json" },
      body = opts.body or cjson.encode(params or {}) })
   return res.status, cjson.decode(res.body), res.body
end

local function form(srv, method, body, query)
   local res = assert(srv:request{ method = "POST", path = path(method) .. (query and "?" .. query or ""),
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }, body = body })
   return res.status, cjson.decode(res.body), res.body
end

-- An id as a portal prints it (cjson decodes JSON numbers as floats in Lua 5.4).
local function str(n)
   return string.format("%d", n)
end

local function ids(rows)
   local out = {}
   for i, row in ipairs(rows) do out[i] = row.ID end
   return out
end

describe("b24 emulate (examples/emulate.lua)", function()
   local srv
   setup(function()
      srv = start("B24_EMU_CODE=" .. CODE .. " B24_EMU_SEED_LEADS=120 B24_EMU_TIME_SCALE=100000")
   end)
   teardown(function() if srv then srv:stop() end end)

   it("keeps every digit of an integer a client sends, as PHP's 64-bit ints do (lua-cjson kept 14)", function()
      local body = '{"fields":{"TITLE":"digits","ASSIGNED_BY_ID":9007199254740993}}'
      local status, added = call(srv, "crm.deal.add", nil, { body = body })
      assert.equal(200, status)
      local _, _, raw = call(srv, "crm.deal.get", nil, { body = '{"id":' .. str(added.result) .. '}' })
      assert.equal("9007199254740993", core.json_decode(raw).result.ASSIGNED_BY_ID)
   end)

   describe("routing", function()
      it("accepts METHOD, METHOD.json, a trailing slash and any case", function()
         for _, m in ipairs({ "crm.lead.get", "crm.lead.get.json", "crm.lead.get/", "CRM.Lead.Get.json/" }) do
            local status, body = call(srv, m, { id = 1 })
            assert.equal(200, status, m)
            assert.equal("1", body.result.ID)
         end
      end)

      it("answers 401 INVALID_CREDENTIALS to a wrong code or user, without echoing the code", function()
         local from = #srv.lines + 1
         local status, body, raw = call(srv, "crm.lead.get", { id = 1 }, { code = "wrong0code000000" })
         assert.equal(401, status)
         assert.same({ error = "INVALID_CREDENTIALS", error_description = "Invalid request credentials" }, body)
         assert.not_matches("wrong0code", raw, 1, true)
         status, body = call(srv, "crm.lead.get", { id = 1 }, { user = "2" })
         assert.equal(401, status)
         assert.equal("INVALID_CREDENTIALS", body.error)
         status = call(srv, "crm.lead.get", { id = 1 }, { code = CODE .. "x" })
         assert.equal(401, status)
         assert.not_matches(CODE, srv:log(from), 1, true)
      end)

      it("answers 404 ERROR_METHOD_NOT_FOUND to an unknown method, before checking auth", function()
         local status, body = call(srv, "crm.nothing.here", {})
         assert.equal(404, status)
         assert.same({ error = "ERROR_METHOD_NOT_FOUND", error_description = "Method not found!" }, body)
         status, body = call(srv, "crm.nothing.here", {}, { code = "wrong0code000000" })
         assert.equal(404, status)
         assert.equal("ERROR_METHOD_NOT_FOUND", body.error)
         local res = assert(srv:request{ path = "/elsewhere" })
         assert.equal(404, res.status)
      end)
   end)

   describe("parameters", function()
      it("reads PHP bracket form bodies", function()
         local status, body = form(srv, "crm.lead.add",
            "fields[TITLE]=Acme+Ltd&fields[PHONE][0][VALUE]=112233&fields[PHONE][0][VALUE_TYPE]=WORK"
            .. "&fields[OPPORTUNITY]=19999.99")
         assert.equal(200, status)
         assert.equal("number", type(body.result))
         local id = body.result
         status, body = form(srv, "crm.lead.get", "id=" .. id)
         assert.equal(200, status)
         assert.equal(str(id), body.result.ID)
         assert.equal("Acme Ltd", body.result.TITLE)
         assert.equal("19999.99", body.result.OPPORTUNITY)
         assert.equal("Y", body.result.HAS_PHONE)
         assert.equal("112233", body.result.PHONE[1].VALUE)
         assert.equal("WORK", body.result.PHONE[1].VALUE_TYPE)
      end)

      it("merges query and body, the body winning", function()
         local _, body = form(srv, "crm.lead.get", "id=2", "id=1")
         assert.equal("2", body.result.ID)
         _, body = form(srv, "crm.lead.get", "", "id=3")
         assert.equal("3", body.result.ID)
         local res = assert(srv:request{ method = "GET", path = path("crm.lead.get") .. "?id=4" })
         assert.equal("4", cjson.decode(res.body).result.ID)
      end)

      -- main/lib/httprequest.php isJson: the media type without parameters, lower-cased
      it("decodes JSON under application/json (parameters ignored); invalid JSON gives no parameters", function()
         local status, body = call(srv, "crm.lead.get", nil, { body = '{"id": 5' })
         assert.equal(400, status)
         assert.same({ error = "", error_description = "ID is not defined or invalid." }, body)
         status, body = call(srv, "crm.lead.add", nil,
            { body = '{"fields":{"TITLE":"typed"}}', content_type = "application/json; charset=utf-8" })
         assert.equal(200, status)
         local _, got = call(srv, "crm.lead.get", { id = body.result })
         assert.equal("typed", got.result.TITLE)
         status, body = call(srv, "crm.lead.add", nil,
            { body = '{"fields":{"TITLE":"typed"}}', content_type = "text/plain" })
         assert.equal(200, status)
         _, got = call(srv, "crm.lead.get", { id = body.result })
         assert.equal(cjson.null, got.result.TITLE)
      end)
   end)

   describe("envelopes", function()
      it("wraps success in result and time with operating and operating_reset_at", function()
         local status, body = call(srv, "crm.lead.get", { id = 1 })
         assert.equal(200, status)
         local t = body.time
         for _, k in ipairs({ "start", "finish", "duration", "processing", "operating", "operating_reset_at" }) do
            assert.equal("number", type(t[k]), k)
         end
         assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[+-]%d%d:%d%d$", t.date_start)
         assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[+-]%d%d:%d%d$", t.date_finish)
         assert.is_true(t.finish >= t.start)
         assert.is_true(t.operating_reset_at > t.start)
      end)

      it("answers legacy CRM errors as HTTP 400 with an empty code and no time", function()
         local status, body = call(srv, "crm.lead.get", { id = 99999 })
         assert.equal(400, status)
         assert.same({ error = "", error_description = "Not found" }, body)
      end)

      it("shapes JSON as PHP does: an empty list is []", function()
         local status, _, raw = call(srv, "crm.lead.list", { filter = { TITLE = "no such title" } })
         assert.equal(200, status)
         assert.matches('"result":[]', raw, 1, true)
         assert.matches('"total":0', raw, 1, true)
      end)

      it("user.current answers the webhook's user", function()
         local status, body = call(srv, "user.current", {})
         assert.equal(200, status)
         assert.equal("1", body.result.ID)
      end)
   end)

   describe("crm entities", function()
      it("adds, gets, updates and deletes a lead", function()
         -- only a defined user field is written (crm/classes/general/restservice.php internalizeFields)
         call(srv, "crm.lead.userfield.add", { fields = { FIELD_NAME = "COLOR", USER_TYPE_ID = "string" } })
         local _, body = call(srv, "crm.lead.add", { fields = { TITLE = "Round", NAME = "Ann",
            EMAIL = { { VALUE = "ann@example.com", VALUE_TYPE = "WORK" } }, UF_CRM_COLOR = "red" } })
         local id = body.result
         assert.equal("number", type(id))
         local _, got = call(srv, "crm.lead.get", { id = id })
         assert.equal(str(id), got.result.ID)
         assert.equal("NEW", got.result.STATUS_ID)
         assert.equal("ann@example.com", got.result.EMAIL[1].VALUE)
         assert.equal("red", got.result.UF_CRM_COLOR)
         local status, upd = call(srv, "crm.lead.update", { id = id, fields = { TITLE = "Renamed", OPPORTUNITY = 5 } })
         assert.equal(200, status)
         assert.is_true(upd.result)
         _, got = call(srv, "crm.lead.get", { id = id })
         assert.equal("Renamed", got.result.TITLE)
         assert.equal("5.00", got.result.OPPORTUNITY)
         assert.equal("Ann", got.result.NAME)
         local _, del = call(srv, "crm.lead.delete", { id = id })
         assert.is_true(del.result)
         local st, gone = call(srv, "crm.lead.get", { id = id })
         assert.equal(400, st)
         assert.equal("Not found", gone.error_description)
         st = call(srv, "crm.lead.update", { id = id, fields = { TITLE = "x" } })
         assert.equal(400, st)
         st = call(srv, "crm.lead.delete", { id = id })
         assert.equal(400, st)
      end)

      it("describes the fields", function()
         local _, body = call(srv, "crm.lead.fields", {})
         assert.equal("string", body.result.TITLE.type)
         assert.is_true(body.result.ID.isReadOnly)
         assert.is_true(body.result.PHONE.isMultiple)
      end)

      for _, kind in ipairs({ "deal", "contact", "company" }) do
         it("serves crm." .. kind .. ".* with the same code", function()
            local _, body = call(srv, "crm." .. kind .. ".add", { fields = { TITLE = "T1", NAME = "N1" } })
            local id = body.result
            assert.equal("number", type(id))
            local _, got = call(srv, "crm." .. kind .. ".get", { id = id })
            assert.equal(str(id), got.result.ID)
            local _, list = call(srv, "crm." .. kind .. ".list", { filter = { ID = id } })
            assert.same({ str(id) }, ids(list.result))
            assert.equal(1, list.total)
            local _, fields = call(srv, "crm." .. kind .. ".fields", {})
            assert.equal("integer", fields.result.ID.type)
            assert.is_true(call(srv, "crm." .. kind .. ".delete", { id = id }) == 200)
         end)
      end
   end)

   describe("lists", function()
      it("pages 50 rows with next and total", function()
         local _, body = call(srv, "crm.lead.list", { filter = { ["<=ID"] = 120 }, select = { "ID" } })
         assert.equal(50, #body.result)
         assert.equal(50, body.next)
         assert.equal(120, body.total)
         assert.equal("1", body.result[1].ID)
         _, body = call(srv, "crm.lead.list", { filter = { ["<=ID"] = 120 }, start = 100 })
         assert.equal(20, #body.result)
         assert.is_nil(body.next)
         assert.equal(120, body.total)
         assert.equal("101", body.result[1].ID)
      end)

      it("skips the count with start=-1: no next, total 0", function()
         local _, body = form(srv, "crm.lead.list", "start=-1&order[ID]=ASC&filter[>ID]=60&select[]=ID")
         assert.equal(50, #body.result)
         assert.equal("61", body.result[1].ID)
         assert.is_nil(body.next)
         assert.equal(0, body.total)
      end)

      it("applies the filter prefixes", function()
         local function q(filter)
            local _, body = call(srv, "crm.lead.list", { filter = filter, select = { "ID" }, order = { ID = "ASC" } })
            return ids(body.result)
         end
         assert.same({ "118", "119", "120" }, q({ [">ID"] = 117, ["<=ID"] = 120 }))
         assert.same({ "117", "118" }, q({ [">=ID"] = 117, ["<ID"] = 119 }))
         assert.same({ "3", "7" }, q({ ["@ID"] = { 3, 7 } }))
         assert.same({ "1", "2", "4" }, q({ ["!@ID"] = { 3 }, ["<ID"] = 5 }))
         assert.same({ "12" }, q({ ["=ID"] = "12" }))
         assert.same({ "1", "3" }, q({ ["!ID"] = 2, ["<ID"] = 4 }))
         assert.same({ "1", "3" }, q({ ["!=ID"] = 2, ["<ID"] = 4 }))
         assert.same({ "11", "110", "111", "112", "113", "114", "115", "116", "117", "118", "119" },
            q({ ["%TITLE"] = "lead #11" }))
         assert.same({ "2", "7" }, q({ STATUS_ID = "IN_PROCESS", ["<ID"] = 10 }))
      end)

      it("orders", function()
         local _, body = call(srv, "crm.lead.list",
            { order = { ID = "DESC" }, filter = { ["<=ID"] = 120 }, select = { "ID" } })
         assert.equal("120", body.result[1].ID)
         assert.equal("71", body.result[50].ID)
      end)

      it("selects * without multi-fields, and multi-fields only when named", function()
         local _, body = call(srv, "crm.lead.list", { filter = { ID = 3 }, select = { "*" } })
         local row = body.result[1]
         assert.equal("Lead #3", row.TITLE)
         assert.equal("Y", row.HAS_PHONE)
         assert.is_nil(row.PHONE)
         _, body = call(srv, "crm.lead.list", { filter = { ID = 3 }, select = { "ID", "PHONE" } })
         row = body.result[1]
         assert.same({ "ID", "PHONE" }, (function()
            local keys = {}
            for k in pairs(row) do keys[#keys + 1] = k end
            table.sort(keys)
            return keys
         end)())
         assert.equal("+15550000003", row.PHONE[1].VALUE)
         _, body = call(srv, "crm.lead.list", { filter = { ID = 3 } })
         assert.is_nil(body.result[1].PHONE)
         assert.equal("Lead #3", body.result[1].TITLE)
      end)
   end)

   describe("batch", function()
      it("runs commands in order with whole-value and inline references", function()
         local status, body = emu.batch(srv, {
            { "c0", "crm.lead.add?fields[TITLE]=from+batch" },
            { "c1", "crm.lead.get?id=$result[c0]" },
            { "c2", "crm.lead.update?id=$result[c0]&fields[TITLE]=renamed+$result[c1][TITLE]" },
            { "c3", "crm.lead.get?id=$result[c1][ID]" },
         }, { halt = 0 })
         assert.equal(200, status)
         local r = body.result
         assert.equal("number", type(r.result.c0))
         assert.equal(str(r.result.c0), r.result.c1.ID)
         assert.is_true(r.result.c2)
         assert.equal("renamed from batch", r.result.c3.TITLE)
         assert.same({}, r.result_error)
         assert.equal("number", type(r.result_time.c1.start))
         assert.equal("number", type(body.time.start))
      end)

      it("chains list pages with $result[…][49][ID], $next and $total", function()
         local _, body = emu.batch(srv, {
            { "c0", "crm.lead.list?filter[%3C%3DID]=120&select[]=ID&order[ID]=ASC" },
            { "c1", "crm.lead.list?filter[>ID]=$result[c0][49][ID]&filter[%3C%3DID]=120&select[]=ID&order[ID]=ASC"
                    .. "&start=-1" },
            { "c2", "crm.lead.list?filter[%3C%3DID]=120&select[]=ID&start=$next[c0]" },
            { "c3", "crm.lead.get?id=$total[c0]" },
         })
         local r = body.result
         assert.equal("51", r.result.c1[1].ID)
         assert.equal("51", r.result.c2[1].ID)
         assert.equal("120", r.result.c3.ID)
         assert.equal(120, r.result_total.c0)
         assert.equal(50, r.result_next.c0)
         assert.equal(0, r.result_total.c1)
         assert.is_nil(r.result_next.c1)
      end)

      it("reports per-command errors in result_error; halt stops at the first", function()
         local _, body = emu.batch(srv, { { "a", "crm.lead.get?id=99999" }, { "b", "crm.lead.get?id=1" },
                                          { "c", "no.such.method" } })
         local r = body.result
         assert.same({ error = "", error_description = "Not found" }, r.result_error.a)
         assert.equal("ERROR_METHOD_NOT_FOUND", r.result_error.c.error)
         assert.equal("1", r.result.b.ID)
         _, body = emu.batch(srv, { { "a", "crm.lead.get?id=99999" }, { "b", "crm.lead.get?id=1" } }, { halt = 1 })
         assert.is_not_nil(body.result.result_error.a)
         assert.is_nil(body.result.result.b)
      end)

      it("answers empty sections as [] and numeric labels as lists", function()
         local _, body, raw = form(srv, "batch", "cmd[0]=crm.lead.get%3Fid%3D99999&cmd[1]=crm.lead.get%3Fid%3D88888")
         assert.matches('"result":[]', raw, 1, true)
         assert.matches('"result_total":[]', raw, 1, true)
         assert.matches('"result_next":[]', raw, 1, true)
         assert.matches('"result_error":[{', raw, 1, true)
         assert.equal(2, #body.result.result_error)
         local _, _, raw2 = call(srv, "batch", { cmd = { x = "crm.lead.list?filter[TITLE]=nothing" } })
         assert.matches('"x":[]', raw2, 1, true)
         assert.matches('"result_error":[]', raw2, 1, true)
      end)

      it("runs 50 commands and refuses the rest with ERROR_BATCH_LENGTH_EXCEEDED", function()
         local cmd = {}
         for i = 0, 51 do cmd[i + 1] = { "c" .. i, "crm.lead.get?id=" .. (i + 1) } end
         local status, body = emu.batch(srv, cmd)
         assert.equal(200, status)
         local r = body.result
         assert.equal("50", r.result.c49.ID)
         assert.is_nil(r.result.c50)
         assert.equal("ERROR_BATCH_LENGTH_EXCEEDED", r.result_error.c50.error)
         assert.equal("ERROR_BATCH_LENGTH_EXCEEDED", r.result_error.c51.error)
      end)

      it("refuses a nested batch", function()
         local _, body = call(srv, "batch", { cmd = { a = "batch?cmd[x]=crm.lead.get%3Fid%3D1" } })
         assert.equal("ERROR_BATCH_METHOD_NOT_ALLOWED", body.result.result_error.a.error)
      end)
   end)
end)

describe("b24 emulate limits", function()
   local function expect_limit(srv, n)
      for i = 1, n do
         local status = call(srv, "crm.lead.list", { start = -1 })
         assert.equal(200, status, "request " .. i)
      end
      local status, body = call(srv, "crm.lead.list", { start = -1 })
      assert.equal(503, status)
      assert.same({ error = "QUERY_LIMIT_EXCEEDED", error_description = "Too many requests" }, body)
   end

   it("answers 503 QUERY_LIMIT_EXCEEDED over 50 requests, a batch counting as one", function()
      local srv = start("B24_EMU_CODE=" .. CODE .. " B24_EMU_TIME_SCALE=0.000001")
      finally(function() srv:stop() end)
      for _ = 1, 49 do assert.equal(200, (call(srv, "crm.lead.list", { start = -1 }))) end
      local cmd = {}
      for i = 0, 9 do cmd["c" .. i] = "crm.lead.list?start=-1" end
      local status, body = call(srv, "batch", { cmd = cmd })
      assert.equal(200, status)
      assert.equal(10, #emu.keys(body.result.result))
      status = call(srv, "crm.lead.list", { start = -1 })
      assert.equal(503, status)
   end)

   it("allows 250 on an enterprise portal", function()
      local srv = start("B24_EMU_CODE=" .. CODE .. " B24_EMU_TIME_SCALE=0.000001 B24_EMU_ENTERPRISE=1")
      finally(function() srv:stop() end)
      expect_limit(srv, 250)
   end)

   it("drains the bucket over (scaled) time", function()
      local srv = start("B24_EMU_CODE=" .. CODE .. " B24_EMU_TIME_SCALE=10")
      finally(function() srv:stop() end)
      local status
      for _ = 1, 500 do
         status = call(srv, "crm.lead.list", { start = -1 })
         if status == 503 then break end
      end
      assert.equal(503, status)
      core.sleep(0.5) -- 5 scaled seconds drain 10 requests
      for i = 1, 5 do assert.equal(200, (call(srv, "crm.lead.list", { start = -1 })), "after drain " .. i) end
   end)
end)

describe("b24 emulate from the repository root", function()
   it("runs as the README shows, with a relative script path", function()
      local srv = start("B24_EMU_CODE=" .. CODE .. " B24_EMU_SEED_LEADS=3", "examples/emulate.lua")
      finally(function() srv:stop() end)
      local status, body = call(srv, "crm.lead.list", { select = { "ID", "TITLE" } })
      assert.equal(200, status)
      assert.equal(3, body.total)
      assert.equal("Lead #1", body.result[1].TITLE)
   end)
end)

describe("b24 emulate faults and latency", function()
   it("rejects with 503 before executing", function()
      local srv = start("B24_EMU_CODE=" .. CODE .. " B24_EMU_FAULTS=503=1")
      finally(function() srv:stop() end)
      local status, body = call(srv, "crm.lead.add", { fields = { TITLE = "never" } })
      assert.equal(503, status)
      assert.equal("QUERY_LIMIT_EXCEEDED", body.error)
   end)

   it("fails with 500 after executing", function()
      local srv = start("B24_EMU_CODE=" .. CODE .. " B24_EMU_FAULTS=500=0.5 B24_EMU_RANDOM_SEED=7")
      finally(function() srv:stop() end)
      local failed = 0
      for i = 1, 20 do
         local status, body = call(srv, "crm.lead.add", { fields = { TITLE = "t" .. i } })
         if status == 500 then
            failed = failed + 1
            assert.equal("INTERNAL_SERVER_ERROR", body.error)
         else
            assert.equal(200, status)
         end
      end
      assert.is_true(failed > 0 and failed < 20)
      local status, body
      repeat status, body = call(srv, "crm.lead.list", { select = { "ID" } }) until status == 200
      assert.equal(20, body.total)
   end)

   it("adds latency to each request", function()
      local srv = start("B24_EMU_CODE=" .. CODE .. " B24_EMU_LATENCY_MS=200")
      finally(function() srv:stop() end)
      local t0 = core.now()
      assert.equal(200, (call(srv, "user.current", {})))
      assert.is_true(core.now() - t0 >= 0.2)
   end)
end)

describe("b24.emulator in process", function()
   it("loads in this interpreter and answers a request table", function()
      local emulator = require "b24.emulator"
      local portal = emulator.new{ code = CODE, seed_leads = 2 }
      local status, headers, body = portal:handle{ method = "POST", path = path("crm.lead.list.json"),
         query = "", headers = { ["content-type"] = "application/json" }, body = '{"select":["ID"]}',
         remote_addr = "127.0.0.1" }
      assert.equal(200, status)
      assert.equal("application/json; charset=utf-8", headers["Content-Type"])
      local got = cjson.decode(body)
      assert.same({ "1", "2" }, ids(got.result))
      assert.equal(2, got.total)
   end)
end)
