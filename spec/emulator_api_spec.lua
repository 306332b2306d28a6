-- The emulator's tasks.task.*, crm.item.list and error table over real HTTP (b24 emulate, or the
-- script it runs on a binary without the command).
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local shared = require "helpers.shared"
local cjson = require "cjson"

local call, form, keys = emu.call, emu.form, emu.keys

describe("emulator tasks.task.*", function()
   local srv
   setup(function()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-tasks", "60", "--time-scale", "100000" } }
   end)
   teardown(function() if srv then srv:stop() end end)

   it("adds a task and answers result.task with lower camel case string fields", function()
      local status, body = call(srv, "tasks.task.add", { fields = { TITLE = "Write specs",
         RESPONSIBLE_ID = 1, DEADLINE = "2030-01-02T10:00:00+00:00", AUDITORS = { 1 } } })
      assert.equal(200, status)
      local task = body.result.task
      assert.equal("string", type(task.id))
      assert.equal("Write specs", task.title)
      assert.equal("1", task.responsibleId)
      assert.equal("1", task.createdBy)
      assert.equal("2", task.status)
      assert.equal("1", task.priority)
      assert.equal("0", task.groupId)
      -- the portal prints dates in its time zone (+03:00 by default)
      assert.equal("2030-01-02T13:00:00+03:00", task.deadline)
      assert.equal(cjson.null, task.closedDate)
      assert.same({ "1" }, task.auditors)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT", task.createdDate)
      assert.is_nil(task.TITLE)
      assert.is_nil(task.ID)
   end)

   it("gets, updates and deletes a task; a missing one is ERROR_CORE 400", function()
      local _, body = call(srv, "tasks.task.add", { fields = { TITLE = "Round trip" } })
      local id = body.result.task.id
      local status, got = call(srv, "tasks.task.get", { taskId = id })
      assert.equal(200, status)
      assert.equal(id, got.result.task.id)
      assert.equal("Round trip", got.result.task.title)
      local _, sel = call(srv, "tasks.task.get", { taskId = id, select = { "TITLE" } })
      -- get with a select adds favorite and group (tasks/lib/rest/controllers/task.php getAction)
      assert.same({ "favorite", "group", "id", "title" }, keys(sel.result.task))
      local _, upd = call(srv, "tasks.task.update", { taskId = id, fields = { TITLE = "Renamed", STATUS = 5 } })
      assert.equal("Renamed", upd.result.task.title)
      assert.equal("5", upd.result.task.status)
      assert.equal("string", type(upd.result.task.closedDate))
      local _, del = call(srv, "tasks.task.delete", { taskId = id })
      assert.same({ task = true }, del.result)
      local st, gone = call(srv, "tasks.task.get", { taskId = id })
      assert.equal(400, st)
      assert.equal("ERROR_CORE", gone.error)
      assert.matches("not found", gone.error_description)
      st = call(srv, "tasks.task.update", { taskId = id, fields = { TITLE = "x" } })
      assert.equal(400, st)
      st = call(srv, "tasks.task.delete", { taskId = id })
      assert.equal(400, st)
   end)

   it("refuses a task without a title", function()
      local status, body = call(srv, "tasks.task.add", { fields = { DESCRIPTION = "no title" } })
      assert.equal(400, status)
      assert.equal("ERROR_CORE", body.error)
   end)

   it("lists 50 a page as result.tasks with next and total, filter, order and select", function()
      local _, body = call(srv, "tasks.task.list", { filter = { ["<=ID"] = 60 }, order = { ID = "ASC" } })
      assert.equal(50, #body.result.tasks)
      assert.equal(50, body.next)
      assert.equal(60, body.total)
      assert.equal("1", body.result.tasks[1].id)
      assert.equal("Task #1", body.result.tasks[1].title)
      _, body = call(srv, "tasks.task.list", { filter = { ["<=ID"] = 60 }, start = 50, select = { "ID", "TITLE" } })
      assert.equal(10, #body.result.tasks)
      assert.is_nil(body.next)
      assert.same({ "group", "id", "title" }, keys(body.result.tasks[1]))
      _, body = call(srv, "tasks.task.list", { filter = { [">ID"] = 55, ["<=ID"] = 60 }, order = { ID = "DESC" },
         select = { "ID" }, start = -1 })
      local ids = {}
      for i, t in ipairs(body.result.tasks) do ids[i] = t.id end
      assert.same({ "60", "59", "58", "57", "56" }, ids)
      assert.is_nil(body.total) -- start=-1 counts nothing (task.php prepareNavParams)
      assert.is_nil(body.next)
   end)

   it("answers an empty task list as result.tasks = []", function()
      local _, _, raw = call(srv, "tasks.task.list", { filter = { TITLE = "no such task" } })
      assert.matches('"result":{"tasks":[]}', raw, 1, true)
   end)

   it("chains task pages in a batch by $result[…][tasks][49][id]", function()
      -- in this order: a portal runs the commands as sent (rest_provider.php methodsBatch)
      local _, body = emu.batch(srv, {
         { "c0", "tasks.task.list?order[ID]=ASC&filter[%3C%3DID]=60&select[]=ID&start=-1" },
         { "c1", "tasks.task.list?order[ID]=ASC&filter[%3C%3DID]=60&filter[>ID]=$result[c0][tasks][49][id]"
            .. "&select[]=ID&start=-1" },
      })
      assert.equal("51", body.result.result.c1.tasks[1].id)
      assert.equal(10, #body.result.result.c1.tasks)
   end)
end)

describe("emulator crm.item.list", function()
   local srv
   setup(function()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "70", "--time-scale", "100000" } }
   end)
   teardown(function() if srv then srv:stop() end end)

   it("answers result.items with lower-case id and camelCase typed fields", function()
      local status, body = call(srv, "crm.item.list", { entityTypeId = 1, order = { id = "ASC" } })
      assert.equal(200, status)
      local items = body.result.items
      assert.equal(50, #items)
      assert.equal(50, body.next)
      assert.equal(70, body.total)
      assert.equal(1, items[1].id)
      assert.equal("Lead #1", items[1].title)
      assert.equal("Last1", items[1].lastName)
      assert.equal("NEW", items[1].stageId) -- a lead's STATUS_ID (crm/lib/Service/Factory/Lead.php)
      assert.equal("number", type(items[1].opportunity))
      assert.equal(1, items[1].assignedById)
      assert.equal(1, items[1].createdBy)
      assert.equal("string", type(items[1].createdTime))
      assert.is_nil(items[1].ID)
      assert.is_nil(items[1].TITLE)
   end)

   it("filters, orders and selects by camelCase names; start=-1 counts nothing", function()
      local _, body = call(srv, "crm.item.list", { entityTypeId = 1, filter = { [">id"] = 60 },
         order = { id = "DESC" }, select = { "id", "title" }, start = -1 })
      local items = body.result.items
      assert.equal(10, #items)
      assert.equal(70, items[1].id)
      assert.same({ "id", "title" }, keys(items[1]))
      assert.is_nil(body.total) -- start=-1 counts nothing (rest/lib/engine/restmanager.php)
      assert.is_nil(body.next)
   end)

   it("serves deals, contacts and companies by entityTypeId; an unknown one is an error", function()
      local _, added = call(srv, "crm.deal.add", { fields = { TITLE = "Big deal", OPPORTUNITY = 12.5 } })
      local _, body = call(srv, "crm.item.list", { entityTypeId = 2, filter = { id = added.result } })
      assert.equal(1, #body.result.items)
      assert.equal("Big deal", body.result.items[1].title)
      assert.equal(12.5, body.result.items[1].opportunity)
      assert.equal("NEW", body.result.items[1].stageId)
      -- 130 would be a smart process (none such here); 999 is no type a factory serves
      local status, err = call(srv, "crm.item.list", { entityTypeId = 130 })
      assert.equal(400, status)
      assert.equal("NOT_FOUND", err.error)
      status, err = call(srv, "crm.item.list", { entityTypeId = 999 })
      assert.equal(400, status)
      assert.equal("ENTITY_TYPE_NOT_SUPPORTED", err.error)
   end)
end)

describe("emulator error table (protocol.md §2)", function()
   local vectors = cjson.decode(shared.vector("responses/errors.json"))
   local function vector(code)
      for _, v in ipairs(vectors) do if v.body.error == code then return v end end
   end

   it("answers the statuses and bodies of the captured errors", function()
      local srv = b24.emulate{ args = { "--code", emu.CODE, "--time-scale", "0.000001" } }
      finally(function() srv:stop() end)
      -- INVALID_CREDENTIALS
      local status, body = call(srv, "crm.lead.list", {}, { code = "wrong0code000000" })
      local v = vector("INVALID_CREDENTIALS")
      assert.equal(v.status, status)
      assert.same(v.body, body)
      -- ERROR_METHOD_NOT_FOUND
      status, body = call(srv, "no.such.method", {})
      v = vector("ERROR_METHOD_NOT_FOUND")
      assert.equal(v.status, status)
      assert.same(v.body, body)
      -- legacy CRM "" 400
      status, body = call(srv, "crm.lead.get", { id = 424242 })
      v = vector("")
      assert.equal(v.status, status)
      assert.same(v.body, body)
      -- QUERY_LIMIT_EXCEEDED after the bucket (50) is full; the clock barely runs
      for _ = 1, 60 do
         status, body = call(srv, "user.current", {})
         if status ~= 200 then break end
      end
      v = vector("QUERY_LIMIT_EXCEEDED")
      assert.equal(v.status, status)
      assert.same(v.body, body)
   end)

   it("answers OPERATION_TIME_LIMIT as the captured 429", function()
      local srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "50", "--row-cost", "2000",
                                        "--operating-limit", "0.05" } }
      finally(function() srv:stop() end)
      assert.equal(200, (call(srv, "crm.lead.list", {})))
      local status, body = call(srv, "crm.lead.list", {})
      local v = vector("OPERATION_TIME_LIMIT")
      assert.equal(v.status, status)
      assert.same(v.body, body)
   end)

   it("answers .json and the method name in any case the same; other suffixes are unknown methods", function()
      local srv = b24.emulate{ args = { "--code", emu.CODE } }
      finally(function() srv:stop() end)
      assert.equal(200, (call(srv, "TASKS.TASK.LIST.json", {})))
      assert.equal(200, (form(srv, "crm.item.list.json/", "entityTypeId=1")))
      assert.equal(404, (call(srv, "crm.lead.list.yaml", {})))
   end)
end)

describe("emulator .xml transport", function()
   local srv
   setup(function() srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "3" } } end)
   teardown(function() if srv then srv:stop() end end)

   local function get(path)
      return assert(srv:request{ path = path })
   end

   it("answers METHOD.xml with the envelope inside <response>, list items as <item>", function()
      local res = get(emu.path("crm.lead.list.xml") .. "?select[]=ID&select[]=TITLE&order[ID]=DESC")
      assert.equal(200, res.status)
      assert.equal("text/xml; charset=utf-8", res.headers["content-type"])
      assert.matches("^<response><result><item><ID>3</ID><TITLE>Lead #3</TITLE></item><item><ID>2</ID>", res.body)
      assert.matches("</result><total>3</total><time><start>%d+[%d.]*</start><finish>", res.body)
      assert.matches("<operating_reset_at>%d+</operating_reset_at><operating>[%d.E+-]+</operating></time></response>$",
         res.body)
      assert.not_matches("<%?xml", res.body) -- no declaration
   end)

   it("prints scalars as PHP does and escapes XML's special characters", function()
      assert.equal(200, (call(srv, "crm.lead.update", { id = 1, fields = { TITLE = [[A & B <"x"> 'y']] } })))
      local res = get(emu.path("crm.lead.get.XML/") .. "?id=1")
      assert.equal(200, res.status)
      assert.matches("<TITLE>A &amp; B &lt;&quot;x&quot;&gt; &#039;y&#039;</TITLE>", res.body, 1, true)
      res = get(emu.path("user.current.xml"))
      assert.matches("<ACTIVE>1</ACTIVE>", res.body, 1, true) -- true
      assert.matches("<XML_ID></XML_ID>", res.body, 1, true)
      local emulator = require "b24.emulator"
      assert.equal("<response><result><item>1</item><item></item><item>2.5</item><item>2.2649765014648E-5</item>"
        .. "<item>1.0E+25</item></result></response>",
        emulator.to_xml{ result = { true, false, 2.5, 2.2649765014648e-05, 1e25 } })
   end)

   it("answers errors in XML with their statuses", function()
      local res = get(emu.path("crm.lead.get.xml") .. "?id=99")
      assert.equal(400, res.status)
      assert.equal("<response><error></error><error_description>Not found</error_description></response>", res.body)
      res = get(emu.path("user.current.xml", "wrong0code000000"))
      assert.equal(401, res.status)
      assert.equal("<response><error>INVALID_CREDENTIALS</error><error_description>Invalid request credentials"
        .. "</error_description></response>", res.body)
      res = get(emu.path("no.such.method.xml"))
      assert.equal(404, res.status)
      assert.matches("<error>ERROR_METHOD_NOT_FOUND</error>", res.body, 1, true)
   end)
end)
