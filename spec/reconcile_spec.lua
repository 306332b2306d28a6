-- bitrix24.reconcile (issue 17) against `b24 emulate` over real HTTP, the portal in a time zone
-- other than UTC (ours): dates across zones, which rows become synthesized deliveries (a row
-- modified at or after the last delivery handled for its object, the same second included, or
-- with none handled; ADD only for an object created after the checkpoint with nothing handled),
-- their bodies as the portal posts them with event.reconciled, the checkpoint (the portal's
-- clock) advanced only after the kind committed, a failed pass resumed from its checkpoint, the
-- cost of a pass with no changes (one batch for every kind), and the memory state's bounds.
local bitrix24 = require "bitrix24"
local reconcile = require "bitrix24.reconcile"
local core = require "bitrix24.core"
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"

local TOKEN = "spec0reconcile0token0000000001"
local FORM = "application/x-www-form-urlencoded"
local DOMAIN = "127.0.0.1"

describe("bitrix24.reconcile dates", function()
   local parse, format = reconcile.parse_date, reconcile.format_date

   it("reads one instant alike in every zone it is printed in", function()
      -- 2026-12-07T12:04:05Z: days_from_civil(2026, 12, 7) = 20794
      local t = 20794 * 86400 + 12 * 3600 + 4 * 60 + 5
      assert.equal(t, parse("2026-12-07T12:04:05Z"))
      assert.equal(t, parse("2026-12-07T12:04:05+00:00"))
      assert.equal(t, parse("2026-12-07T15:04:05+03:00"))
      assert.equal(t, parse("2026-12-07T07:04:05-05:00"))
      assert.equal(t, parse("2026-12-08T01:34:05+13:30"))
      assert.equal(t, parse("2026-12-07T02:04:05-1000"))
      assert.equal(t, parse("2026-12-07T12:04:05.750+00:00")) -- a fraction is dropped, not rounded
      -- the day before in the portal's zone, the same instant
      assert.equal(parse("2026-12-06T23:30:00-05:00"), parse("2026-12-07T04:30:00Z"))
   end)

   it("reads a date without an offset in the zone given, and dd.mm.yyyy as the portal prints it", function()
      local utc = parse("2026-03-01T10:00:00Z")
      assert.equal(utc, parse("2026-03-01T13:00:00", 3 * 3600))
      assert.equal(utc, parse("2026-03-01 05:00:00", -5 * 3600))
      assert.equal(utc, parse("01.03.2026 10:00:00"))
      assert.equal(parse("2024-02-29T00:00:00Z") + 86400, parse("2024-03-01T00:00:00Z")) -- leap day
      assert.equal(-86400, parse("1969-12-31T00:00:00Z"))
      assert.equal(0, parse("1970-01-01T00:00:00Z"))
   end)

   it("refuses what is no date", function()
      assert.is_nil(parse(nil))
      assert.is_nil(parse(""))
      assert.is_nil(parse("yesterday"))
      assert.is_nil(parse("2026-13-01T00:00:00Z"))
      assert.is_nil(parse("2026-12-07T12:04:05+3"))
   end)

   it("prints unix time in a zone, and reads back what it printed", function()
      local t = parse("2026-12-07T12:04:05Z")
      assert.equal("2026-12-07T07:04:05-05:00", format(t, -5 * 3600))
      assert.equal("2026-12-07T17:34:05+05:30", format(t, 5 * 3600 + 1800))
      assert.equal("2026-12-07T12:04:05+00:00", format(t))
      for _, offset in ipairs({ -12 * 3600, -9000, 0, 3600, 50400 }) do
         assert.equal(t, parse(format(t + 0.9, offset)))
      end
   end)
end)

describe("bitrix24.reconcile memory state", function()
   it("keeps the latest mark per object for ttl seconds and at most max objects", function()
      local clock = 1000
      local st = reconcile.memory_state{ ttl = 60, max = 3, now = function() return clock end }
      st:mark("a", 10)
      st:mark("a", 5) -- an older delivery handled later does not move the mark back
      st:mark("b", 20)
      assert.same({ a = 10, b = 20 }, st:marked({ "a", "b", "c" }))
      clock = 1061
      assert.same({}, st:marked({ "a", "b" })) -- past the TTL
      st:mark("a", 30)
      assert.same({ a = 30 }, st:marked({ "a", "b" }))
      st:mark("c", 1)
      st:mark("d", 2)
      st:mark("e", 3) -- over max: the oldest entries go first
      local got = st:marked({ "a", "b", "c", "d", "e" })
      assert.same({ c = 1, d = 2, e = 3 }, got)
      assert.is_true(st:put("x", "1"))
      assert.equal("1", st:get("x"))
   end)
end)

describe("bitrix24.reconcile against b24 emulate", function()
   local srv, client
   setup(function()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--timezone", "-05:00", "--enterprise" } }
      client = bitrix24.client{ url = srv.base .. emu.path(""), limit = false }
   end)
   teardown(function() if srv then srv:stop() end end)

   -- A router reconciling kinds into a memory state (or opts.state) whose handlers record every
   -- event; fail(event) → true makes a handler raise.
   local function world(kinds, opts)
      opts = opts or {}
      local w = { seen = {}, fail = opts.fail }
      kinds.lookback = opts.lookback or 3600
      kinds.overlap = opts.overlap
      kinds.state = opts.state
      kinds.client = opts.client
      w.router = bitrix24.router{ token = TOKEN, client = client, reconcile = kinds, log = function() end }
      w.router:on("*", function(event)
         if w.fail and w.fail(event) then error("refused by the spec") end
         w.seen[#w.seen + 1] = event
      end)
      -- a real delivery of name for id, sent at ts (the portal's unix seconds)
      function w.deliver(name, id, ts, extra)
         local fields = { event = name, data = { FIELDS = { ID = id } }, ts = string.format("%d", ts),
                          auth = { domain = DOMAIN, member_id = "m0", application_token = TOKEN } }
         for k, v in pairs(extra or {}) do fields.data.FIELDS[k] = v end
         local status = w.router:handle{ method = "POST", headers = { ["content-type"] = FORM },
                                         body = core.form_encode(fields) }
         assert.equal(200, status)
      end
      -- the events handled since the last call, as "NAME:id" sorted, reconciled ones only (and
      -- only those whose name starts with prefix)
      function w.take(prefix)
         local out = {}
         for _, e in ipairs(w.seen) do
            if e.reconciled and (not prefix or e.name:sub(1, #prefix) == prefix) then
               out[#out + 1] = e.name .. ":" .. tostring(e.id)
            end
         end
         w.seen = {}
         table.sort(out)
         return out
      end
      return w
   end

   local function add(method, fields)
      local id = assert(client:call(method, { fields = fields }))
      return string.format("%d", id)
   end

   local function modified(id)
      local lead = assert(client:call("crm.lead.get", { id = id }))
      assert.matches("%-05:00$", lead.DATE_MODIFY) -- printed in the portal's zone, not ours
      return reconcile.parse_date(lead.DATE_MODIFY)
   end

   it("commits a row modified at or after its last handled delivery, or with none, and no other", function()
      local w = world({ "crm.lead" })
      local a = add("crm.lead.add", { TITLE = "A" })
      local bb = add("crm.lead.add", { TITLE = "B" })
      local c = add("crm.lead.add", { TITLE = "C" })
      local d = add("crm.lead.add", { TITLE = "D" })
      local first = assert(w.router:reconcile_once())
      assert.same({ "ONCRMLEADADD:" .. a, "ONCRMLEADADD:" .. bb, "ONCRMLEADADD:" .. c, "ONCRMLEADADD:" .. d },
                  w.take())
      assert.equal(4, first.counts["crm.lead/add"])
      for _, id in ipairs({ a, bb, c }) do
         assert(client:call("crm.lead.update", { id = id, fields = { TITLE = "x" } }))
      end
      w.deliver("ONCRMLEADUPDATE", a, modified(a) + 2)  -- handled after the change: nothing to do
      -- ts one second past DATE_MODIFY: the web server's clock may run a second ahead of the
      -- database's (skew 1), so a later change may hide in it, as in the same second
      w.deliver("ONCRMLEADUPDATE", bb, modified(bb) + 1)
      w.deliver("ONCRMLEADUPDATE", d, modified(d) + 5)  -- handled, and no change since
      -- c: its update's delivery was lost; e: added, its ADD lost; f: added and its ADD handled
      local e = add("crm.lead.add", { TITLE = "E" })
      local f = add("crm.lead.add", { TITLE = "F" })
      w.deliver("ONCRMLEADADD", f, modified(f) + 2)
      w.seen = {}
      local second = assert(w.router:reconcile_once())
      assert.same({ "ONCRMLEADADD:" .. e, "ONCRMLEADUPDATE:" .. bb, "ONCRMLEADUPDATE:" .. c }, w.take())
      assert.equal(1, second.counts["crm.lead/add"])
      assert.equal(2, second.counts["crm.lead/update"])
      assert.is_nil(next(second.failed))
   end)

   it("synthesizes the bodies the portal posts, with the router's token, and event.reconciled", function()
      local w = world({ "crm.deal", "tasks.task", { "crm.item", entityTypeId = 128 } })
      local deal = add("crm.deal.add", { TITLE = "D" })
      local task = assert(client:call("tasks.task.add", { fields = { TITLE = "T", RESPONSIBLE_ID = 1 } }))
      task = tostring(task.task.id)
      local item = assert(client:call("crm.item.add", { entityTypeId = 128, fields = { title = "I" } }))
      item = string.format("%d", item.item.id)
      assert(w.router:reconcile_once())
      local by = {}
      for _, ev in ipairs(w.seen) do by[ev.name] = ev end
      local d = assert(by.ONCRMDEALADD)
      assert.is_true(d.reconciled)
      assert.same({ FIELDS = { ID = deal } }, d.data)
      assert.equal(DOMAIN, d.domain)
      assert.equal(TOKEN, d.auth.application_token)
      assert.matches("^%d+$", d.ts)
      local t = assert(by.ONTASKADD)
      assert.equal(task, t.id)
      assert.same({ FIELDS_BEFORE = "undefined", FIELDS_AFTER = { ID = task }, IS_ACCESSIBLE_BEFORE = "N",
                    IS_ACCESSIBLE_AFTER = "undefined" }, t.data)
      local i = assert(by.ONCRMDYNAMICITEMADD)
      assert.same({ FIELDS = { ID = item, ENTITY_TYPE_ID = "128" } }, i.data)
      assert.equal("128", i.entity_type_id)
      -- the same router accepts the body as a delivery: it is what the portal would have posted
      local body = w.router.reconciler:body(w.router.reconciler.kinds[1], "UPDATE", deal, 1796600000)
      assert.matches("reconciled=1$", body)
      local verdict = w.router:accept{ method = "POST", headers = { ["content-type"] = FORM }, body = body }
      assert.equal(200, verdict.status)
      assert.equal("ONCRMDEALUPDATE", verdict.event.name)
      assert.is_true(verdict.event.reconciled)
      assert.equal("127.0.0.1|ONCRMDEALUPDATE|" .. deal, verdict.key)
      -- a task update handled and changed again since: ONTASKUPDATE's shape
      assert(client:call("tasks.task.update", { taskId = task, fields = { TITLE = "T2" } }))
      w.seen = {}
      assert(w.router:reconcile_once())
      local tasks = {}
      for _, ev in ipairs(w.seen) do if ev.name:match("^ONTASK") then tasks[#tasks + 1] = ev end end
      assert.equal(1, #tasks)
      assert.equal("ONTASKUPDATE", tasks[1].name)
      assert.same({ FIELDS_BEFORE = { ID = task }, FIELDS_AFTER = { ID = task },
                    IS_ACCESSIBLE_BEFORE = "undefined", IS_ACCESSIBLE_AFTER = "undefined" }, tasks[1].data)
   end)

   it("takes the checkpoint from the portal's clock, and costs one batch when nothing changed", function()
      -- a portal of its own: rows of the other tests inside the overlap would be changes here
      local own = b24.emulate{ args = { "--code", emu.CODE, "--timezone", "+09:30", "--seed-leads", "7",
                                        "--seed-deals", "3", "--seed-tasks", "2", "--time-scale", "1000" } }
      local c = bitrix24.client{ url = own.base .. emu.path(""), limit = false }
      local w = world({ "crm.lead", "crm.deal", "crm.contact", "crm.company", "tasks.task",
                        { "crm.item", entityTypeId = 128 } }, { client = c })
      local function now()
         local env = assert(c:request("server.time", {}))
         assert.matches("%+09:30$", env.result)
         return env.time.start
      end
      -- waits (a poll of the portal's clock, 10 s at most) for the portal's second after t: a
      -- row changed in the second a pass starts is listed again by the next one
      local function after(t)
         local deadline = os.time() + 10
         while math.floor(now()) <= math.floor(t) do
            assert(os.time() < deadline, "the portal's clock stands")
            core.sleep(0.05) -- a poll's pace, not a wait for anything
         end
      end
      local before = now()
      local first = assert(w.router:reconcile_once())
      local after_first = now()
      assert.equal(2, first.requests) -- server.time (no checkpoint yet), then one batch for six kinds
      assert.equal(7, first.counts["crm.lead/add"])
      assert.equal(2, first.counts["tasks.task/add"])
      local st = w.router.reconciler.state
      for _, entity in ipairs({ "crm.lead", "crm.deal", "crm.contact", "crm.company", "tasks.task", "crm.item.128" }) do
         local cp = first.entities[entity].checkpoint
         assert.is_true(cp >= before and cp <= after_first, entity)
         assert.equal(string.format("%.6f", cp), st:get("bitrix24.reconcile|" .. DOMAIN .. "|checkpoint|" .. entity))
      end
      after(after_first)
      assert(w.router:reconcile_once()) -- rows of the first pass's second, once more
      after(now())
      w.seen = {}
      local quiet = assert(w.router:reconcile_once())
      own:stop()
      assert.equal(1, quiet.requests)
      assert.same({}, w.take())
      assert.is_nil(next(quiet.counts))
      assert.equal(7, quiet.entities["crm.lead"].listed) -- inside the overlap, listed, not committed
   end)

   it("pages a kind with more changed rows than a page through chained batches", function()
      local w = world({ "crm.contact" }, { lookback = 600 })
      local calls = {}
      for i = 1, 130 do calls[i] = { "crm.contact.add", { fields = { NAME = "C" .. i } } } end
      local _, errors = client:call_many(calls)
      assert.is_nil(errors)
      local got = assert(w.router:reconcile_once())
      assert.equal(130, got.counts["crm.contact/add"])
      local ids = {}
      for _, e in ipairs(w.seen) do ids[e.id] = true end
      local n = 0
      for _ in pairs(ids) do n = n + 1 end
      assert.equal(130, n)
      -- server.time, the first page of every kind, then the rest in the export's keyset batches
      assert.is_true(got.requests <= 5, tostring(got.requests))
   end)

   it("advances no checkpoint of a kind whose commit failed, and resumes from it", function()
      local failing = true
      local st = reconcile.memory_state()
      local w = world({ "crm.company", "crm.deal" }, { state = st,
         fail = function(event) return failing and event.name == "ONCRMCOMPANYUPDATE" end })
      assert(w.router:reconcile_once())
      local company_cp = st:get("bitrix24.reconcile|127.0.0.1|checkpoint|crm.company")
      local deal_cp = st:get("bitrix24.reconcile|127.0.0.1|checkpoint|crm.deal")
      local id = add("crm.company.add", { TITLE = "Co" })
      w.deliver("ONCRMCOMPANYADD", id, 1) -- an old delivery: its mark is below the change
      assert(client:call("crm.company.update", { id = id, fields = { TITLE = "Co2" } }))
      local got = assert(w.router:reconcile_once())
      assert.is_not_nil(got.failed["crm.company"])
      assert.matches("refused by the spec", tostring(got.failed["crm.company"]))
      assert.equal(company_cp, st:get("bitrix24.reconcile|127.0.0.1|checkpoint|crm.company"))
      assert.are_not.equal(deal_cp, st:get("bitrix24.reconcile|127.0.0.1|checkpoint|crm.deal"))
      -- the portal unreachable: a pass fails whole and moves nothing
      local dead = bitrix24.client{ url = "http://127.0.0.1:" .. b24.free_port() .. emu.path(""), limit = false,
                                    connect_retries = 1, retries = 1 }
      local other = world({ "crm.company", "crm.deal" }, { state = st, client = dead })
      local none, err = other.router:reconcile_once()
      assert.is_nil(none)
      assert.is_not_nil(err)
      assert.equal(company_cp, st:get("bitrix24.reconcile|127.0.0.1|checkpoint|crm.company"))
      -- the handler works again: the change is handled from the old checkpoint on
      failing = false
      w.seen = {}
      got = assert(w.router:reconcile_once())
      assert.same({ "ONCRMCOMPANYUPDATE:" .. id }, w.take("ONCRMCOMPANY"))
      assert.is_nil(next(got.failed))
      assert.are_not.equal(company_cp, st:get("bitrix24.reconcile|127.0.0.1|checkpoint|crm.company"))
   end)

   it("sweeps IDs when asked: a deletion whose delivery was lost becomes …DELETE, a handled one does not", function()
      local w = world({ "crm.deal", sweep = 1e-6 }) -- a sweep with every pass
      add("crm.deal.add", { TITLE = "keep" }) -- stays: never in the deletes below
      local lost = add("crm.deal.add", { TITLE = "lost" })
      local told = add("crm.deal.add", { TITLE = "told" })
      assert(w.router:reconcile_once()) -- the first sweep: what the portal has
      local between = add("crm.deal.add", { TITLE = "between" })
      assert(w.router:reconcile_once()) -- listed by a pass, not yet by a sweep
      assert(client:call("crm.deal.delete", { id = lost }))
      assert(client:call("crm.deal.delete", { id = told }))
      assert(client:call("crm.deal.delete", { id = between }))
      w.deliver("ONCRMDEALDELETE", told, os.time())
      w.seen = {}
      local got = assert(w.router:reconcile_once())
      local want = { "ONCRMDEALDELETE:" .. between, "ONCRMDEALDELETE:" .. lost }
      table.sort(want)
      assert.same(want, w.take("ONCRMDEALDELETE"))
      assert.equal(3, got.counts["crm.deal/delete"]) -- committed; the one already handled met the dedup
      assert.is_nil(next(got.failed))
      local ids = w.router.reconciler.state:get("bitrix24.reconcile|" .. DOMAIN .. "|ids|crm.deal")
      assert.matches("^[%w,]+$", ids) -- the IDs the sweep found, as base-36 differences
      w.seen = {}
      got = assert(w.router:reconcile_once()) -- nothing deleted since
      assert.same({}, w.take("ONCRMDEALDELETE"))
      assert.is_nil(got.counts["crm.deal/delete"])
   end)

   it("runs one pass at a time in a Lua state", function()
      local w = world({ "crm.lead" })
      local inner
      w.router:on("ONCRMLEADADD", function() inner = { w.router:reconcile_once() } end)
      add("crm.lead.add", { TITLE = "busy" })
      assert(w.router:reconcile_once())
      assert.is_nil(inner[1])
      assert.equal("busy", inner[2].code)
   end)

   it("runs no pass where another host of a fleet holds the portal's claim", function()
      local st = reconcile.memory_state()
      local asked = {}
      function st.claim(_, name, seconds)
         asked[#asked + 1] = { name, seconds }
         return false
      end
      local w = world({ "crm.lead" }, { state = st })
      add("crm.lead.add", { TITLE = "elsewhere" })
      local requests = client.stats.requests
      local ok, err = w.router:reconcile_once()
      assert.is_nil(ok)
      assert.equal("elsewhere", err.code)
      assert.equal(requests, client.stats.requests) -- not one request: the holder runs it
      assert.same({}, w.take())
      assert.equal(1, #asked)
      assert.truthy(asked[1][1]:find("|pass", 1, true))
      assert.is_true(asked[1][2] > 300) -- longer than the interval: the holder keeps it
   end)

   it("refuses a bad reconcile option when the router is made", function()
      local function make(r) return function() bitrix24.router{ token = TOKEN, client = client, reconcile = r } end end
      assert.has_error(make({}), "bad option 'reconcile' (no entity to reconcile)")
      assert.has_error(make({ "crm.quote" }))
      assert.has_error(make({ "crm.lead", "crm.lead" }), "bad option 'reconcile' (crm.lead given twice)")
      assert.has_error(make({ { "crm.item" } }), "bad option 'reconcile' (crm.item needs entityTypeId, a whole number)")
      assert.has_error(make({ "crm.lead", every = 0 }))
      assert.has_error(make({ "crm.lead", sweep = "yes" }))
      assert.has_error(function() bitrix24.router{ token = TOKEN, reconcile = { "crm.lead" } } end)
      assert.has_error(function() bitrix24.router{ token = TOKEN }:reconcile_once() end)
   end)
end)
