-- The offline event queue pulled into the inbox (issue 16), over real HTTP: `b24 emulate --app`
-- queues the application's events while its `b24 serve` receiver (spec/helpers/
-- app_offline_main.lua, bitrix24.app with offline = {…}) is down, and the receiver handles every
-- one when it is back; a receiver that dies during a pull, before or after the inbox commit,
-- loses nothing with clear = 0, and at most one pull with clear = 1 (a portal without
-- rest_offline_extended); ONOFFLINEEVENT wakes the puller; the app's own writes do not come back.
local bitrix24 = require "bitrix24"
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local cjson = require "cjson"

local CLIENT_ID = "local.spec0offline000001"
local SECRET = "spec0offline0secret0value000001"

-- A portal with the application installed into a receiver's store, its ONCRMLEADADD bound
-- offline; the receiver stopped. extra: more emulator options.
local function world(extra)
   local w = { dir = b24.tmpdir() }
   w.store = w.dir .. "/inbox.sqlite"
   w.port = b24.free_port()
   local args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET, "--time-scale", "1000",
                  "--token-ttl", "360000000" }
   for _, a in ipairs(extra or {}) do args[#args + 1] = a end
   w.portal = b24.emulate{ args = args }
   w.env = "APP_CLIENT_ID=" .. CLIENT_ID .. " APP_CLIENT_SECRET=" .. SECRET .. " APP_OAUTH=" .. w.portal.base
   w.admin = bitrix24.client(w.portal.base .. emu.path(""))

   function w.run(mode, ...) return b24.app_run(w.env, w.store, mode, ...) end

   -- the receiver on its fixed port and inbox; more: environment
   function w.receiver(more)
      return b24.start{ script_path = b24.root .. "/spec/helpers/app_offline_main.lua",
                        args = { "--listen", "127.0.0.1:" .. w.port, "--workers", "4", "--inbox", w.store },
                        env = w.env .. " APP_OFFLINE_INTERVAL=" .. (w.interval or "0.2") .. " " .. (more or "") .. " " }
   end

   function w.add_leads(n, title)
      local calls = {}
      for i = 1, n do calls[i] = { "crm.lead.add", { fields = { TITLE = title .. " " .. i } } } end
      local results, errors = w.admin:call_many(calls)
      assert.is_nil(errors)
      return results
   end

   function w.queued()
      return assert(w.admin:call("emulator.offline.stats")).rows
   end

   function w.stop()
      w.portal:stop()
      os.execute("rm -rf " .. b24.quote(w.dir))
   end

   local srv = w.receiver()
   assert(w.admin:call("emulator.app.install", { url = srv.base .. "/" }))
   assert(srv:wait_log("app installed"))
   w.member_id = w.run("portal").member_id
   assert.same({ "ONCRMLEADADD" }, w.run("bind_offline", w.member_id, "ONCRMLEADADD").bound)
   srv:stop()
   return w
end

-- The ids of the leads srv's log shows handled from the queue (srv has ended).
local function handled_by(srv)
   local ids = {}
   for _, line in ipairs(srv.lines) do
      local id, offline = line:match('msg="lead handled" id=(%d+) offline=(%a+)')
      if id then
         assert.equal("yes", offline)
         ids[id] = true
      end
   end
   return ids
end

-- Waits until srv's log (with the ids in `before`, handled by an earlier receiver) shows n
-- distinct leads handled from the queue: their ids.
local function handled(srv, n, before)
   local ids, count = {}, 0
   for id in pairs(before or {}) do ids[id], count = true, count + 1 end
   local i = 1
   while count < n do
      local line = srv.lines[i]
      if not line then
         line = srv.stream:read("l")
         assert(line and not line:match("^b24%-exit="),
            "the receiver ended before " .. n .. " leads:\n" .. srv:log())
         srv.lines[#srv.lines + 1] = line
      end
      local id, offline = line:match('msg="lead handled" id=(%d+) offline=(%a+)')
      if id and not ids[id] then
         assert.equal("yes", offline)
         ids[id] = true
         count = count + 1
      end
      i = i + 1
   end
   return ids, count
end

describe("bitrix24.app offline queue (clear = 0)", function()
   local w
   setup(function() w = world() end)
   teardown(function() if w then w.stop() end end)

   it("handles every one of 1,000 leads added while the receiver was down", function()
      local added = w.add_leads(1000, "Down")
      assert.equal(1000, w.queued())
      local srv = w.receiver()
      local ids, count = handled(srv, 1000)
      local metrics = srv:request{ path = "/metrics" }.body
      srv:stop()
      assert.equal(1000, count)
      assert.truthy(metrics:find(('b24_offline_mode{member_id="%s",mode="confirm"} 1\n'):format(w.member_id), 1, true))
      -- published after each pull's clear: the last pull's 50 may be handled before it is counted
      local rows = tonumber(metrics:match(('b24_offline_rows_total{member_id="%s"} (%%d+)'):format(w.member_id)))
      assert.is_true(rows >= 950 and rows <= 1000, tostring(rows))
      for _, id in ipairs(added) do assert.is_true(ids[tostring(id)], "lead " .. tostring(id)) end
      assert.equal(0, w.queued())
   end)

   for _, point in ipairs({ "put:30", "clear:2" }) do
      it("loses nothing when the receiver dies during a pull (" .. point .. ")", function()
         local added = w.add_leads(200, "Crash " .. point)
         local dying = w.receiver("APP_DIE_AT=" .. point)
         assert(dying:wait_log("dying at"), dying:log())
         dying:stop()
         local before = handled_by(dying) -- what it handled before it died
         local srv = w.receiver()
         local ids = handled(srv, 200, before)
         -- the rows the dead pull had marked came back through event.offline.list and get{process_id}
         assert(srv:wait_log("rows of an unfinished pull taken again"), srv:log())
         srv:stop()
         for _, id in ipairs(added) do assert.is_true(ids[tostring(id)], "lead " .. tostring(id)) end
         assert.equal(0, w.queued())
      end)
   end

   it("does not queue the application's own writes (no echo)", function()
      local before = w.queued()
      local got = w.run("call", w.member_id, "crm.lead.add", '{"fields":{"TITLE":"by the app"}}')
      assert.is_number(got.result)
      assert.equal(before, w.queued())
      w.add_leads(1, "by someone else")
      assert.equal(before + 1, w.queued())
   end)
end)

describe("bitrix24.app offline queue woken by ONOFFLINEEVENT", function()
   local w
   setup(function()
      w = world()
      w.interval = "3600" -- no timer: only the first run and the rings pull
   end)
   teardown(function() if w then w.stop() end end)

   it("pulls as soon as the portal rings", function()
      local srv = w.receiver()
      assert.same({ "ONOFFLINEEVENT" }, w.run("bind", w.member_id, srv.base .. "/", "ONOFFLINEEVENT").bound)
      assert(srv:wait_log('msg="jobs ready"'))
      local added = w.add_leads(3, "Ring")
      local ids = handled(srv, 3)
      srv:stop()
      for _, id in ipairs(added) do assert.is_true(ids[tostring(id)]) end
      assert.equal(0, w.queued())
   end)
end)

describe("bitrix24.app offline queue without rest_offline_extended (clear = 1)", function()
   local w
   setup(function() w = world({ "--offline-extended", "off" }) end)
   teardown(function() if w then w.stop() end end)

   it("warns, and loses at most the one pull a dead receiver had taken", function()
      local added = w.add_leads(200, "Unsafe")
      local dying = w.receiver("APP_DIE_AT=put:30")
      assert(dying:wait_log("dying at"), dying:log())
      dying:stop()
      assert.matches("no rest_offline_extended", dying:log(), 1, true)
      local before = handled_by(dying)
      local srv = w.receiver()
      -- a pull is 50 rows; the dead one had committed 29 of them
      local ids = handled(srv, 200 - 50 + 29, before)
      -- the mode is never silent: /metrics and /healthz name it for the portal
      local series = ('b24_offline_mode{member_id="%s",mode="delete"}'):format(w.member_id)
      assert.truthy(srv:request{ path = "/metrics" }.body:find(series .. " 1\n", 1, true))
      assert.equal(1, cjson.decode(srv:request{ path = "/healthz" }.body).script[series])
      srv:stop()
      local missing = 0
      for _, id in ipairs(added) do
         if not ids[tostring(id)] then missing = missing + 1 end
      end
      assert.equal(50 - 29, missing) -- the rest of that one pull, nothing beyond it
      assert.equal(0, w.queued())
   end)
end)
