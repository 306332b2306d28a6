-- The offline event queue of `b24 emulate --app` (issue 16 item 3), over real HTTP: event.bind
-- with event_type=offline queues each change (rest/lib/event/provideroffline.php,
-- rest/lib/eventoffline.php callEvent), rows merge on MESSAGE_ID, event.offline.get takes
-- (clear=1) or marks (clear=0, the feature rest_offline_extended) with a process,
-- event.offline.clear/error/list (rest/lib/api/event.php), ONOFFLINEEVENT with minTimeout
-- (eventoffline.php prepareOfflineEvent), auth_connector's no-echo rule, a webhook's 403, and
-- --data keeping the queue and the bindings. The queue's retention is checked in process.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local cjson = require "cjson"

local CLIENT_ID = "local.spec0offline00001.12345678"
local SECRET = "spec0offline0secret000000000000000000000000000001"

local recorder = require("helpers.recorder").start

local rest = emu.rest

-- The result of a call that must succeed.
local function ok(status, body)
   assert.are.equal(200, status, cjson.encode(body))
   return body.result
end

-- The emulator's offline counters (emulator.offline.stats).
local function stats(srv)
   return ok(emu.call(srv, "emulator.offline.stats"))
end

-- n leads added through the webhook, 50 a batch: their ids.
local function add_leads(srv, n)
   local ids = {}
   local done = 0
   while done < n do
      local cmds = {}
      for i = 1, math.min(50, n - done) do cmds[i] = { "l" .. i, "crm.lead.add?fields[TITLE]=L" .. (done + i) } end
      local result = ok(emu.batch(srv, cmds))
      for i = 1, #cmds do ids[#ids + 1] = emu.str(result.result["l" .. i]) end
      done = done + #cmds
   end
   return ids
end

-- md5 hex of s by the system's md5sum (not the emulator's code).
local function md5sum(s)
   local out = b24.exec("printf '%s' " .. b24.quote(s) .. " | md5sum")
   return out:match("^(%x+)")
end

-- A set of a list's MESSAGE_IDs.
local function message_set(events)
   local set = {}
   for _, e in ipairs(events) do set[e.MESSAGE_ID] = true end
   return set
end

-- An emulator with the application and a recorder for its install: srv, rec, the access token.
local function start(extra)
   local rec = recorder()
   -- a fast clock for the leaky bucket (the specs make hundreds of calls), tokens that outlive it
   local args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET, "--install-to", rec:url("/install"),
                  "--time-scale", "1000", "--token-ttl", "1000000000" }
   for _, a in ipairs(extra or {}) do args[#args + 1] = a end
   local srv = b24.emulate{ args = args }
   ok(emu.call(srv, "emulator.offline.stats"))
   return srv, rec, rec.delivery("ONAPPINSTALL", 1).form.auth.access_token
end

describe("emulator offline queue", function()
   local srv, rec, token
   -- takes every row of the queue (clear=1), so each test starts from an empty one
   local function drain()
      -- the rows marked by a process (clear=0) first: cleared by their process
      while true do
         local rows = ok(rest(srv, "event.offline.list", token, { order = { PROCESS_ID = "DESC" } }))
         if not rows[1] or rows[1].PROCESS_ID == "" then break end
         ok(rest(srv, "event.offline.clear", token, { process_id = rows[1].PROCESS_ID }))
      end
      ok(rest(srv, "event.offline.get", token, { limit = 100000 }))
      ok(rest(srv, "event.offline.get", token, { limit = 100000, error = 1 }))
   end
   setup(function()
      srv, rec, token = start()
      assert.is_true(ok(rest(srv, "event.bind", token, { event = "ONCRMLEADADD", event_type = "offline" })))
      assert.is_true(ok(rest(srv, "event.bind", token, { event = "ONCRMLEADUPDATE", event_type = "offline" })))
   end)
   teardown(function()
      if srv then srv:stop() end
      if rec then rec:stop() end
   end)
   before_each(function() drain() end)

   it("queues 1,000 changes of distinct leads as 1,000 rows (provideroffline.php, eventoffline.php)", function()
      local before = stats(srv)
      local ids = add_leads(srv, 1000)
      assert.are.equal(1000, #ids)
      local after = stats(srv)
      assert.are.equal(1000, after.rows)
      assert.are.equal(before.queued + 1000, after.queued)
      local list = ok(rest(srv, "event.offline.list", token))
      -- the response carries total and next (IRestService::setNavData)
      local status, body = rest(srv, "event.offline.list", token)
      assert.are.equal(200, status)
      assert.are.equal(1000, body.total)
      assert.are.equal(50, body.next)
      assert.are.equal(50, #list)
      assert.are.equal(ids[1], list[1].EVENT_DATA.FIELDS.ID and emu.str(list[1].EVENT_DATA.FIELDS.ID))
      -- one get takes them all (no maximum limit: rest/lib/api/event.php intval)
      local got = ok(rest(srv, "event.offline.get", token, { limit = 5000 }))
      assert.are.equal(1000, #got.events)
      assert.are.equal(0, stats(srv).rows)
   end)

   it("merges changes of one object into one row on MESSAGE_ID = md5(EVENT_NAME|json) (eventoffline.php)", function()
      local id = add_leads(srv, 1)[1]
      local before = stats(srv)
      for i = 1, 3 do
         ok(emu.call(srv, "crm.lead.update", { id = id, fields = { TITLE = "v" .. i } }))
      end
      local after = stats(srv)
      assert.are.equal(before.queued + 1, after.queued)
      assert.are.equal(before.merged + 2, after.merged)
      local rows = ok(rest(srv, "event.offline.list", token, { filter = { EVENT_NAME = "ONCRMLEADUPDATE" } }))
      assert.are.equal(1, #rows)
      local row = rows[1]
      assert.are.equal("ONCRMLEADUPDATE", row.EVENT_NAME)
      assert.are.equal(id, emu.str(row.EVENT_DATA.FIELDS.ID))
      assert.are.equal(md5sum('ONCRMLEADUPDATE|{"FIELDS":{"ID":' .. id .. '}}'), row.MESSAGE_ID)
      assert.are.same({ user_id = 1 }, row.EVENT_ADDITIONAL)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%+03:00$", row.TIMESTAMP_X)
      assert.are.equal("", row.PROCESS_ID)
      assert.are.equal("0", row.ERROR)
   end)

   it("takes and deletes the rows with clear=1, answering process_id null (event.php eventOfflineGet)", function()
      add_leads(srv, 7)
      local before = stats(srv)
      local got = ok(rest(srv, "event.offline.get", token, { limit = 5 }))
      assert.are.equal(cjson.null, got.process_id)
      assert.are.equal(5, #got.events)
      local e = got.events[1]
      assert.are.same({ "EVENT_ADDITIONAL", "EVENT_DATA", "EVENT_NAME", "ID", "MESSAGE_ID", "TIMESTAMP_X" },
                      emu.keys(e))
      local after = stats(srv)
      assert.are.equal(before.taken + 5, after.taken)
      assert.are.equal(before.cleared + 5, after.cleared)
      assert.are.equal(2, after.rows)
      -- the next get takes the other two, the default limit being 50 (IRestService::LIST_LIMIT)
      got = ok(rest(srv, "event.offline.get", token))
      assert.are.equal(2, #got.events)
      assert.is_nil(message_set(got.events)[e.MESSAGE_ID])
      got = ok(rest(srv, "event.offline.get", token))
      assert.are.same({}, got.events)
      -- a bad limit and a filter field get does not take
      local status, body = rest(srv, "event.offline.get", token, { limit = 0 })
      assert.are.equal(400, status)
      assert.are.equal("LIMIT", body.argument)
      status, body = rest(srv, "event.offline.get", token, { filter = { PROCESS_ID = "" } })
      assert.are.equal(400, status)
      assert.are.equal("Filter field not allowed: PROCESS_ID", body.error_description)
   end)

   it("gives two gets with clear=0 disjoint sets, each marked with its process (eventoffline.php markEvents)",
      function()
      add_leads(srv, 10)
      -- two pullers at once: two curl processes started together
      local dir = b24.tmpdir()
      local body = b24.quote(cjson.encode({ clear = 0, limit = 4, auth = token }))
      local one = "curl -s -o %s -H 'Content-Type: application/json' -d " .. body .. " "
         .. srv:url("/rest/event.offline.get")
      b24.exec(one:format(dir .. "/a") .. " & " .. one:format(dir .. "/b") .. " & wait")
      local a = cjson.decode(b24.read(dir .. "/a")).result
      local b = cjson.decode(b24.read(dir .. "/b")).result
      os.execute("rm -rf " .. b24.quote(dir))
      assert.matches("^%x+$", a.process_id)
      assert.matches("^%x+$", b.process_id)
      assert.are_not.equal(a.process_id, b.process_id)
      assert.are.equal(4, #a.events)
      assert.are.equal(4, #b.events)
      local seen = message_set(a.events)
      for _, e in ipairs(b.events) do assert.is_nil(seen[e.MESSAGE_ID]) end
      -- nothing deleted; the marks show in the list
      assert.are.equal(10, stats(srv).rows)
      local marked = ok(rest(srv, "event.offline.list", token, { filter = { PROCESS_ID = a.process_id } }))
      assert.are.equal(4, #marked)
      -- the same process again: its rows once more (process_id given: nothing marked)
      local again = ok(rest(srv, "event.offline.get", token, { clear = 0, process_id = a.process_id }))
      assert.are.equal(a.process_id, again.process_id)
      assert.are.same(message_set(a.events), message_set(again.events))
      -- the remaining two for a third get
      local c = ok(rest(srv, "event.offline.get", token, { clear = 0 }))
      assert.are.equal(2, #c.events)
   end)

   it("clears by process and message ids, by process and ids, and a whole process (eventOfflineClear)", function()
      add_leads(srv, 6)
      local got = ok(rest(srv, "event.offline.get", token, { clear = 0, limit = 6, order = { ID = "ASC" } }))
      local ev = got.events
      assert.are.equal(6, #ev)
      -- another process's id clears nothing
      assert.is_true(ok(rest(srv, "event.offline.clear", token, { process_id = "other",
                                                                   message_id = { ev[1].MESSAGE_ID } })))
      assert.are.equal(6, stats(srv).rows)
      local two = { ev[1].MESSAGE_ID, ev[2].MESSAGE_ID }
      assert.is_true(ok(rest(srv, "event.offline.clear", token, { process_id = got.process_id, message_id = two })))
      assert.are.equal(4, stats(srv).rows)
      assert.is_true(ok(rest(srv, "event.offline.clear", token, { process_id = got.process_id, id = { ev[3].ID } })))
      local left = ok(rest(srv, "event.offline.list", token))
      assert.are.same({ ev[4].ID, ev[5].ID, ev[6].ID }, { left[1].ID, left[2].ID, left[3].ID })
      assert.is_true(ok(rest(srv, "event.offline.clear", token, { process_id = got.process_id })))
      assert.are.equal(0, stats(srv).rows)
      -- the arguments the platform checks
      local status, body = rest(srv, "event.offline.clear", token, {})
      assert.are.equal(400, status)
      assert.are.equal("PROCESS_ID", body.argument)
      status, body = rest(srv, "event.offline.clear", token, { process_id = "x", message_id = { "short" } })
      assert.are.equal(400, status)
      assert.are.equal("Value must be array of MESSAGE_ID values", body.error_description)
   end)

   it("parks a row with event.offline.error: returned again only with error=1 (eventoffline.php markError)", function()
      local ids = add_leads(srv, 3)
      drain()
      for _, id in ipairs(ids) do ok(emu.call(srv, "crm.lead.update", { id = id, fields = { TITLE = "u" } })) end
      local got = ok(rest(srv, "event.offline.get", token, { clear = 0 }))
      assert.are.equal(3, #got.events)
      local bad = got.events[1]
      local before = stats(srv)
      assert.is_true(ok(rest(srv, "event.offline.error", token, { process_id = got.process_id,
                                                                   message_id = { bad.MESSAGE_ID } })))
      assert.are.equal(before.errored + 1, stats(srv).errored)
      local row = ok(rest(srv, "event.offline.list", token, { filter = { MESSAGE_ID = bad.MESSAGE_ID } }))[1]
      assert.are.equal("1", row.ERROR)
      assert.are.equal("", row.PROCESS_ID)
      -- the others are acknowledged; a get without error=1 does not see the parked row
      assert.is_true(ok(rest(srv, "event.offline.clear", token, { process_id = got.process_id })))
      assert.are.equal(1, stats(srv).rows)
      assert.are.same({}, ok(rest(srv, "event.offline.get", token)).events)
      -- a new change of the parked lead merges into the parked row (its key: PROCESS_ID '')
      before = stats(srv)
      ok(emu.call(srv, "crm.lead.update", { id = emu.str(bad.EVENT_DATA.FIELDS.ID), fields = { TITLE = "again" } }))
      assert.are.equal(before.merged + 1, stats(srv).merged)
      assert.are.equal(before.queued, stats(srv).queued)
      local parked = ok(rest(srv, "event.offline.get", token, { error = 1 }))
      assert.are.equal(1, #parked.events)
      assert.are.equal(bad.MESSAGE_ID, parked.events[1].MESSAGE_ID)
      local status, body = rest(srv, "event.offline.error", token, { process_id = "x", message_id = "y" })
      assert.are.equal(400, status)
      assert.are.equal("message_id", body.argument)
   end)

   it("lists without taking: filter, order, pages of 50 (eventOfflineList)", function()
      local ids = add_leads(srv, 60)
      local first = ok(rest(srv, "event.offline.list", token))
      local status, again = rest(srv, "event.offline.list", token, { start = 50 })
      assert.are.equal(200, status)
      assert.are.equal(10, #again.result)
      assert.are.equal(60, again.total)
      assert.is_nil(again.next)
      assert.are.equal(ids[1], emu.str(first[1].EVENT_DATA.FIELDS.ID))
      local desc = ok(rest(srv, "event.offline.list", token, { order = { ID = "DESC" }, filter = { [">ID"] = 0 } }))
      assert.are.equal(ids[60], emu.str(desc[1].EVENT_DATA.FIELDS.ID))
      assert.are.equal(60, stats(srv).rows)
      -- still all there for a get
      assert.are.equal(60, #ok(rest(srv, "event.offline.get", token, { limit = 100 })).events)
      local bad
      status, bad = rest(srv, "event.offline.list", token, { order = { ID = "UP" } })
      assert.are.equal(400, status)
      assert.are.equal("Order direction should be one of {ASC|DESC}", bad.error_description)
   end)

   it("answers a webhook 403 WRONG_AUTH_TYPE for every event.offline.* (event.php, authtypeexception.php)", function()
      for _, m in ipairs({ "event.offline.get", "event.offline.clear", "event.offline.error", "event.offline.list" }) do
         local status, body = emu.call(srv, m, {})
         assert.are.equal(403, status, m)
         assert.are.equal("WRONG_AUTH_TYPE", body.error)
      end
   end)

   it("does not queue the application's own writes for its bindings without a connector (provideroffline.php)",
      function()
      local before = stats(srv)
      ok(rest(srv, "crm.lead.add", token, { fields = { TITLE = "by the app" } }))
      local after = stats(srv)
      assert.are.equal(before.queued, after.queued)
      assert.are.equal(before.skipped + 1, after.skipped)
      assert.are.equal(0, after.rows)
   end)
end)

describe("emulator offline queue: ONOFFLINEEVENT and auth_connector", function()
   local srv, rec, token
   setup(function()
      srv, rec, token = start()
   end)
   teardown(function()
      if srv then srv:stop() end
      if rec then rec:stop() end
   end)

   it("rings ONOFFLINEEVENT once per minTimeout burst, and once per hit with 0 (prepareOfflineEvent)", function()
      ok(rest(srv, "event.bind", token, { event = "ONCRMDEALADD", event_type = "offline" }))
      ok(rest(srv, "event.bind", token, { event = "ONOFFLINEEVENT", handler = rec:url("/slow"),
                                          options = { minTimeout = 3600 } }))
      -- offline is refused for it ("disableOffline")
      local status, body = rest(srv, "event.bind", token, { event = "ONOFFLINEEVENT", event_type = "offline" })
      assert.are.equal(400, status)
      assert.are.equal("Offline event cannot be registered for this event.", body.error_description)
      local before = stats(srv)
      for i = 1, 5 do ok(emu.call(srv, "crm.deal.add", { fields = { TITLE = "d" .. i } })) end
      assert.are.equal(before.notified + 1, stats(srv).notified)
      local d = rec.delivery("ONOFFLINEEVENT", 1)
      assert.are.equal("/slow", d.path)
      assert.is_nil(d.form.data)
      assert.matches("^%d+$", d.form.event_handler_id)
      assert.is_true(#d.form.auth.access_token >= 32 and #d.form.auth.refresh_token >= 32)
      assert.is_string(d.form.auth.application_token)
      -- minTimeout 0: one per hit (a batch of three changes is one hit), none for a hit queueing nothing
      ok(rest(srv, "event.bind", token, { event = "ONOFFLINEEVENT", handler = rec:url("/each"),
                                          options = { minTimeout = 0 } }))
      ok(emu.call(srv, "crm.deal.add", { fields = { TITLE = "x" } }))
      ok(emu.batch(srv, { { "a", "crm.deal.add?fields[TITLE]=a" }, { "b", "crm.deal.add?fields[TITLE]=b" },
                          { "c", "crm.deal.add?fields[TITLE]=c" } }))
      ok(emu.call(srv, "crm.lead.add", { fields = { TITLE = "not bound" } }))
      assert.are.equal(before.notified + 3, stats(srv).notified)
      assert.are.equal("/each", rec.delivery("ONOFFLINEEVENT", 3).path)
   end)

   it("binds with auth_connector: writes made with it do not queue for it, others do (provideroffline.php)", function()
      ok(rest(srv, "event.bind", token, { event = "ONCRMCONTACTADD", event_type = "offline", auth_connector = "sync" }))
      local bindings = ok(rest(srv, "event.get", token))
      local found
      for _, b in ipairs(bindings) do
         if b.event == "ONCRMCONTACTADD" then found = b end
      end
      assert.are.same({ event = "ONCRMCONTACTADD", connector_id = "sync", offline = 1 }, found)
      local before = stats(srv)
      ok(rest(srv, "crm.contact.add", token, { fields = { NAME = "echo" }, auth_connector = "sync" }))
      assert.are.equal(before.queued, stats(srv).queued)
      -- the application without the connector, and the webhook, are someone else to it
      ok(rest(srv, "crm.contact.add", token, { fields = { NAME = "app" } }))
      local id = emu.str(ok(emu.call(srv, "crm.contact.add", { fields = { NAME = "user" } })))
      assert.are.equal(before.queued + 2, stats(srv).queued)
      -- the connector's rows are read with it only
      assert.are.same({}, ok(rest(srv, "event.offline.list", token, { filter = { EVENT_NAME = "ONCRMCONTACTADD" } })))
      local got = ok(rest(srv, "event.offline.get", token, { auth_connector = "sync" }))
      assert.are.equal(2, #got.events)
      assert.are.equal(id, emu.str(got.events[2].EVENT_DATA.FIELDS.ID))
   end)

   it("says whether it has the features (rest_provider.php getFeature)", function()
      assert.are.same({ value = "Y" }, ok(rest(srv, "feature.get", token, { CODE = "rest_offline_extended" })))
      assert.are.same({ value = "Y" }, ok(rest(srv, "feature.get", token, { CODE = "rest_auth_connector" })))
   end)
end)

describe("emulator offline queue without rest_offline_extended", function()
   local srv, rec, token
   setup(function()
      srv, rec, token = start{ "--offline-extended", "off" }
      ok(rest(srv, "event.bind", token, { event = "ONCRMLEADADD", event_type = "offline" }))
   end)
   teardown(function()
      if srv then srv:stop() end
      if rec then rec:stop() end
   end)

   it("refuses clear=0 with 403 WRONG_LICENSE and still serves clear=1 (event.php LicenseException)", function()
      add_leads(srv, 2)
      local status, body = rest(srv, "event.offline.get", token, { clear = 0 })
      assert.are.equal(403, status)
      assert.are.equal("WRONG_LICENSE", body.error)
      assert.are.equal("This feature is not enabled for the current license: extended offline events handling",
                       body.error_description)
      assert.are.equal(2, #ok(rest(srv, "event.offline.get", token)).events)
      assert.are.same({ value = "N" }, ok(rest(srv, "feature.get", token, { CODE = "rest_offline_extended" })))
   end)
end)

describe("emulator offline queue --data", function()
   it("keeps the queue and the bindings across a restart", function()
      local dir = b24.tmpdir()
      local data = dir .. "/portal.json"
      local srv, rec, token = start{ "--data", data }
      ok(rest(srv, "event.bind", token, { event = "ONCRMLEADADD", event_type = "offline" }))
      add_leads(srv, 3)
      local taken = ok(rest(srv, "event.offline.get", token, { clear = 0, limit = 1 }))
      srv:stop()
      rec:stop()
      srv, rec, token = start{ "--data", data }
      local rows = ok(rest(srv, "event.offline.list", token))
      assert.are.equal(3, #rows)
      assert.are.equal(taken.process_id, rows[1].PROCESS_ID)
      assert.are.same({ { event = "ONCRMLEADADD", connector_id = "", offline = 1 } }, ok(rest(srv, "event.get", token)))
      -- the binding still queues, with the ids going on
      add_leads(srv, 1)
      rows = ok(rest(srv, "event.offline.list", token))
      assert.are.equal(4, #rows)
      assert.are.equal("4", rows[4].ID)
      srv:stop()
      rec:stop()
      os.execute("rm -rf " .. b24.quote(dir))
   end)
end)

describe("emulator offline queue in process", function()
   local offline = require "b24.emulator.offline"

   it("purges rows older than the retention (eventoffline.php cleanProcessAgent)", function()
      local t = 1000000
      local q = offline.new{ retention = 100, wall = function() return t end }
      q:push("ONCRMLEADADD", { { "[FIELDS][ID]", "1" } }, 1, "")
      t = t + 50
      q:push("ONCRMLEADADD", { { "[FIELDS][ID]", "2" } }, 1, "")
      t = t + 60
      assert.are.equal(1, q:purge(true))
      assert.are.equal(1, q:count())
      -- a merge renews TIMESTAMP_X, which is what the retention counts from
      q:push("ONCRMLEADADD", { { "[FIELDS][ID]", "2" } }, 1, "")
      t = t + 90
      assert.are.equal(0, q:purge(true))
      assert.are.equal(1, q:count())
   end)
end)

describe("emulator answers held per method (--method-latency, --method-stall)", function()
   local srv, rec, token
   -- the "emulator answer held" lines so far: counted once the portal has logged the request
   -- of a unique method (404) sent after every earlier one
   local syncs = 0
   local function held_lines(from)
      syncs = syncs + 1
      local tag = "spec.sync" .. syncs
      assert.are.equal(404, (emu.call(srv, tag)))
      assert(srv:wait_log(tag .. " "))
      local n = 0
      for i = from or 1, #srv.lines do
         if srv.lines[i]:find("emulator answer held", 1, true) then n = n + 1 end
      end
      return n
   end
   setup(function()
      srv, rec, token = start({ "--method-latency", "event.offline.get@2=300",
                                "--method-stall", "event.offline.clear@1=200" })
      assert.is_true(ok(rest(srv, "event.bind", token, { event = "ONCRMLEADADD", event_type = "offline" })))
      add_leads(srv, 3)
   end)
   teardown(function()
      if srv then srv:stop() end
      if rec then rec:stop() end
   end)

   it("runs the N-th call and holds its answer, logged once it ran; a stall refuses 503 without running", function()
      local first = ok(rest(srv, "event.offline.get", token, { clear = 0, limit = 1 }))
      local second = ok(rest(srv, "event.offline.get", token, { clear = 0, limit = 1 }))
      assert.are.equal(1, #second.events)
      local line = assert(srv:wait_log("emulator answer held"))
      assert.matches("method=event.offline.get", line, 1, true)
      assert.matches("call=2", line, 1, true)
      assert.matches("ran=yes", line, 1, true)
      -- the held call ran: its row is marked with its process
      local marked = ok(rest(srv, "event.offline.list", token, { filter = { PROCESS_ID = second.process_id } }))
      assert.are.equal(1, #marked)
      -- the first clear stalls: 503 QUERY_LIMIT_EXCEEDED, and the process keeps its row
      local status, body = rest(srv, "event.offline.clear", token, { process_id = first.process_id })
      assert.are.equal(503, status)
      assert.are.equal("QUERY_LIMIT_EXCEEDED", body.error)
      assert(srv:wait_log("ran=no"))
      assert.are.equal(1, #ok(rest(srv, "event.offline.list", token, { filter = { PROCESS_ID = first.process_id } })))
      -- the next clear is not held and runs
      assert.is_true(ok(rest(srv, "event.offline.clear", token, { process_id = first.process_id })))
      assert.are.same({}, ok(rest(srv, "event.offline.list", token, { filter = { PROCESS_ID = first.process_id } })))
      -- a third get is not held: two held lines in all, one per rule
      ok(rest(srv, "event.offline.get", token, { clear = 0, limit = 1 }))
      assert.are.equal(2, held_lines())
   end)

   it("replaces the holds at run time with emulator.holds.set, counting calls afresh", function()
      local before = #srv.lines
      ok(emu.call(srv, "emulator.holds.set", { stall = "event.offline.list@2=100" }))
      ok(rest(srv, "event.offline.list", token))
      local status, body = rest(srv, "event.offline.list", token)
      assert.are.equal(503, status)
      assert.are.equal("QUERY_LIMIT_EXCEEDED", body.error)
      local line = assert(srv:wait_log("method=event.offline.list"))
      assert.matches("call=2", line, 1, true)
      -- none: nothing held any more (the --method-latency of the start included)
      ok(emu.call(srv, "emulator.holds.set"))
      for _ = 1, 3 do ok(rest(srv, "event.offline.get", token, { clear = 0, limit = 1 })) end
      assert.are.equal(1, held_lines(before + 1))
      status, body = emu.call(srv, "emulator.holds.set", { latency = "nonsense" })
      assert.are.equal(400, status)
      assert.are.equal("ERROR_ARGUMENT", body.error)
   end)

   it("refuses a hold that does not read METHOD[@N]=MS", function()
      for _, bad in ipairs({ "event.offline.get", "event.offline.get@0=5", "event.offline.get=3600000" }) do
         local out, code = b24.exec(b24.quote(b24.bin) .. " emulate --method-latency " .. b24.quote(bad))
         assert.are.equal(2, code, out)
         assert.matches("METHOD%[@N%]=MS", out)
      end
   end)
end)
