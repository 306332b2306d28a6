-- The emulator's outgoing events (protocol.md §6) received by a real loopback HTTP server (a
-- `b24 serve` that records each body), compared with the captured bodies in shared/vectors, and
-- its --data persistence across a restart.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local shared = require "helpers.shared"
local core = require "bitrix24.core"
local cjson = require "cjson"

local call = emu.call
local TOKEN = "spec0application0token0000000001"

-- A recording receiver: every body on a line of `file`, and a log line
-- msg="recorded EVENT/ID" … seq=rNr (ID: the entity's, a comment's MESSAGE_ID).
local function recorder(dir)
   local file = dir .. "/bodies.txt"
   local srv = b24.start{ args = { "--workers", "1" }, script = ([[
      local host = require "b24.host"
      local n = 0
      return function(req)
         n = n + 1
         local f = assert(io.open(%q, "ab"))
         f:write(req.headers["content-type"] or "", "\t", req.body, "\n")
         f:close()
         local b = req.body
         local id = b:match("data%%[FIELDS%%]%%[ID%%]=(%%d+)")
            or b:match("data%%[FIELDS_AFTER%%]%%[MESSAGE_ID%%]=(%%d+)")
            or b:match("data%%[FIELDS_AFTER%%]%%[ID%%]=(%%d+)") or b:match("data%%[FIELDS_BEFORE%%]%%[ID%%]=(%%d+)")
         host.log("info", "recorded " .. tostring(b:match("^event=([%%w_]+)")) .. "/" .. tostring(id),
                  { seq = "r" .. n .. "r" })
         return 200, { ["Content-Type"] = "text/plain" }, "ok"
      end]]):format(file) }
   srv.file = file
   -- the deliveries recorded so far, as { content_type, body, form }
   function srv.all()
      local out = {}
      for line in io.lines(file) do
         local ct, body = line:match("^([^\t]*)\t(.*)$")
         out[#out + 1] = { content_type = ct, body = body, form = core.form_decode(body) }
      end
      return out
   end
   -- waits for n deliveries; returns them all
   function srv.received(n)
      assert(srv:wait_log("seq=r" .. n .. "r"), "delivery " .. n .. " did not arrive")
      return srv.all()
   end
   -- waits for the delivery of "EVENT/ID" (the posts keep their order: all before it are in);
   -- returns them all
   function srv.through(key)
      assert(srv:wait_log("recorded " .. key .. '"'), key .. " did not arrive")
      return srv.all()
   end
   return srv
end

-- The field names of a form body in their order.
local function names(body)
   local out = {}
   for pair in body:gmatch("[^&]+") do out[#out + 1] = pair:match("^[^=]*") end
   return out
end

-- Deliveries by "EVENT id".
local function by_event(list)
   local out = {}
   for _, d in ipairs(list) do
      local f = d.form
      local id = f.data.FIELDS and f.data.FIELDS.ID
         or type(f.data.FIELDS_AFTER) == "table" and f.data.FIELDS_AFTER.ID
         or type(f.data.FIELDS_BEFORE) == "table" and f.data.FIELDS_BEFORE.ID
      out[f.event .. " " .. tostring(id)] = d
   end
   return out
end

describe("emulator events", function()
   local dir, rec, srv
   setup(function()
      dir = b24.tmpdir()
      rec = recorder(dir)
      srv = b24.emulate{ args = { "--code", emu.CODE, "--token", TOKEN, "--events-to", rec.base .. "/hook",
                                  "--domain", "spec.bitrix24.test", "--time-scale", "100000" } }
   end)
   teardown(function()
      if srv then srv:stop() end
      if rec then rec:stop() end
      os.execute("rm -rf " .. b24.quote(dir))
   end)

   it("posts CRM add/update/delete events form-encoded as a real portal", function()
      local _, lead = call(srv, "crm.lead.add", { fields = { TITLE = "evented" } })
      assert.equal(200, (call(srv, "crm.lead.update", { id = lead.result, fields = { TITLE = "x" } })))
      assert.equal(200, (call(srv, "crm.lead.delete", { id = lead.result })))
      local _, deal = call(srv, "crm.deal.add", { fields = { TITLE = "d" } })
      local _, contact = call(srv, "crm.contact.add", { fields = { NAME = "c" } })
      local _, company = call(srv, "crm.company.add", { fields = { TITLE = "co" } })
      assert.equal(200, (call(srv, "crm.company.update", { id = company.result, fields = { TITLE = "co2" } })))
      local got = by_event(rec.received(7))
      local id = emu.str(lead.result)
      for _, key in ipairs({ "ONCRMLEADADD " .. id, "ONCRMLEADUPDATE " .. id, "ONCRMLEADDELETE " .. id,
                             "ONCRMDEALADD " .. emu.str(deal.result), "ONCRMCONTACTADD " .. emu.str(contact.result),
                             "ONCRMCOMPANYADD " .. emu.str(company.result),
                             "ONCRMCOMPANYUPDATE " .. emu.str(company.result) }) do
         assert.is_not_nil(got[key], key)
      end

      -- the captured webhook delivery: same fields, same order, same encoding
      local vector_text = shared.vector("events/webhook-oncrmdealadd.json")
      local vector = cjson.decode(vector_text)
      local d = got["ONCRMDEALADD " .. emu.str(deal.result)]
      assert.equal("application/x-www-form-urlencoded", d.content_type)
      local order = {}
      for key in vector_text:gmatch('"([%w_]+)"%s*:') do order[#order + 1] = key end
      -- event, event_handler_id, data, FIELDS, ID, ts, auth, domain, … as nested in the JSON
      assert.same({ "event", "event_handler_id", "data[FIELDS][ID]", "ts", "auth[domain]",
                    "auth[client_endpoint]", "auth[server_endpoint]", "auth[member_id]",
                    "auth[application_token]" }, names(d.body))
      assert.same({ "event", "event_handler_id", "data", "FIELDS", "ID", "ts", "auth", "domain",
                    "client_endpoint", "server_endpoint", "member_id", "application_token" }, order)
      assert.same(emu.keys(vector), emu.keys(d.form))
      assert.same(emu.keys(vector.auth), emu.keys(d.form.auth))
      assert.same({ FIELDS = { ID = emu.str(deal.result) } }, d.form.data)
      assert.equal(TOKEN, d.form.auth.application_token)
      assert.equal("spec.bitrix24.test", d.form.auth.domain)
      assert.equal("https://spec.bitrix24.test/rest/", d.form.auth.client_endpoint)
      assert.equal(vector.auth.server_endpoint, d.form.auth.server_endpoint)
      assert.matches("^%x+$", d.form.auth.member_id)
      assert.equal(32, #d.form.auth.member_id)
      assert.matches("^%d+$", d.form.ts)
      assert.matches("^%d+$", d.form.event_handler_id)
      -- values are urlencoded, brackets are not
      assert.matches("auth[client_endpoint]=https%3A%2F%2Fspec.bitrix24.test%2Frest%2F", d.body, 1, true)
      -- the application token never reaches the emulator's log
      assert.not_matches(TOKEN, srv:log(), 1, true)
   end)

   it("posts task events with FIELDS_BEFORE/FIELDS_AFTER as protocol.md §6 tabulates", function()
      local from = #rec.lines
      local n0 = 0
      for _ in io.lines(rec.file) do n0 = n0 + 1 end
      local _, added = call(srv, "tasks.task.add", { fields = { TITLE = "evented task" } })
      local id = added.result.task.id
      assert.equal(200, (call(srv, "tasks.task.update", { taskId = id, fields = { TITLE = "y" } })))
      assert.equal(200, (call(srv, "tasks.task.delete", { taskId = id })))
      local got = by_event(rec.received(n0 + 3))
      assert.is_true(#rec.lines > from)
      local add, upd, del = got["ONTASKADD " .. id], got["ONTASKUPDATE " .. id], got["ONTASKDELETE " .. id]
      assert.same({ FIELDS_BEFORE = "undefined", FIELDS_AFTER = { ID = id }, IS_ACCESSIBLE_BEFORE = "N",
                    IS_ACCESSIBLE_AFTER = "undefined" }, add.form.data)
      assert.same({ FIELDS_BEFORE = { ID = id }, FIELDS_AFTER = { ID = id }, IS_ACCESSIBLE_BEFORE = "undefined",
                    IS_ACCESSIBLE_AFTER = "undefined" }, upd.form.data)
      assert.same({ FIELDS_BEFORE = { ID = id }, FIELDS_AFTER = "undefined", IS_ACCESSIBLE_BEFORE = "undefined",
                    IS_ACCESSIBLE_AFTER = "N" }, del.form.data)
      -- the captured task delivery's field order, with its data fields as an ADD has them
      local vector = names(shared.vector("events/webhook-ontaskcommentadd.form"))
      local expect = {}
      for _, name in ipairs(vector) do
         if name == "data[FIELDS_AFTER][ID]" then expect[#expect + 1] = name
         elseif not name:match("^data%[FIELDS_AFTER%]") then expect[#expect + 1] = name end
      end
      assert.same(expect, names(add.body))
      assert.equal(TOKEN, add.form.auth.application_token)
   end)

   it("posts an event for each change made by a batch sub-call", function()
      local n0 = 0
      for _ in io.lines(rec.file) do n0 = n0 + 1 end
      -- in this order: a portal runs the commands as sent (rest_provider.php methodsBatch)
      local _, body = emu.batch(srv, { { "a", "crm.lead.add?fields[TITLE]=b1" },
                                       { "b", "crm.lead.update?id=$result[a]&fields[TITLE]=b2" } })
      local id = emu.str(body.result.result.a)
      local got = by_event(rec.received(n0 + 2))
      assert.is_not_nil(got["ONCRMLEADADD " .. id])
      assert.is_not_nil(got["ONCRMLEADUPDATE " .. id])
   end)
end)

describe("emulator event failures", function()
   it("logs an undeliverable event with the URL reduced to its origin, and answers REST as usual", function()
      local dir = b24.tmpdir()
      -- a port that was just free: nothing listens there
      local rec = recorder(dir)
      local dead = rec.base
      rec:stop()
      local srv = b24.emulate{ args = { "--code", emu.CODE, "--token", TOKEN,
                                        "--events-to", dead .. "/secret0path?key=s3cr3t" } }
      finally(function() srv:stop(); os.execute("rm -rf " .. b24.quote(dir)) end)
      local status = call(srv, "crm.lead.add", { fields = { TITLE = "lost event" } })
      assert.equal(200, status)
      -- logged by the host's queue (or by the emulator itself without one)
      local line = assert(srv:wait_log(dead:match("//(.*)$")))
      assert.matches("level=warn", line, 1, true)
      assert.not_matches(TOKEN, srv:log(), 1, true)
      assert.not_matches("s3cr3t", srv:log(), 1, true)
      assert.not_matches("secret0path", srv:log(), 1, true)
      assert.not_matches(TOKEN, srv:log(), 1, true)
   end)
end)

describe("emulator --data", function()
   it("keeps entities and id counters across a restart, written atomically", function()
      local dir = b24.tmpdir()
      local data = dir .. "/portal.json"
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local args = { "--code", emu.CODE, "--data", data, "--seed-leads", "5" }
      local srv = b24.emulate{ args = args }
      local _, lead = call(srv, "crm.lead.add", { fields = { TITLE = "durable", PHONE = { { VALUE = "123" } } } })
      local _, task = call(srv, "tasks.task.add", { fields = { TITLE = "durable task" } })
      local _, comment = call(srv, "task.commentitem.add", nil,
                              { body = "[" .. task.result.task.id .. ',{"POST_MESSAGE":"durable comment"}]' })
      assert.equal(200, (call(srv, "crm.lead.delete", { id = 2 })))
      assert.equal(0, srv:stop())
      assert.is_nil(b24.read(data .. ".tmp"))
      local state = cjson.decode((assert(b24.read(data))))
      assert.equal("bitrix24-emulator", state.format)

      srv = b24.emulate{ args = args } -- the seed does not apply to an existing file
      finally(function() srv:stop() end)
      local _, got = call(srv, "crm.lead.get", { id = lead.result })
      assert.equal("durable", got.result.TITLE)
      assert.equal("123", got.result.PHONE[1].VALUE)
      local _, list = call(srv, "crm.lead.list", { select = { "ID" } })
      assert.equal(5, list.total)
      assert.equal(400, (call(srv, "crm.lead.get", { id = 2 })))
      local _, t = call(srv, "tasks.task.get", { taskId = task.result.task.id })
      assert.equal("durable task", t.result.task.title)
      local _, c = call(srv, "task.commentitem.get", nil,
                        { body = "[" .. task.result.task.id .. "," .. emu.str(comment.result) .. "]" })
      assert.equal("durable comment", c.result.POST_MESSAGE)
      local _, next_lead = call(srv, "crm.lead.add", { fields = { TITLE = "after restart" } })
      assert.equal(lead.result + 1, next_lead.result)
   end)

   it("refuses a file that is not an emulator data file", function()
      local dir = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local data = b24.write(dir .. "/other.json", '{"something":"else"}')
      if not b24.has_emulate() then
         local emulator = require "b24.emulator"
         local ok, err = pcall(emulator.main, { "--data", data })
         assert.is_false(ok)
         assert.matches("^b24 emulate: .*not an emulator data file", err)
         return
      end
      local out, code = b24.exec(b24.quote(b24.bin) .. " emulate --listen 127.0.0.1:0 --data " .. b24.quote(data))
      assert.is_true(code == 1 or code == 2, "exit " .. tostring(code))
      assert.matches("not an emulator data file", out, 1, true)
   end)
end)

describe("emulator task comments", function()
   local dir, rec, srv, task_id
   setup(function()
      dir = b24.tmpdir()
      rec = recorder(dir)
      srv = b24.emulate{ args = { "--code", emu.CODE, "--token", TOKEN, "--events-to", rec.base .. "/hook",
                                  "--timezone", "+03:00" } }
      local _, task = call(srv, "tasks.task.add", { fields = { TITLE = "commented" } })
      task_id = task.result.task.id
   end)
   teardown(function()
      if srv then srv:stop() end
      if rec then rec:stop() end
      os.execute("rm -rf " .. b24.quote(dir))
   end)

   -- a call whose JSON body is given as text (the parameters' order is the point)
   local function raw(method, body)
      return call(srv, method, nil, { body = body })
   end

   it("adds, updates, reads and deletes comments with parameters read by position, raising their events", function()
      -- an ordered array [TASKID, FIELDS], and named keys read in the order sent
      local status, added = raw("task.commentitem.add", "[" .. task_id .. ',{"POST_MESSAGE":"first"}]')
      assert.equal(200, status)
      assert.equal("number", type(added.result))
      local _, second = raw("task.commentitem.add", '{"TASKID":' .. task_id ..
         ',"FIELDS":{"POST_MESSAGE":"second","POST_DATE":"2026-01-02T10:00:00+00:00"}}')
      local c1, c2 = emu.str(added.result), emu.str(second.result)
      local _, got = raw("task.commentitem.get", '{"TASKID":' .. task_id .. ',"ITEMID":' .. c1 .. "}")
      assert.same({ "AUTHOR_EMAIL", "AUTHOR_ID", "AUTHOR_NAME", "ID", "POST_DATE", "POST_MESSAGE",
                    "POST_MESSAGE_HTML" }, emu.keys(got.result))
      assert.equal(c1, got.result.ID)
      assert.equal("first", got.result.POST_MESSAGE)
      assert.equal("1", got.result.AUTHOR_ID)
      assert.equal(cjson.null, got.result.POST_MESSAGE_HTML)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%+03:00$", got.result.POST_DATE)
      -- every comment of the task by ID; POST_DATE read as a date and printed in the portal's zone
      local _, list = raw("task.commentitem.getlist", "[" .. task_id .. "]")
      assert.same({ c1, c2 }, { list.result[1].ID, list.result[2].ID })
      assert.equal(2, #list.result)
      assert.equal("2026-01-02T13:00:00+03:00", list.result[2].POST_DATE)
      local _, older = raw("task.commentitem.getlist", "[" .. task_id .. ',{"ID":"desc"},{"<POST_DATE":"01.06.2026"}]')
      assert.equal(1, #older.result)
      assert.equal(c2, older.result[1].ID)
      local _, both = raw("task.commentitem.getlist", "[" .. task_id .. ',{"ID":"desc"}]')
      assert.same({ c2, c1 }, { both.result[1].ID, both.result[2].ID })
      -- update answers true; empty fields change nothing and answer false (commentitem.php update)
      local _, upd = raw("task.commentitem.update", "[" .. task_id .. "," .. c1 .. ',{"POST_MESSAGE":"edited"}]')
      assert.is_true(upd.result)
      local _, none = raw("task.commentitem.update", "[" .. task_id .. "," .. c1 .. ",[]]")
      assert.is_false(none.result)
      local _, after = raw("task.commentitem.get", "[" .. task_id .. "," .. c1 .. "]")
      assert.equal("edited", after.result.POST_MESSAGE)
      local _, del = raw("task.commentitem.delete", "[" .. task_id .. "," .. c2 .. "]")
      assert.is_true(del.result)
      local _, left = raw("task.commentitem.getlist", '{"TASKID":' .. task_id .. "}")
      assert.equal(1, #left.result)

      -- ONTASKADD, then the comments' ADD, ADD, UPDATE (the false one raised nothing), DELETE
      local list_events = rec.through("ONTASKCOMMENTDELETE/" .. c2)
      assert.equal(5, #list_events)
      local events = {}
      for i = 2, 5 do events[#events + 1] = list_events[i] end
      local tid = tostring(task_id)
      assert.same({ "ONTASKCOMMENTADD", "ONTASKCOMMENTADD", "ONTASKCOMMENTUPDATE", "ONTASKCOMMENTDELETE" },
                  { events[1].form.event, events[2].form.event, events[3].form.event, events[4].form.event })
      -- tasks/classes/general/commentitem.php onEventFilter, as the captured delivery has it
      assert.same({ FIELDS_BEFORE = "undefined", FIELDS_AFTER = { ID = "0", MESSAGE_ID = c1, TASK_ID = tid },
                    IS_ACCESSIBLE_BEFORE = "N", IS_ACCESSIBLE_AFTER = "undefined" }, events[1].form.data)
      assert.same(names(shared.vector("events/webhook-ontaskcommentadd.form")), names(events[1].body))
      assert.same({ FIELDS_BEFORE = { ID = c1, TASK_ID = tid },
                    FIELDS_AFTER = { ID = c1, TASK_ID = tid, ACTION = "EDIT" },
                    IS_ACCESSIBLE_BEFORE = "undefined", IS_ACCESSIBLE_AFTER = "undefined" }, events[3].form.data)
      assert.same({ FIELDS_BEFORE = { ID = c2, TASK_ID = tid },
                    FIELDS_AFTER = { ID = c2, TASK_ID = tid, ACTION = "DEL" },
                    IS_ACCESSIBLE_BEFORE = "undefined", IS_ACCESSIBLE_AFTER = "undefined" }, events[4].form.data)
      assert.matches("data[FIELDS_AFTER][ACTION]=EDIT", events[3].body, 1, true)
   end)

   it("adds a comment from a batch command, its parameters in the order of the query", function()
      local status, body = emu.batch(srv, { { "c", "task.commentitem.add?TASKID=" .. task_id ..
                                              "&FIELDS[POST_MESSAGE]=from%20batch" } })
      assert.equal(200, status)
      local id = body.result.result.c
      assert.equal("number", type(id))
      local _, got = raw("task.commentitem.get", "[" .. task_id .. "," .. emu.str(id) .. "]")
      assert.equal("from batch", got.result.POST_MESSAGE)
   end)

   it("answers the errors of restservice.php and commentitem.php", function()
      local cases = {
         -- the parameters' order decides: FIELDS first is param #0, not an integer
         { "task.commentitem.add", '{"FIELDS":{"POST_MESSAGE":"x"},"TASKID":' .. task_id .. "}",
           'TASKS_ERROR_EXCEPTION_#256; Param #0 (taskId) for method ctaskcommentitem::add() expected to be of type ' ..
           '"integer", but given something else.; 256/TE/WRONG_ARGUMENTS<br>' },
         { "task.commentitem.add", "[" .. task_id .. "]",
           "TASKS_ERROR_EXCEPTION_#256; Param #1 (arFields) expected by method ctaskcommentitem::add(), but not " ..
           "given.; 256/TE/WRONG_ARGUMENTS<br>" },
         { "task.commentitem.add", "[" .. task_id .. ',{"TITLE":"x"}]',
           'TASKS_ERROR_EXCEPTION_#256; Param #1 (arFields) for method ctaskcommentitem::add() must not contain key ' ..
           '"TITLE".; 256/TE/WRONG_ARGUMENTS<br>' },
         { "task.commentitem.add", '[999999,{"POST_MESSAGE":"x"}]', "Insufficient permissions to add a comment.<br>" },
         { "task.commentitem.getlist", "[" .. task_id .. ',{">=POST_DATE":"2025-01-01"}]',
           'TASKS_ERROR_EXCEPTION_#256; Param #1 (arOrder) for method ctaskcommentitem::getlist() must not contain ' ..
           'key ">=POST_DATE".; 256/TE/WRONG_ARGUMENTS<br>' },
         { "task.commentitem.getlist", "[999999]",
           "TASKS_ERROR_EXCEPTION_#8; Action failed; 8/TE/ACTION_FAILED_TO_BE_PROCESSED<br>" },
         { "task.commentitem.get", "[" .. task_id .. ",999999]",
           "TASKS_ERROR_EXCEPTION_#512; Check listitem not found or not accessible; " ..
           "512/TE/ITEM_NOT_FOUND_OR_NOT_ACCESSIBLE<br>" },
         { "task.commentitem.delete", "[" .. task_id .. ",999999]",
           "TASKS_ERROR_EXCEPTION_#4; Action is not allowed; 4/TE/ACTION_NOT_ALLOWED<br>" },
         { "task.commentitem.update", "[" .. task_id .. ',999999,{"POST_MESSAGE":"x"}]',
           "TASKS_ERROR_EXCEPTION_#4; Action is not allowed; 4/TE/ACTION_NOT_ALLOWED<br>" },
      }
      for _, case in ipairs(cases) do
         local status, body = raw(case[1], case[2])
         assert.equal(400, status, case[2])
         assert.same({ error = "ERROR_CORE", error_description = case[3] }, body)
      end
   end)
end)

describe("emulator smart-process item events", function()
   it("sends ONCRMDYNAMICITEM* with FIELDS ID and ENTITY_TYPE_ID, and the type's own event beside it", function()
      local dir = b24.tmpdir()
      local rec = recorder(dir)
      local http = core.http{ timeout = 10 }
      finally(function() rec:stop(); http:close(); os.execute("rm -rf " .. b24.quote(dir)) end)
      -- an in-process portal whose post service POSTs to the receiver at once
      local portal = require("b24.emulator.portal").new{
         events_to = { rec.base .. "/hook" }, token = TOKEN, data = nil,
         post = function(url, body, headers)
            local res = assert(http:request{ method = "POST", url = url, headers = headers, body = body })
            return res.status == 200
         end,
         log = function() end,
      }
      portal:changed("ONCRMDYNAMICITEMADD", 7, { ENTITY_TYPE_ID = 128 })
      portal:changed("ONCRMDYNAMICITEMDELETE", 7, { ENTITY_TYPE_ID = 128 })
      portal:changed("ONCRMLEADADD", 8) -- the two-argument form still works
      -- each post returned once the receiver had answered: all are in
      local got = rec.all()
      assert.equal(5, #got)
      local want = { "ONCRMDYNAMICITEMADD", "ONCRMDYNAMICITEMADD_128", "ONCRMDYNAMICITEMDELETE",
                     "ONCRMDYNAMICITEMDELETE_128", "ONCRMLEADADD" }
      for i, name in ipairs(want) do assert.equal(name, got[i].form.event) end
      for i = 1, 4 do
         assert.same({ FIELDS = { ID = "7", ENTITY_TYPE_ID = "128" } }, got[i].form.data)
         -- crm/lib/integration/rest/eventmanager.php processItemEvent: ID, then ENTITY_TYPE_ID
         local order = names(got[i].body)
         assert.same({ "event", "event_handler_id", "data[FIELDS][ID]", "data[FIELDS][ENTITY_TYPE_ID]", "ts" },
                     { order[1], order[2], order[3], order[4], order[5] })
      end
      assert.same({ FIELDS = { ID = "8" } }, got[5].form.data)
   end)
end)
