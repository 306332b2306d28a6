-- bitrix24.event: deliveries decoded into events from the captured vectors (form and JSON), the
-- task ID rules of protocol.md §6, parse failures as bitrix24.Error by code, and fetch with a
-- stub client.
local core = require "bitrix24.core"
local event = require "bitrix24.event"
local Error = require "bitrix24.error"
local cjson = require("cjson.safe").new()

local FORM = "application/x-www-form-urlencoded"
local JSON = "application/json"

local shared = require "helpers.shared"
local shared_dir, read = function() return shared.dir end, shared.read

local EVENTS = shared_dir() .. "/vectors/events/"

-- The event's fields without the raw body (which differs between a form and a JSON body).
local function fields_of(e)
   local t = {}
   for k, v in pairs(e) do
      if k ~= "raw" then t[k] = v end
   end
   return t
end

local unpack = table.unpack or unpack

-- A stub REST client: records each call and answers with the given values.
local function stub_client(...)
   local answers = { n = select("#", ...), ... }
   local client = { calls = {} }
   function client:call(method, params)
      self.calls[#self.calls + 1] = { method = method, params = params }
      return unpack(answers, 1, answers.n)
   end
   return client
end

local FORM_VECTORS = { "app-oncrmcontactadd", "webhook-ontaskcommentadd" }

describe("bitrix24.event", function()
   describe("parse", function()
      for _, name in ipairs(FORM_VECTORS) do
         it("decodes the captured " .. name .. " form body to the expected event", function()
            local raw = read(EVENTS .. name .. ".form")
            local expected = assert(cjson.decode(read(EVENTS .. name .. ".expected.json")))
            local e = assert(event.parse(raw, FORM))
            assert.equal(expected.event, e.name)
            assert.same(expected.data, e.data)
            assert.same(expected.auth, e.auth)
            assert.equal(expected.ts, e.ts)
            assert.equal(expected.auth.domain, e.domain)
            assert.equal(expected.auth.member_id, e.member_id)
            assert.equal(raw, e.raw)
         end)

         it("gives an equal event for the " .. name .. " body sent as JSON", function()
            local from_form = assert(event.parse(read(EVENTS .. name .. ".form"), FORM))
            local json = read(EVENTS .. name .. ".expected.json")
            local from_json = assert(event.parse(json, JSON))
            assert.same(fields_of(from_form), fields_of(from_json))
            assert.equal(json, from_json.raw)
         end)
      end

      it("refuses the issue's hostile JSON body (30,000-byte key, 20,000 ones) in bounded memory", function()
         local body = '{"event":"X","' .. ("k"):rep(30000) .. '":[' .. ("1,"):rep(19999) .. '1]}'
         collectgarbage("collect")
         collectgarbage("stop")
         local before = collectgarbage("count")
         local e, err = event.parse(body, "application/json")
         local grew = collectgarbage("count") - before
         collectgarbage("restart")
         assert.is_nil(e)
         assert.equal("too_many", err.code)
         assert.is_true(grew < 16 * #body / 1024, grew .. " KiB") -- 16 times the body at most
         local router = require("bitrix24").router{ insecure = true }
         local v = router:accept{ method = "POST", headers = { ["content-type"] = "application/json" },
                                  body = body }
         assert.equal(400, v.status)
      end)

      it("takes a task comment's ID from FIELDS_AFTER.ID when the portal sends no MESSAGE_ID", function()
         local e = assert(event.parse("event=ONTASKCOMMENTUPDATE&data[FIELDS_AFTER][ID]=77"
                                      .. "&data[FIELDS_AFTER][TASK_ID]=5", FORM))
         assert.equal("77", e.id)
         assert.equal("5", e.task_id)
      end)

      it("takes a smart-process item's ENTITY_TYPE_ID beside its ID", function()
         local e = assert(event.parse("event=ONCRMDYNAMICITEMUPDATE&data[FIELDS][ID]=22"
                                      .. "&data[FIELDS][ENTITY_TYPE_ID]=1224", FORM))
         assert.equal("22", e.id)
         assert.equal("1224", e.entity_type_id)
         assert.is_nil(e.task_id)
      end)

      it("takes the contact ID of the app vector from FIELDS", function()
         local e = assert(event.parse(read(EVENTS .. "app-oncrmcontactadd.form"), FORM))
         assert.equal("ONCRMCONTACTADD", e.name)
         assert.equal("134806", e.id)
      end)

      it("takes the ONTASKCOMMENTADD comment from MESSAGE_ID (ID is 0) with TASK_ID, keeps 'undefined'", function()
         local e = assert(event.parse(read(EVENTS .. "webhook-ontaskcommentadd.form"), FORM))
         assert.equal("48760", e.id)
         assert.equal("2536", e.task_id)
         assert.equal("undefined", e.data.FIELDS_BEFORE)
         assert.equal("undefined", e.data.IS_ACCESSIBLE_AFTER)
         assert.equal("N", e.data.IS_ACCESSIBLE_BEFORE)
      end)

      describe("the webhook-oncrmdealadd JSON vector", function()
         local json = read(EVENTS .. "webhook-oncrmdealadd.json")
         local t = assert(cjson.decode(json))

         it("decodes to the deal event", function()
            local e = assert(event.parse(json, JSON))
            assert.equal("ONCRMDEALADD", e.name)
            assert.equal("7405", e.id)
            assert.same(t.data, e.data)
            assert.same(t.auth, e.auth)
            assert.equal("1766047124", e.ts)
            assert.equal("some-domain.bitrix24.com", e.domain)
            assert.equal("d897063e1ce7c5eb9f04b9751eef5915", e.member_id)
            assert.equal(json, e.raw)
         end)

         it("gives an equal event form-encoded with core.form_encode", function()
            local form = core.form_encode(t)
            local from_form = assert(event.parse(form, FORM))
            local from_json = assert(event.parse(json, JSON))
            assert.same(fields_of(from_json), fields_of(from_form))
            assert.equal(form, from_form.raw)
         end)
      end)

      it("reads JSON numbers and booleans as the form would carry them: IDs stay strings", function()
         local e = assert(event.parse(
            '{"event":"onCrmLeadAdd","ts":1766047124,"data":{"FIELDS":{"ID":42}},"auth":{"x":true,"y":null}}',
            JSON))
         assert.equal("ONCRMLEADADD", e.name)
         assert.equal("42", e.id)
         assert.equal("1766047124", e.ts)
         assert.same({ x = "1" }, e.auth)
         local f = assert(event.parse("event=onCrmLeadAdd&ts=1766047124&data[FIELDS][ID]=42&auth[x]=1", FORM))
         assert.same(fields_of(f), fields_of(e))
      end)

      it("takes content types with parameters and in any case", function()
         assert.equal("form", event.content_kind("Application/X-WWW-Form-URLencoded; charset=UTF-8"))
         assert.equal("json", event.content_kind(" application/json ;charset=utf-8"))
         assert.is_nil(event.content_kind("text/plain"))
         assert.is_nil(event.content_kind("application/jsonx"))
         assert.is_nil(event.content_kind(nil))
      end)

      it("returns nil, err (a bitrix24.Error, the kind as its code) for what is not an event", function()
         local cases = {
            { "event=X", "text/plain", "unsupported" },
            { "{", JSON, "malformed" },
            { "[1,2]", JSON, "malformed" },
            { '"event"', JSON, "malformed" },
            { '{"event":1e999}', JSON, "malformed" },
            { "data[FIELDS][ID]=1", FORM, "malformed" },
            { '{"data":{}}', JSON, "malformed" },
            { "event[]=X", FORM, "malformed" },
            { "event=", FORM, "malformed" },
         }
         for _, c in ipairs(cases) do
            local e, err = event.parse(c[1], c[2])
            assert.is_nil(e, c[1])
            assert.is_true(Error.is(err))
            assert.equal("string", type(err.description))
            assert.equal(c[3], err.code, c[1])
            assert.matches(err.description, tostring(err), 1, true)
         end
      end)

      it("passes the limits to the decoder: too_many, too_deep, too_large", function()
         local limits = { max_depth = 3, max_pairs = 4, max_size = 200 }
         local function code(raw, content_type) return select(2, event.parse(raw, content_type, limits)).code end
         assert.equal("too_many", code("event=X&a=1&b=2&c=3&d=4", FORM))
         assert.equal("too_deep", code("event=X&a[b][c][d][e]=1", FORM))
         assert.equal("too_large", code("event=X&a=" .. string.rep("x", 300), FORM))
         assert.equal("too_large", code('{"event":"X","a":"' .. string.rep("x", 300) .. '"}', JSON))
         assert.equal("too_many", code('{"event":"X","a":1,"b":2,"c":3,"d":4}', JSON))
         local e, err = event.parse('{"event":"X","a":{"b":{"c":{"d":{"e":1}}}}}', JSON, limits)
         assert.is_nil(e)
         assert.is_truthy(err.code == "too_deep" or err.code == "malformed")
      end)

      it("raises when the body is not a string", function()
         assert.has_error(function() event.parse(nil, FORM) end)
      end)
   end)

   describe("task events (protocol.md §6)", function()
      local function task_body(name, before, after, acc_before, acc_after)
         local parts = { "event=" .. name }
         parts[#parts + 1] = before and ("data[FIELDS_BEFORE][ID]=" .. before) or "data[FIELDS_BEFORE]=undefined"
         parts[#parts + 1] = after and ("data[FIELDS_AFTER][ID]=" .. after) or "data[FIELDS_AFTER]=undefined"
         parts[#parts + 1] = "data[IS_ACCESSIBLE_BEFORE]=" .. acc_before
         parts[#parts + 1] = "data[IS_ACCESSIBLE_AFTER]=" .. acc_after
         parts[#parts + 1] = "ts=1769071218&auth[domain]=b24-x.bitrix24.ru&auth[member_id]=m1"
         return table.concat(parts, "&")
      end

      it("ONTASKADD: the ID from FIELDS_AFTER, FIELDS_BEFORE kept as 'undefined'", function()
         local e = assert(event.parse(task_body("ONTASKADD", nil, "17", "N", "undefined"), FORM))
         assert.equal("17", e.id)
         assert.equal("undefined", e.data.FIELDS_BEFORE)
         assert.same({ ID = "17" }, e.data.FIELDS_AFTER)
         assert.equal("N", e.data.IS_ACCESSIBLE_BEFORE)
         assert.equal("undefined", e.data.IS_ACCESSIBLE_AFTER)
      end)

      it("ONTASKUPDATE: the ID from FIELDS_AFTER", function()
         local e = assert(event.parse(task_body("ONTASKUPDATE", "18", "18", "undefined", "undefined"), FORM))
         assert.equal("18", e.id)
         assert.same({ ID = "18" }, e.data.FIELDS_BEFORE)
      end)

      it("ONTASKDELETE: the ID from FIELDS_BEFORE, FIELDS_AFTER kept as 'undefined'", function()
         local e = assert(event.parse(task_body("ONTASKDELETE", "19", nil, "undefined", "N"), FORM))
         assert.equal("19", e.id)
         assert.equal("undefined", e.data.FIELDS_AFTER)
         assert.equal("N", e.data.IS_ACCESSIBLE_AFTER)
      end)

      it("keeps a literal 'undefined' ID as it comes", function()
         local e = assert(event.parse("event=ONTASKUPDATE&data[FIELDS_AFTER][ID]=undefined", FORM))
         assert.equal("undefined", e.id)
      end)
   end)

   describe("decode, name_of, auth_of", function()
      it("give what parse and its pre-scans find, from one decoded table", function()
         local raw = "event=onCrmLeadAdd&data[FIELDS][ID]=5&auth[application_token]=t&auth[member_id]=m"
         local fields = assert(event.decode(raw, FORM))
         assert.equal("ONCRMLEADADD", event.name_of(fields))
         assert.equal(event.name(raw, FORM), event.name_of(fields))
         assert.same(event.auth(raw, FORM), event.auth_of(fields))
         assert.same(event.parse(raw, FORM).auth, event.auth_of(fields))
         assert.equal("5", event.new(fields, raw).id)
      end)

      it("give empty answers for a body without them, and decode's errors as parse's", function()
         local fields = assert(event.decode("x=1", FORM))
         assert.equal("", event.name_of(fields))
         assert.same({}, event.auth_of(fields))
         assert.same({}, event.auth_of(assert(event.decode("auth=flat", FORM))))
         local none, err = event.decode("x=1", "text/plain")
         assert.is_nil(none)
         assert.equal("unsupported", err.code)
         none, err = event.decode("a" .. string.rep("[a]", 65) .. "=1", FORM)
         assert.is_nil(none)
         assert.equal("too_deep", err.code)
         assert.has_error(function() event.decode(nil, FORM) end)
      end)
   end)

   describe("kind", function()
      it("tells add, update, delete and other apart by the name's tail", function()
         assert.equal("add", event.kind("ONCRMLEADADD"))
         assert.equal("update", event.kind("ONTASKUPDATE"))
         assert.equal("delete", event.kind("ONCRMDEALDELETE"))
         assert.equal("other", event.kind("ONAPPINSTALL"))
         assert.equal("other", event.kind(nil))
      end)
   end)

   describe("fetch", function()
      local function ev(name, id)
         return assert(event.parse("event=" .. name .. "&data[FIELDS][ID]=" .. id, FORM))
      end

      local CRM = {
         ONCRMLEADADD = "crm.lead.get", ONCRMLEADUPDATE = "crm.lead.get",
         ONCRMDEALADD = "crm.deal.get", ONCRMDEALUPDATE = "crm.deal.get",
         ONCRMCONTACTADD = "crm.contact.get", ONCRMCONTACTUPDATE = "crm.contact.get",
         ONCRMCOMPANYADD = "crm.company.get", ONCRMCOMPANYUPDATE = "crm.company.get",
      }
      for name, method in pairs(CRM) do
         it("calls " .. method .. " { id } for " .. name, function()
            local client = stub_client({ ID = "5" })
            local res = ev(name, "5"):fetch(client)
            assert.same({ ID = "5" }, res)
            assert.same({ { method = method, params = { id = "5" } } }, client.calls)
         end)
      end

      it("calls tasks.task.get { taskId } for ONTASKADD and ONTASKUPDATE and returns the task itself", function()
         for _, name in ipairs{ "ONTASKADD", "ONTASKUPDATE" } do
            local client = stub_client({ task = { id = "17" } })
            local e = assert(event.parse("event=" .. name ..
               "&data[FIELDS_BEFORE]=undefined&data[FIELDS_AFTER][ID]=17", FORM))
            assert.same({ id = "17" }, e:fetch(client))
            assert.same({ { method = "tasks.task.get", params = { taskId = "17" } } }, client.calls)
         end
         -- a task that is gone or hidden: the portal answers []
         local e = assert(event.parse("event=ONTASKUPDATE&data[FIELDS_AFTER][ID]=18", FORM))
         local res, err = e:fetch(stub_client({}))
         assert.is_nil(res)
         assert.equal("not_found", err.code)
      end)

      it("calls crm.item.get { entityTypeId, id } for smart-process items and returns the item", function()
         local client = stub_client({ item = { id = 22, entityTypeId = 1224 } })
         local e = assert(event.parse("event=ONCRMDYNAMICITEMUPDATE&data[FIELDS][ID]=22"
            .. "&data[FIELDS][ENTITY_TYPE_ID]=1224", FORM))
         assert.same({ id = 22, entityTypeId = 1224 }, e:fetch(client))
         assert.same({ { method = "crm.item.get", params = { entityTypeId = "1224", id = "22" } } }, client.calls)
      end)

      it("calls task.commentitem.get { TASKID, ITEMID } for a task comment", function()
         local client = stub_client({ ID = "3157", POST_MESSAGE = "hi" })
         local e = assert(event.parse("event=ONTASKCOMMENTADD&data[FIELDS_AFTER][ID]=3157"
            .. "&data[FIELDS_AFTER][TASK_ID]=8017", FORM))
         assert.same({ ID = "3157", POST_MESSAGE = "hi" }, e:fetch(client))
         assert.same({ { method = "task.commentitem.get", params = { TASKID = "8017", ITEMID = "3157" } } },
            client.calls)
      end)

      it("returns what client:call returns, nil and its error included", function()
         local failure = { code = "ERROR_NOT_FOUND" }
         local client = stub_client(nil, failure)
         local res, err = ev("ONCRMLEADADD", "9"):fetch(client)
         assert.is_nil(res)
         assert.equal(failure, err)
      end)

      it("returns nil, err without calling for deletes", function()
         for _, name in ipairs{ "ONCRMLEADDELETE", "ONCRMDEALDELETE", "ONTASKDELETE" } do
            local client = stub_client(true)
            local res, err = ev(name, "5"):fetch(client)
            assert.is_nil(res)
            assert.is_true(Error.is(err))
            assert.matches("delete", tostring(err))
            assert.same({}, client.calls)
         end
      end)

      it("returns nil, err without calling for events with no known get method or no ID", function()
         local client = stub_client(true)
         for _, e in ipairs{ ev("ONAPPINSTALL", "5"), ev("ONCRMDEALUSERFIELDADD", "5"),
                                       ev("ONCRMLEADADD", "undefined"),
                                       assert(event.parse("event=ONCRMLEADADD", FORM)) } do
            local res, err = e:fetch(client)
            assert.is_nil(res)
            assert.is_true(Error.is(err))
            assert.equal("string", type(err.description))
         end
         assert.same({}, client.calls)
      end)

      it("raises without a client", function()
         assert.has_error(function() ev("ONCRMLEADADD", "5"):fetch() end)
      end)
   end)
end)
