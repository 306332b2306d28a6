-- tasks.task.* of the emulator against the platform's PHP (yuliai/bitrix-modules at a3a2a579), over
-- real HTTP: the rows tasks/lib/rest/controllers/task.php prints (subStatus, group, creator,
-- responsible, auditorsData), its order check, start=-1, and the dates (issue 14 row 14 and
-- section 3 for tasks).
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"

local call = emu.call
local _

local USER = { id = "1", name = "Emulator User", link = "/company/personal/user/1/",
               icon = "/bitrix/images/tasks/default_avatar.png", workPosition = "" }

local function ids(tasks)
   local out = {}
   for i, t in ipairs(tasks) do out[i] = t.id end
   return out
end

describe("emulator tasks.task.* as the platform", function()
   local srv
   setup(function()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-tasks", "60", "--timezone", "+05:00",
                                  "--time-scale", "100000" } }
   end)
   teardown(function() if srv then srv:stop() end end)

   local function add(fields)
      local status, body = call(srv, "tasks.task.add", { fields = fields })
      assert.equal(200, status)
      return body.result.task
   end

   -- task.php listAction/getAction, fillGroupInfo, fillUserInfo; tasks/lib/ui/avatar.php
   describe("row 14: what the controller adds to a row", function()
      it("gives list rows subStatus, group [] and the creator and responsible users", function()
         local status, body, raw = call(srv, "tasks.task.list", { filter = { ID = 1 },
            select = { "ID", "STATUS", "CREATED_BY", "RESPONSIBLE_ID" } })
         assert.equal(200, status)
         local task = body.result.tasks[1]
         assert.equal("2", task.status)
         assert.equal("2", task.subStatus)
         assert.same(USER, task.creator)
         assert.same(USER, task.responsible)
         assert.matches('"group":[]', raw, 1, true)
      end)

      it("adds creator, responsible and subStatus only when the row has their fields; group always", function()
         local _, body, raw = call(srv, "tasks.task.list", { filter = { ID = 2 }, select = { "ID", "TITLE" } })
         local task = body.result.tasks[1]
         assert.same({ "group", "id", "title" }, emu.keys(task))
         assert.matches('"group":[]', raw, 1, true)
      end)

      it("prints the meta statuses of getStatusField as subStatus, the real one as status", function()
         local past = add{ TITLE = "overdue", DEADLINE = "2001-01-01T10:00:00+05:00" }
         local soon = add{ TITLE = "almost", DEADLINE = os.date("!%Y-%m-%dT%H:%M:%S+00:00", os.time() + 3600) }
         local done = add{ TITLE = "done late", DEADLINE = "2001-01-01T10:00:00+05:00", STATUS = 5 }
         local unseen = add{ TITLE = "from a colleague", CREATED_BY = 7 }
         local far = add{ TITLE = "far", DEADLINE = "2100-01-01T10:00:00+05:00", STATUS = 3 }
         local _, body = call(srv, "tasks.task.list", { filter = { ["@ID"] = { past.id, soon.id, done.id, unseen.id,
            far.id } }, order = { ID = "ASC" }, select = { "ID", "STATUS" } })
         local got = {}
         for _, t in ipairs(body.result.tasks) do got[#got + 1] = t.status .. "/" .. t.subStatus end
         assert.same({ "2/-1", "2/-3", "5/5", "2/-2", "3/3" }, got)
      end)

      it("gives get's row group, creator, responsible and the auditors' users keyed by id, no subStatus", function()
         local task = add{ TITLE = "watched", AUDITORS = { 1, 99 } }
         local status, body, raw = call(srv, "tasks.task.get", { taskId = task.id })
         assert.equal(200, status)
         local got = body.result.task
         assert.same(USER, got.creator)
         assert.same(USER, got.responsible)
         assert.same({ ["1"] = USER }, got.auditorsData) -- user 99 is not on the portal
         assert.matches('"accomplicesData":[]', raw, 1, true)
         assert.matches('"group":[]', raw, 1, true)
         assert.is_nil(got.subStatus)
         _, body = call(srv, "tasks.task.get", { taskId = task.id, select = { "TITLE" } })
         assert.same({ "favorite", "group", "id", "title" }, emu.keys(body.result.task))
      end)
   end)

   -- task.php checkOrderKeys, CTasks::getAvailableOrderFields; taskquery.php prepareOrder
   describe("row 14: the order", function()
      it("answers a key outside getAvailableOrderFields with 400 and code 0, upper-casing the keys", function()
         for _, order in ipairs({ { STATUS = "ASC" }, { createdDate = "DESC" }, { NO_SUCH = "ASC" } }) do
            local status, body = call(srv, "tasks.task.list", { order = order })
            assert.equal(400, status)
            assert.same({ error = "0", error_description = "Invalid sorting key (internal error)" }, body)
         end
         local status, body = call(srv, "tasks.task.list", { order = { title = "desc" },
            filter = { ["<=ID"] = 3 }, select = { "ID" } })
         assert.equal(200, status)
         assert.same({ "3", "2", "1" }, ids(body.result.tasks)) -- "Task #3" > "Task #2" > "Task #1"
      end)

      it("applies the keys in the order sent", function()
         local task = add{ TITLE = "urgent", PRIORITY = 2 }
         local body = '{"order":{"priority":"desc","ID":"asc"},"filter":{"@ID":[1,2,3,' .. task.id .. ']},'
            .. '"select":["ID"]}'
         local status, got = call(srv, "tasks.task.list", nil, { body = body })
         assert.equal(200, status)
         assert.same({ task.id, "1", "2", "3" }, ids(got.result.tasks))
         body = '{"order":{"ID":"asc","priority":"desc"},"filter":{"@ID":[1,2,3,' .. task.id .. ']},'
            .. '"select":["ID"]}'
         _, got = call(srv, "tasks.task.list", nil, { body = body })
         assert.same({ "1", "2", "3", task.id }, ids(got.result.tasks))
      end)

      it("sorts a direction other than ASC or DESC descending, ASC,NULLS ascending", function()
         local _, body = call(srv, "tasks.task.list", { order = { ID = "sideways" }, filter = { ["<=ID"] = 3 },
            select = { "ID" } })
         assert.same({ "3", "2", "1" }, ids(body.result.tasks))
         _, body = call(srv, "tasks.task.list", { order = { ID = "asc,nulls" }, filter = { ["<=ID"] = 3 },
            select = { "ID" } })
         assert.same({ "1", "2", "3" }, ids(body.result.tasks))
      end)
   end)

   -- main/lib/engine/autowire/binder.php; task.php checkSelect
   describe("the action's arguments", function()
      it("answers a missing or scalar array argument as the binder does, code \"100\"", function()
         local cases = {
            { "tasks.task.add", {}, "Could not find value for parameter {fields}" },
            { "tasks.task.add", { fields = "x" },
              "Invalid value {x} to match with parameter {fields}. Should be value of type array." },
            { "tasks.task.update", { taskId = 1 }, "Could not find value for parameter {fields}" },
            { "tasks.task.list", { filter = 5 },
              "Invalid value {5} to match with parameter {filter}. Should be value of type array." },
            { "tasks.task.list", { order = "ID" },
              "Invalid value {ID} to match with parameter {order}. Should be value of type array." },
         }
         for _, c in ipairs(cases) do
            local status, body = call(srv, c[1], c[2])
            assert.equal(400, status, c[3])
            assert.same({ error = "100", error_description = c[3] }, body)
         end
         local status, body = call(srv, "tasks.task.list", { select = { "ID", { "TITLE" } } })
         assert.equal(400, status)
         assert.same({ error = "0", error_description = "Invalid select data" }, body)
      end)
   end)

   -- task.php prepareNavParams: start=-1 drops getTotalCount
   describe("row 14: start=-1", function()
      it("omits total (and next), a counted page has both", function()
         local status, body, raw = call(srv, "tasks.task.list", { start = -1, select = { "ID" },
            order = { ID = "ASC" } })
         assert.equal(200, status)
         assert.equal(50, #body.result.tasks)
         assert.not_matches('"total"', raw, 1, true)
         assert.is_nil(body.next)
         _, body = call(srv, "tasks.task.list", { start = 0, select = { "ID" } })
         assert.is_number(body.total)
         assert.equal(50, body.next)
      end)
   end)

   -- task.php formatDateFieldsForInput/formatDateFieldsForOutput, prepareFilter (strtotime)
   describe("section 3: dates", function()
      it("sets createdDate and changedDate in the portal's zone on add and update", function()
         local task = add{ TITLE = "dated" }
         assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%+05:00$", task.createdDate)
         assert.equal(task.createdDate, task.changedDate)
         local _, body = call(srv, "tasks.task.update", { taskId = task.id, fields = { TITLE = "re-dated" } })
         assert.matches("%+05:00$", body.result.task.changedDate)
         assert.equal(task.createdDate, body.result.task.createdDate)
      end)

      it("keeps a deadline given in any form strtotime reads, printed in the portal's zone", function()
         assert.equal("2030-01-02T08:04:05+05:00", add{ TITLE = "z", DEADLINE = "2030-01-02T03:04:05Z" }.deadline)
         assert.equal("2030-01-02T00:00:00+05:00", add{ TITLE = "d", DEADLINE = "02.01.2030" }.deadline)
      end)

      it("filters CREATED_DATE and DEADLINE with >, >=, <, <= as dates in any offset and form", function()
         local task = add{ TITLE = "for the filter", DEADLINE = "2030-06-15T12:00:00+05:00" }
         local created = task.createdDate
         local function count(filter)
            filter["=ID"] = task.id
            local status, body = call(srv, "tasks.task.list", { filter = filter, select = { "ID" } })
            assert.equal(200, status)
            return #body.result.tasks
         end
         -- the same instant written in another zone
         assert.equal(1, count{ [">=DEADLINE"] = "2030-06-15T07:00:00+00:00" })
         assert.equal(0, count{ [">DEADLINE"] = "2030-06-15T07:00:00+00:00" })
         assert.equal(1, count{ ["<=DEADLINE"] = "2030-06-15T09:00:00+02:00" })
         assert.equal(0, count{ ["<DEADLINE"] = "2030-06-15T09:00:00+02:00" })
         -- dd.mm.yyyy and yyyy-mm-dd (midnight in the portal's zone)
         assert.equal(1, count{ [">DEADLINE"] = "15.06.2030", ["<DEADLINE"] = "2030-06-16" })
         assert.equal(0, count{ [">DEADLINE"] = "16.06.2030" })
         assert.equal(1, count{ [">=CREATED_DATE"] = created, ["<=CREATED_DATE"] = created })
         assert.equal(1, count{ [">CREATED_DATE"] = "01.01.2001", ["<CHANGED_DATE"] = "2100-01-01" })
         assert.equal(0, count{ ["<CREATED_DATE"] = "2001-01-01T00:00:00+14:00" })
      end)
   end)

   it("keeps --seed-tasks: 60 numbered tasks of the webhook's user", function()
      local _, body = call(srv, "tasks.task.get", { taskId = 60 })
      assert.equal("Task #60", body.result.task.title)
      assert.equal("1", body.result.task.createdBy)
      assert.equal("1", body.result.task.responsibleId)
   end)
end)
