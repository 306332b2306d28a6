-- The emulator's events as the portal sends them, received by real loopback HTTP servers (`b24
-- serve` recording each body): identical events of one request sent once (rest/lib/event/
-- buffer.php), the handler's own event_handler_id, --events subscriptions per target, and the
-- drop fault. The post queue keeps the order raised, so a later request's event that arrives as
-- delivery n proves nothing else came before it.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local core = require "bitrix24.core"

local call = emu.call
local TOKEN = "spec0application0token0000000002"

-- A recording receiver: every body on a line of its file, and a log line
-- msg="recorded EVENT/ID" (the ID of data[FIELDS]).
local function recorder(dir, label)
   local file = dir .. "/" .. label .. ".txt"
   local srv = b24.start{ args = { "--workers", "1" }, script = ([[
      local host = require "b24.host"
      return function(req)
         local f = assert(io.open(%q, "ab"))
         f:write(req.body, "\n")
         f:close()
         local event = req.body:match("^event=([%%w_]+)")
         local id = req.body:match("data%%[FIELDS%%]%%[ID%%]=(%%d+)") or req.body:match("%%]%%[ID%%]=(%%d+)")
         host.log("info", "recorded " .. tostring(event) .. "/" .. tostring(id))
         return 200, { ["Content-Type"] = "text/plain" }, "ok"
      end]]):format(file) }
   -- the deliveries so far as { body, form, event, id, key = "EVENT id" }
   function srv.all()
      local out = {}
      for line in io.lines(file) do
         local form = core.form_decode(line)
         local data = form.data or {}
         local id = type(data.FIELDS) == "table" and data.FIELDS.ID
            or type(data.FIELDS_AFTER) == "table" and (data.FIELDS_AFTER.MESSAGE_ID or data.FIELDS_AFTER.ID)
            or type(data.FIELDS_BEFORE) == "table" and data.FIELDS_BEFORE.ID
         out[#out + 1] = { body = line, form = form, event = form.event, id = id,
                           key = form.event .. " " .. tostring(id) }
      end
      return out
   end
   -- waits for the delivery of event `name` about id (the posts keep their order: all before it
   -- are in); returns all so far
   function srv.through(name, id)
      assert(srv:wait_log("recorded " .. name .. "/" .. id .. '"'), name .. " " .. id .. " did not arrive")
      return srv.all()
   end
   return srv
end

-- The "EVENT id" keys of deliveries from index `from` on.
local function keys(list, from)
   local out = {}
   for i = from or 1, #list do out[#out + 1] = list[i].key end
   return out
end

describe("emulator event buffer", function()
   local dir, rec, srv
   local seen = 0 -- deliveries read by earlier tests
   setup(function()
      dir = b24.tmpdir()
      rec = recorder(dir, "all")
      srv = b24.emulate{ args = { "--code", emu.CODE, "--token", TOKEN, "--events-to", rec.base .. "/hook",
                                  "--time-scale", "100000" } }
   end)
   teardown(function()
      if srv then srv:stop() end
      if rec then rec:stop() end
      os.execute("rm -rf " .. b24.quote(dir))
   end)

   -- the deliveries after the earlier tests' up to the marker: a deal added by a request of its
   -- own after the ones under test
   local function through_marker()
      local _, deal = call(srv, "crm.deal.add", { fields = { TITLE = "marker" } })
      local got = rec.through("ONCRMDEALADD", emu.str(deal.result))
      local mine = {}
      for i = seen + 1, #got do mine[#mine + 1] = got[i] end
      seen = #got
      assert.equal("ONCRMDEALADD " .. emu.str(deal.result), mine[#mine].key)
      mine[#mine] = nil
      return mine
   end

   it("sends five updates of one lead in one batch as one ONCRMLEADUPDATE", function()
      local _, lead = call(srv, "crm.lead.add", { fields = { TITLE = "buffered" } })
      local id = emu.str(lead.result)
      local cmds = {}
      for i = 1, 5 do cmds[i] = { "u" .. i, "crm.lead.update?id=" .. id .. "&fields[TITLE]=t" .. i } end
      local status, body = emu.batch(srv, cmds)
      assert.equal(200, status)
      for i = 1, 5 do assert.is_true(body.result.result["u" .. i]) end
      local got = through_marker()
      assert.same({ "ONCRMLEADADD " .. id, "ONCRMLEADUPDATE " .. id }, keys(got))
      -- the same update in two requests: one delivery each (a buffer lives for one request)
      assert.equal(200, (call(srv, "crm.lead.update", { id = lead.result, fields = { TITLE = "again" } })))
      assert.equal(200, (call(srv, "crm.lead.update", { id = lead.result, fields = { TITLE = "again" } })))
      assert.same({ "ONCRMLEADUPDATE " .. id, "ONCRMLEADUPDATE " .. id }, keys(through_marker()))
   end)

   it("keeps an add and the updates of one lead in one batch as an ADD and one UPDATE, in the order raised", function()
      local status, body = emu.batch(srv, {
         { "a", "crm.lead.add?fields[TITLE]=b1" },
         { "u1", "crm.lead.update?id=$result[a]&fields[TITLE]=b2" },
         { "other", "crm.lead.add?fields[TITLE]=b3" },
         { "u2", "crm.lead.update?id=$result[a]&fields[TITLE]=b4" },
         { "u3", "crm.lead.update?id=$result[other]&fields[TITLE]=b5" },
         { "d", "crm.lead.delete?id=$result[other]" },
      })
      assert.equal(200, status)
      local a, other = emu.str(body.result.result.a), emu.str(body.result.result.other)
      -- the buffer's key is the handler, the event and its data: another lead's update is its own
      assert.same({ "ONCRMLEADADD " .. a, "ONCRMLEADUPDATE " .. a, "ONCRMLEADADD " .. other,
                    "ONCRMLEADUPDATE " .. other, "ONCRMLEADDELETE " .. other }, keys(through_marker()))
   end)

   it("sends the buffered events of a batch whose later command fails (halt), after the answer", function()
      local status, body = emu.batch(srv, {
         { "a", "crm.lead.add?fields[TITLE]=h1" },
         { "u", "crm.lead.update?id=$result[a]&fields[TITLE]=h2" },
         { "bad", "crm.lead.update?id=999999&fields[TITLE]=x" },
         { "never", "crm.lead.add?fields[TITLE]=h3" },
      }, { halt = 1 })
      assert.equal(200, status)
      assert.is_not_nil(body.result.result_error.bad)
      assert.is_nil(body.result.result.never)
      local a = emu.str(body.result.result.a)
      assert.same({ "ONCRMLEADADD " .. a, "ONCRMLEADUPDATE " .. a }, keys(through_marker()))
   end)

   it("names each delivery by its handler's own id: one per target and event, the same every time", function()
      local _, l1 = call(srv, "crm.lead.add", { fields = { TITLE = "h1" } })
      local _, l2 = call(srv, "crm.lead.add", { fields = { TITLE = "h2" } })
      assert.equal(200, (call(srv, "crm.lead.update", { id = l1.result, fields = { TITLE = "h3" } })))
      local got = through_marker()
      assert.same({ "ONCRMLEADADD " .. emu.str(l1.result), "ONCRMLEADADD " .. emu.str(l2.result),
                    "ONCRMLEADUPDATE " .. emu.str(l1.result) }, keys(got))
      local add1, add2, update = got[1].form.event_handler_id, got[2].form.event_handler_id,
         got[3].form.event_handler_id
      assert.matches("^%d+$", add1)
      assert.equal(add1, add2)
      assert.are_not.equal(add1, update)
      assert.is_true(tonumber(add1) > 0 and tonumber(update) > 0)
      -- the same bindings after a restart: the same ids (as b_rest_event's rows keep theirs); the
      -- seeded leads (no events) make the new lead's id one no earlier delivery had
      local again = b24.emulate{ args = { "--code", emu.CODE, "--token", TOKEN, "--events-to", rec.base .. "/hook",
                                          "--seed-leads", "500" } }
      finally(function() again:stop() end)
      local _, l3 = call(again, "crm.lead.add", { fields = { TITLE = "h4" } })
      local list = rec.through("ONCRMLEADADD", emu.str(l3.result))
      seen = #list
      assert.equal("ONCRMLEADADD " .. emu.str(l3.result), list[#list].key)
      assert.equal(add1, list[#list].form.event_handler_id)
   end)
end)

describe("emulator --events", function()
   it("sends a target only the events it subscribed to, and every event to a target without --events", function()
      local dir = b24.tmpdir()
      local picky, every = recorder(dir, "picky"), recorder(dir, "every")
      local srv = b24.emulate{ args = { "--code", emu.CODE, "--token", TOKEN,
                                        "--events-to", picky.base .. "/picky", "--events", "ONCRMLEADADD,oncrmdeal*",
                                        "--events-to", every.base .. "/every" } }
      finally(function()
         srv:stop(); picky:stop(); every:stop()
         os.execute("rm -rf " .. b24.quote(dir))
      end)
      local _, lead = call(srv, "crm.lead.add", { fields = { TITLE = "s" } })
      assert.equal(200, (call(srv, "crm.lead.update", { id = lead.result, fields = { TITLE = "s2" } })))
      local _, task = call(srv, "tasks.task.add", { fields = { TITLE = "t" } })
      local _, deal = call(srv, "crm.deal.add", { fields = { TITLE = "d" } })
      assert.equal(200, (call(srv, "crm.deal.update", { id = deal.result, fields = { TITLE = "d2" } })))
      local _, contact = call(srv, "crm.contact.add", { fields = { NAME = "c" } })
      local l, d = emu.str(lead.result), emu.str(deal.result)
      -- the last event picky gets comes after the ones it must not get: nothing else came between
      local _, marker = call(srv, "crm.deal.add", { fields = { TITLE = "marker" } })
      local m = emu.str(marker.result)
      local for_picky, for_every = picky.through("ONCRMDEALADD", m), every.through("ONCRMDEALADD", m)
      assert.same({ "ONCRMLEADADD " .. l, "ONCRMDEALADD " .. d, "ONCRMDEALUPDATE " .. d, "ONCRMDEALADD " .. m },
                  keys(for_picky))
      assert.same({ "ONCRMLEADADD " .. l, "ONCRMLEADUPDATE " .. l, "ONTASKADD " .. task.result.task.id,
                    "ONCRMDEALADD " .. d, "ONCRMDEALUPDATE " .. d, "ONCRMCONTACTADD " .. emu.str(contact.result),
                    "ONCRMDEALADD " .. m }, keys(for_every))
      -- each target binds its own handlers: the same event, two ids
      assert.are_not.equal(for_picky[1].form.event_handler_id, for_every[1].form.event_handler_id)
   end)

   it("refuses an unknown event name or prefix, naming it, and --events without a target", function()
      local cases = {
         { { "--events-to", "http://127.0.0.1:9/x", "--events", "ONCRMLEADADD,ONCRMLEADADDD" },
           "unknown event 'ONCRMLEADADDD' (did you mean ONCRMLEADADD?)" },
         { { "--events-to", "http://127.0.0.1:9/x", "--events", "ONNOTHING*" },
           "no documented event starts with 'ONNOTHING'" },
         { { "--events", "ONCRMLEADADD", "--events-to", "http://127.0.0.1:9/x" }, "--events needs an --events-to" },
      }
      for _, case in ipairs(cases) do
         if b24.has_emulate() then
            local args = {}
            for i, a in ipairs(case[1]) do args[i] = b24.quote(a) end
            local command = b24.quote(b24.bin) .. " emulate --listen 127.0.0.1:0 " .. table.concat(args, " ")
            local out, code = b24.exec(command)
            assert.equal(2, code, out)
            assert.matches(case[2], out, 1, true)
         else
            local ok, err = pcall(require("b24.emulator").main, case[1], { post = function() return true end })
            assert.is_false(ok)
            assert.matches(case[2], err, 1, true)
         end
      end
   end)
end)

describe("emulator --faults drop", function()
   -- reads log lines until `count` of them contain one of needles; returns the lines that do
   local function lines_with(srv, needles, count)
      local found = {}
      local i = 1
      while #found < count do
         local line = srv.lines[i]
         if not line then
            line = assert(srv.stream:read("l"), "the server's log ended")
            srv.lines[#srv.lines + 1] = line
         end
         for _, needle in ipairs(needles) do
            if line:find(needle, 1, true) then found[#found + 1] = line; break end
         end
         i = i + 1
      end
      return found
   end

   -- adds n leads to a fresh emulator with drop=0.3 and seed 7: the ids of the leads whose
   -- ONCRMLEADADD was delivered and of those logged as lost
   local function run(dir, name, n)
      local rec = recorder(dir, name)
      local srv = b24.emulate{ args = { "--log-level", "debug", "--code", emu.CODE, "--token", TOKEN,
                                        "--events-to", rec.base .. "/hook", "--faults", "drop=0.3",
                                        "--random-seed", "7" } }
      local ids = {}
      for i = 1, n do
         local status, lead = call(srv, "crm.lead.add", { fields = { TITLE = "d" .. i } })
         assert.equal(200, status)
         ids[i] = emu.str(lead.result)
      end
      -- every event is either lost (logged at debug, with its name) or posted by the host's
      -- queue, which logs each post it makes, delivered or not
      local lines = lines_with(srv, { "lost by the drop fault", "msg=posted", "msg=\"post " }, n)
      local dropped = 0
      for _, line in ipairs(lines) do
         if line:find("lost by the drop fault", 1, true) then
            dropped = dropped + 1
            assert.matches("level=debug", line, 1, true)
            assert.matches("event=ONCRMLEADADD", line, 1, true)
         else
            assert.matches("msg=posted", line, 1, true) -- not "post failed" nor "post refused"
         end
      end
      local delivered, made = {}, {}
      for _, id in ipairs(ids) do made[id] = true end
      if dropped < n then
         -- each post logged as made was answered by the receiver, after it had written the body
         for _, d in ipairs(rec.all()) do
            assert.is_true(made[d.id], "a delivery of lead " .. tostring(d.id))
            delivered[#delivered + 1] = d.id
         end
      end
      srv:stop()
      rec:stop()
      return delivered, dropped
   end

   it("loses some events after logging them as sent, the same ones under the same --random-seed", function()
      local dir = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local n = 20
      local delivered, dropped = run(dir, "first", n)
      assert.is_true(dropped > 0, "none dropped")
      assert.is_true(dropped < n, "all dropped")
      assert.equal(n - dropped, #delivered)
      -- the leads are 1..n; the delivered ones arrive in order, each once
      for i = 2, #delivered do assert.is_true(tonumber(delivered[i]) > tonumber(delivered[i - 1])) end
      local again, dropped_again = run(dir, "second", n)
      assert.equal(dropped, dropped_again)
      assert.same(delivered, again)
   end)
end)
