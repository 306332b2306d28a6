-- The everyday methods of the emulator against the platform's PHP (yuliai/bitrix-modules at
-- a3a2a579), over real HTTP (issue 14 section 4): user.get, department.get, profile, methods,
-- scope, app.info, server.time, im.notify.system.add, the event methods a webhook may not call,
-- crm.timeline.comment.*, crm.activity.* and their keeping in --data.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local cjson = require "cjson"
local core = require "bitrix24.core"

local call = emu.call
local _

-- A --data file holding users 1..n (the webhook's user is 1) and nothing else.
local function users_file(dir, n)
   local rows = {}
   for i = 1, n do
      rows[i] = { ID = tostring(i), ACTIVE = i == 3 and "N" or "Y", NAME = "Name" .. i, LAST_NAME = "Last" .. i,
                  SECOND_NAME = "", EMAIL = "user" .. i .. "@example.com", WORK_POSITION = i == 7 and "Tester" or "",
                  UF_DEPARTMENT = { 1 }, USER_TYPE = "employee", XML_ID = "", TIME_ZONE = "" }
   end
   local state = { format = "bitrix24-emulator", version = 1,
                   stores = { user = { next_id = n + 1, multi_id = 0, rows = rows } } }
   return b24.write(dir .. "/portal.json", cjson.encode(state))
end

local function ids(rows)
   local out = {}
   for i, r in ipairs(rows) do out[i] = tonumber(r.ID) end
   return out
end

describe("emulator user.get (rest/lib/api/user.php userGet)", function()
   local srv, dir
   setup(function()
      dir = b24.tmpdir()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--data", users_file(dir, 60), "--time-scale", "100000" } }
   end)
   teardown(function()
      if srv then srv:stop() end
      os.execute("rm -rf " .. b24.quote(dir))
   end)

   it("pages 50 users at the exact offset start, with total and next while rows remain", function()
      local status, body = call(srv, "user.get", {})
      assert.equal(200, status)
      assert.equal(50, #body.result)
      assert.equal(60, body.total)
      assert.equal(50, body.next)
      _, body = call(srv, "user.get", { start = 55 })
      assert.same({ 56, 57, 58, 59, 60 }, ids(body.result))
      assert.equal(60, body.total)
      assert.is_nil(body.next)
      local raw
      _, body, raw = call(srv, "user.get", { start = -1 })
      assert.equal(50, #body.result)
      assert.equal(0, body.total) -- countTotal(false): setNavData gets a count of 0
      assert.is_nil(body.next)
      assert.matches('"total":0', raw, 1, true)
   end)

   it("shows the allowed fields only, ACTIVE as a boolean, SELECT narrowing them", function()
      local _, body = call(srv, "user.get", { ID = 7 })
      local user = body.result[1]
      assert.equal("7", user.ID)
      assert.equal(true, user.ACTIVE)
      assert.equal("Tester", user.WORK_POSITION)
      assert.same({ 1 }, user.UF_DEPARTMENT)
      assert.is_nil(user.PASSWORD)
      _, body = call(srv, "user.get", { FILTER = { ID = 7 }, SELECT = { "ID", "NAME", "PASSWORD" } })
      assert.same({ { ID = "7", NAME = "Name7" } }, body.result)
   end)

   it("filters on the query itself or FILTER, with operators, dropping unknown keys", function()
      local _, body = call(srv, "user.get", { filter = { [">=ID"] = 58 } })
      assert.same({ 58, 59, 60 }, ids(body.result))
      _, body = call(srv, "user.get", { ACTIVE = false })
      assert.same({ 3 }, ids(body.result))
      _, body = call(srv, "user.get", { NAME = "name1%", ["<ID"] = 12 })
      assert.same({ 1, 10, 11 }, ids(body.result))
      _, body = call(srv, "user.get", { NO_SUCH_FIELD = "x", ["%EMAIL"] = "user42@" })
      assert.same({ 42 }, ids(body.result))
      _, body = call(srv, "user.get", { NAME_SEARCH = "last59" })
      assert.same({ 59 }, ids(body.result))
   end)

   it("sorts by SORT and ORDER (strings, both needed); ADMIN_MODE changes nothing without extranet", function()
      local _, body = call(srv, "user.get", { SORT = "ID", ORDER = "desc", ["<=ID"] = 3 })
      assert.same({ 3, 2, 1 }, ids(body.result))
      _, body = call(srv, "user.get", { sort = "ID", ["<=ID"] = 3 })
      assert.same({ 1, 2, 3 }, ids(body.result))
      _, body = call(srv, "user.get", { ADMIN_MODE = true, ["<=ID"] = 3 })
      assert.same({ 1, 2, 3 }, ids(body.result))
      local status
      status, body = call(srv, "user.get", { SORT = "ID", ORDER = "sideways" })
      assert.equal(400, status)
      assert.same({ error = "ERROR_ARGUMENT", error_description = 'Invalid order "SIDEWAYS"' }, body)
   end)

   it("answers [] without total when nothing matches", function()
      local status, body, raw = call(srv, "user.get", { FILTER = { ID = 999 } })
      assert.equal(200, status)
      assert.same({}, body.result)
      assert.not_matches('"total"', raw, 1, true)
   end)

   it("names a task's responsible from the users (tasks fillUserInfo)", function()
      local _, body = call(srv, "tasks.task.add", { fields = { TITLE = "for 7", RESPONSIBLE_ID = 7 } })
      assert.same({ id = "7", name = "Name7 Last7", link = "/company/personal/user/7/",
                    icon = "/bitrix/images/tasks/default_avatar.png", workPosition = "Tester" },
                  body.result.task.responsible)
   end)
end)

describe("emulator everyday methods", function()
   local srv
   setup(function()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "3", "--seed-deals", "2", "--timezone", "+05:00",
                                  "--time-scale", "100000" } }
   end)
   teardown(function() if srv then srv:stop() end end)

   -- intranet/classes/general/rest.php departmentGet, getDeptData
   it("department.get: the root department headed by the webhook's user, filtered by its fields", function()
      local status, body = call(srv, "department.get", {})
      assert.equal(200, status)
      assert.same({ { ID = "1", NAME = "Company", SORT = 500, UF_HEAD = "1" } }, body.result)
      assert.equal(1, body.total)
      _, body = call(srv, "department.get", { FILTER = { PARENT = 0, UF_HEAD = 1 } })
      assert.same({ "1" }, { body.result[1].ID })
      _, body = call(srv, "department.get", { ID = 2 })
      assert.same({}, body.result)
   end)

   -- rest/classes/general/rest_provider.php getProfile
   it("profile: ID, ADMIN, NAME, LAST_NAME, PERSONAL_GENDER, TIME_ZONE", function()
      local _, body = call(srv, "profile", {})
      assert.same({ ID = "1", ADMIN = true, NAME = "Emulator", LAST_NAME = "User", PERSONAL_GENDER = "",
                    TIME_ZONE = "" }, body.result)
   end)

   -- rest_provider.php methodsList, scopeList, appInfo, getServerTime
   it("methods: lower-case names of the webhook's scopes and the global one; scope picks one", function()
      local _, body = call(srv, "methods", {})
      local all = {}
      for _, name in ipairs(body.result) do
         all[name] = true
         assert.equal(name:lower(), name)
      end
      for _, name in ipairs({ "batch", "profile", "crm.lead.list", "crm.activity.add", "tasks.task.list",
                              "user.get", "department.get", "im.notify.system.add", "server.time" }) do
         assert.is_true(all[name], name)
      end
      _, body = call(srv, "methods", { scope = "crm" })
      assert.is_true(#body.result > 10)
      for _, name in ipairs(body.result) do assert.matches("^crm%.", name) end
      _, body = call(srv, "methods", { SCOPE = "" })
      local global = {}
      for _, name in ipairs(body.result) do global[name] = true end
      assert.is_true(global.batch and global.profile and global["event.bind"])
      assert.is_nil(global["crm.lead.list"])
      _, body = call(srv, "methods", { full = true })
      assert.equal(#emu.keys(all), #body.result)
   end)

   it("scope, app.info and server.time", function()
      local _, body = call(srv, "scope", {})
      assert.same({ "crm", "department", "im", "task", "user" }, body.result)
      _, body = call(srv, "app.info", {})
      assert.same({ SCOPE = { "crm", "department", "im", "task", "user" }, LICENSE = "en_pro" }, body.result)
      _, body = call(srv, "server.time", {})
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%+05:00$", body.result)
   end)

   -- rest/lib/api/event.php, rest/lib/authtypeexception.php
   it("event.bind, event.get, event.unbind: 403 WRONG_AUTH_TYPE for a webhook", function()
      for _, method in ipairs({ "event.bind", "event.get", "event.unbind", "events" }) do
         local status, body = call(srv, method, { event = "ONCRMLEADADD", handler = "https://example.com/h" })
         assert.equal(403, status, method)
         assert.same({ error = "WRONG_AUTH_TYPE",
                       error_description = "Current authorization type is denied for this method" }, body)
      end
   end)

   -- im/classes/general/im_rest.php notifyAdd, im_messenger.php Add
   it("im.notify.system.add: an id for a user of the portal, false for another, errors for what is missing", function()
      local status, body = call(srv, "im.notify.system.add", { USER_ID = 1, MESSAGE = "Hello" })
      assert.equal(200, status)
      local first = body.result
      assert.is_number(first)
      _, body = call(srv, "im.notify.system.add", { to = 1, message = "Again" })
      assert.equal(first + 1, body.result)
      _, body = call(srv, "im.notify.system.add", { USER_ID = 404, MESSAGE = "Nobody" })
      assert.equal(false, body.result)
      status, body = call(srv, "im.notify.system.add", { MESSAGE = "Hello" })
      assert.equal(400, status)
      assert.same({ error = "USER_ID_EMPTY", error_description = "User ID can't be empty" }, body)
      status, body = call(srv, "im.notify.system.add", { USER_ID = 1, MESSAGE = "   " })
      assert.equal(400, status)
      assert.same({ error = "MESSAGE_EMPTY", error_description = "Message can't be empty" }, body)
   end)

   -- crm/lib/controller/timeline/comment.php; restservice.php CCrmTimelineCommentRestProxy
   describe("crm.timeline.comment", function()
      it("adds a comment to an existing entity and reads it back with get and list", function()
         local status, body = call(srv, "crm.timeline.comment.add", { fields = { ENTITY_ID = 2, ENTITY_TYPE = "deal",
            COMMENT = "  Called the client  " } })
         assert.equal(200, status)
         local id = body.result
         assert.is_number(id)
         _, body = call(srv, "crm.timeline.comment.add", { fields = { ENTITY_ID = 2, ENTITY_TYPE_ID = 2,
            COMMENT = "Second" } })
         local second = body.result
         _, body = call(srv, "crm.timeline.comment.get", { id = id })
         local got = body.result
         assert.matches("%+05:00$", got.CREATED)
         got.CREATED = nil
         assert.same({ ID = emu.str(id), ENTITY_ID = "2", ENTITY_TYPE = "deal", COMMENT = "Called the client",
                       AUTHOR_ID = "1" }, got)
         _, body = call(srv, "crm.timeline.comment.list", { filter = { ENTITY_ID = 2, ENTITY_TYPE = "deal" },
            order = { ID = "DESC" }, select = { "ID", "COMMENT" } })
         assert.same({ { ID = emu.str(second), COMMENT = "Second" },
                       { ID = emu.str(id), COMMENT = "Called the client" } },
                     body.result)
         assert.equal(2, body.total)
         _, body = call(srv, "crm.timeline.comment.list", { filter = { ENTITY_ID = 1, ENTITY_TYPE = "deal" } })
         assert.same({}, body.result)
      end)

      it("answers the controller's and the proxy's errors", function()
         local cases = {
            { "crm.timeline.comment.add", {}, "100", "Could not find value for parameter {fields}" },
            { "crm.timeline.comment.add", { fields = { ENTITY_ID = 1, ENTITY_TYPE = "nothing", COMMENT = "x" } },
              "OWNER_NOT_FOUND", "Owner was not found" },
            { "crm.timeline.comment.add", { fields = { ENTITY_ID = 99, ENTITY_TYPE = "lead", COMMENT = "x" } },
              "NOT_FOUND", "Not found." },
            { "crm.timeline.comment.add", { fields = { ENTITY_ID = 1, ENTITY_TYPE = "lead", COMMENT = " " } },
              "INVALID_ARG_VALUE", "Empty comment message" },
            { "crm.timeline.comment.get", { id = 0 }, "", "ID is not defined or invalid." },
            { "crm.timeline.comment.get", { id = 999 }, "", "Not found." },
            { "crm.timeline.comment.list", { filter = { ENTITY_ID = 99, ENTITY_TYPE = "lead" } }, "",
              "Access denied." },
            { "crm.timeline.comment.list", { filter = "x" }, "", "Parameter 'filter' must be array." },
         }
         for _, c in ipairs(cases) do
            local status, body = call(srv, c[1], c[2])
            assert.equal(400, status, c[4])
            assert.same({ error = c[3], error_description = c[4] }, body)
         end
      end)
   end)

   -- restservice.php CCrmActivityRestProxy; crm/lib/controller/activity/todo.php
   describe("crm.activity", function()
      it("adds a call bound to its owner and communication, and gets and lists it", function()
         local status, body = call(srv, "crm.activity.add", { fields = { OWNER_TYPE_ID = 1, OWNER_ID = 2, TYPE_ID = 2,
            SUBJECT = "Call back", START_TIME = "2030-01-02T10:00:00+00:00", END_TIME = "02.01.2030 16:00:00",
            COMMUNICATIONS = { { VALUE = "+15550100" } } } })
         assert.equal(200, status)
         local id = body.result
         assert.is_number(id)
         _, body = call(srv, "crm.activity.get", { id = id })
         local a = body.result
         assert.equal(emu.str(id), a.ID)
         assert.same({ "1", "2", "2", "VOXIMPLANT_CALL", "CALL", "Call back", "N", "1", "1" },
            { a.OWNER_TYPE_ID, a.OWNER_ID, a.TYPE_ID, a.PROVIDER_ID, a.PROVIDER_TYPE_ID, a.SUBJECT, a.COMPLETED,
              a.STATUS, a.RESPONSIBLE_ID })
         assert.equal("2030-01-02T15:00:00+05:00", a.START_TIME)
         assert.equal("2030-01-02T16:00:00+05:00", a.END_TIME)
         assert.equal(cjson.null, a.ORIGIN_ID)
         _, body = call(srv, "crm.activity.todo.add", { ownerTypeId = 1, ownerId = 2,
            deadline = "2030-01-01T09:00:00+05:00",
            title = "Prepare" })
         local todo = body.result.id
         assert.is_number(todo)
         _, body = call(srv, "crm.activity.list", { filter = { OWNER_TYPE_ID = 1, OWNER_ID = 2 },
            select = { "ID", "PROVIDER_ID", "SUBJECT", "DEADLINE" } })
         -- START_TIME ASC by default: the to-do's deadline comes first
         assert.same({ { ID = emu.str(todo), PROVIDER_ID = "CRM_TODO", SUBJECT = "Prepare",
                         DEADLINE = "2030-01-01T09:00:00+05:00" },
                       { ID = emu.str(id), PROVIDER_ID = "VOXIMPLANT_CALL", SUBJECT = "Call back",
                         DEADLINE = "2030-01-02T16:00:00+05:00" } }, body.result)
         assert.equal(2, body.total)
      end)

      it("answers innerAdd's checks in their order, and get's", function()
         local call_fields = { OWNER_TYPE_ID = 1, OWNER_ID = 1, TYPE_ID = 2, SUBJECT = "x",
                               COMMUNICATIONS = { { VALUE = "+1" } } }
         local function with(changes)
            local f = {}
            for k, v in pairs(call_fields) do f[k] = v end
            for k, v in pairs(changes) do f[k] = v end
            if changes.COMMUNICATIONS == false then f.COMMUNICATIONS = nil end
            return f
         end
         local cases = {
            { with{ SUBJECT = " " }, "The field SUBJECT is not defined or empty." },
            { with{ TYPE_ID = 9 }, "The field TYPE_ID is not defined or invalid." },
            { with{ TYPE_ID = 3 }, 'The activity type "Task is not supported in current context".' },
            { with{ COMMUNICATIONS = false }, "The field COMMUNICATIONS is not defined or invalid." },
            { with{ COMMUNICATIONS = { { VALUE = "+1" }, { VALUE = "+2" } } },
              "The only one communication is allowed for activity of specified type." },
            { with{ OWNER_ID = 0, COMMUNICATIONS = { { VALUE = "+1" } } },
              "The field COMMUNICATIONS is not defined or invalid." },
            { with{ OWNER_ID = 77 }, "Could not find 'LEAD' with ID: 77" },
            { with{ PROVIDER_ID = "REST_APP", TYPE_ID = false }, "Application context required." },
         }
         for _, c in ipairs(cases) do
            if c[1].TYPE_ID == false then c[1].TYPE_ID = nil end
            local status, body = call(srv, "crm.activity.add", { fields = c[1] })
            assert.equal(400, status, c[2])
            assert.same({ error = "", error_description = c[2] }, body)
         end
         local status, body = call(srv, "crm.activity.get", { id = 0 })
         assert.equal(400, status)
         assert.same({ error = "", error_description = "ID is not defined or invalid." }, body)
         status, body = call(srv, "crm.activity.get", { id = 424242 })
         assert.equal(400, status)
         assert.same({ error = "", error_description = "" }, body)
      end)

      it("answers crm.activity.todo.add's binder, owner and date errors", function()
         local cases = {
            { { ownerTypeId = 1, ownerId = 1 }, "100", "Could not find value for parameter {deadline}" },
            { { ownerTypeId = 0, ownerId = 1, deadline = "2030-01-01" }, "NOT_FOUND", "Not found." },
            { { ownerTypeId = 1, ownerId = 1, deadline = "tomorrow-ish" }, "WRONG_DATETIME_FORMAT",
              "Wrong date format" },
            { { ownerTypeId = 1, ownerId = 404, deadline = "2030-01-01" }, "NOT_FOUND", "Not found." },
         }
         for _, c in ipairs(cases) do
            local status, body = call(srv, "crm.activity.todo.add", c[1])
            assert.equal(400, status, c[3])
            assert.same({ error = c[2], error_description = c[3] }, body)
         end
      end)
   end)
end)

describe("emulator --data keeps comments, activities and notifications", function()
   it("answers them after a restart, and new ids go on from the last", function()
      local dir = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local args = { "--code", emu.CODE, "--seed-leads", "2", "--data", dir .. "/portal.json" }
      local srv = b24.emulate{ args = args }
      local _, c = call(srv, "crm.timeline.comment.add", { fields = { ENTITY_ID = 1, ENTITY_TYPE = "lead",
         COMMENT = "kept" } })
      local _, a = call(srv, "crm.activity.todo.add", { ownerTypeId = 1, ownerId = 1, deadline = "2030-01-01" })
      local _, n = call(srv, "im.notify.system.add", { USER_ID = 1, MESSAGE = "kept" })
      srv:stop()
      srv = b24.emulate{ args = args }
      finally(function() srv:stop() end)
      local _, body = call(srv, "crm.timeline.comment.get", { id = c.result })
      assert.equal("kept", body.result.COMMENT)
      _, body = call(srv, "crm.activity.get", { id = a.result.id })
      assert.equal("CRM_TODO", body.result.PROVIDER_ID)
      _, body = call(srv, "im.notify.system.add", { USER_ID = 1, MESSAGE = "next" })
      assert.equal(n.result + 1, body.result)
      _, body = call(srv, "crm.activity.todo.add", { ownerTypeId = 1, ownerId = 1, deadline = "2030-01-01" })
      assert.equal(a.result.id + 1, body.result.id)
   end)
end)

-- restservice.php CCrmTimelineCommentRestProxy/CCrmActivityRestProxy processEvent: FIELDS[ID]
describe("emulator timeline events", function()
   it("sends ONCRMTIMELINECOMMENTADD and ONCRMACTIVITYADD with data[FIELDS][ID]", function()
      local dir = b24.tmpdir()
      local file = dir .. "/bodies.txt"
      local receiver = b24.start{ args = { "--workers", "1" }, script = ([[
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
      local srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "1", "--events-to", receiver:url("/hook"),
                                        "--events", "ONCRMTIMELINECOMMENTADD,ONCRMACTIVITYADD" } }
      finally(function()
         srv:stop()
         receiver:stop()
         os.execute("rm -rf " .. b24.quote(dir))
      end)
      local _, c = call(srv, "crm.timeline.comment.add", { fields = { ENTITY_ID = 1, ENTITY_TYPE = "lead",
         COMMENT = "evented" } })
      local _, a = call(srv, "crm.activity.todo.add", { ownerTypeId = 1, ownerId = 1, deadline = "2030-01-01" })
      assert(receiver:wait_log("seq=r2r"), "two deliveries")
      local got = {}
      for line in io.lines(file) do
         local form = core.form_decode(line)
         got[#got + 1] = form.event .. " " .. form.data.FIELDS.ID
      end
      table.sort(got)
      assert.same({ "ONCRMACTIVITYADD " .. emu.str(a.result.id), "ONCRMTIMELINECOMMENTADD " .. emu.str(c.result) },
                  got)
   end)
end)
