-- The offline event queue pulled into the inbox (issue 16), over real HTTP: `b24 emulate --app`
-- queues the application's events while its `b24 serve` receiver (spec/helpers/
-- app_offline_main.lua, bitrix24.app with offline = {…}) is down, and the receiver handles every
-- one when it is back; a receiver that dies during a pull, before or after the inbox commit,
-- loses nothing with clear = 0.
local bitrix24 = require "bitrix24"
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local cjson = require "cjson"

local CLIENT_ID = "local.spec0offline000001"
local SECRET = "spec0offline0secret0value000001"

describe("bitrix24.app offline queue", function()
   local portal, dir, store, admin, env, member_id, port

   local function run(mode, ...)
      local parts = { b24.quote(b24.bin), "run", b24.quote(b24.root .. "/spec/helpers/app_run.lua"), b24.quote(store),
                      b24.quote(mode) }
      for _, a in ipairs({ ... }) do parts[#parts + 1] = b24.quote(a) end
      local out, code = b24.exec(env .. " " .. table.concat(parts, " "))
      assert.equal(0, code, out)
      return assert(cjson.decode(out:match("({[^\n]*})%s*$")), out)
   end

   -- the receiver on its fixed port and inbox; extra: more environment
   local function receiver(extra)
      return b24.start{ script_path = b24.root .. "/spec/helpers/app_offline_main.lua",
                        args = { "--listen", "127.0.0.1:" .. port, "--workers", "4", "--inbox", store },
                        env = env .. " APP_OFFLINE_INTERVAL=0.2 " .. (extra or "") .. " " }
   end

   -- the ids of the leads srv's log shows handled from the queue (all of them: srv has ended)
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

   -- waits until srv's log (with the ids in `before`, handled by an earlier receiver) shows n
   -- distinct leads handled from the queue: their ids
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

   local function add_leads(n, title)
      local calls = {}
      for i = 1, n do calls[i] = { "crm.lead.add", { fields = { TITLE = title .. " " .. i } } } end
      local results, errors = admin:call_many(calls)
      assert.is_nil(errors)
      return results
   end

   setup(function()
      dir = b24.tmpdir()
      store = dir .. "/inbox.sqlite"
      port = b24.free_port()
      portal = b24.emulate{ args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET, "--time-scale", "1000",
                                     "--token-ttl", "360000000" } }
      env = "APP_CLIENT_ID=" .. CLIENT_ID .. " APP_CLIENT_SECRET=" .. SECRET .. " APP_OAUTH=" .. portal.base
      admin = bitrix24.client(portal.base .. emu.path(""))
      local srv = receiver()
      assert(admin:call("emulator.app.install", { url = srv.base .. "/" }))
      assert(srv:wait_log("app installed"))
      member_id = run("portal").member_id
      assert.same({ "ONCRMLEADADD" }, run("bind_offline", member_id, "ONCRMLEADADD").bound)
      srv:stop()
   end)
   teardown(function()
      if portal then portal:stop() end
      if dir then os.execute("rm -rf " .. b24.quote(dir)) end
   end)

   it("handles every one of 1,000 leads added while the receiver was down", function()
      local added = add_leads(1000, "Down")
      assert.equal(1000, assert(admin:call("emulator.offline.stats")).rows)
      local srv = receiver()
      local ids, count = handled(srv, 1000)
      srv:stop()
      assert.equal(1000, count)
      for _, id in ipairs(added) do assert.is_true(ids[tostring(id)], "lead " .. tostring(id)) end
      assert.equal(0, assert(admin:call("emulator.offline.stats")).rows)
   end)

   for _, point in ipairs({ "put:30", "clear:2" }) do
      it("loses nothing when the receiver dies during a pull (" .. point .. ", clear = 0)", function()
         local added = add_leads(200, "Crash " .. point)
         local dying = receiver("APP_DIE_AT=" .. point)
         assert(dying:wait_log("dying at"), dying:log())
         dying:stop()
         local before = handled_by(dying) -- what it handled before it died
         local srv = receiver()
         local ids = handled(srv, 200, before)
         -- the rows the dead pull had marked came back through event.offline.list and get{process_id}
         assert(srv:wait_log("rows of an unfinished pull taken again"), srv:log())
         srv:stop()
         for _, id in ipairs(added) do assert.is_true(ids[tostring(id)], "lead " .. tostring(id)) end
         assert.equal(0, assert(admin:call("emulator.offline.stats")).rows)
      end)
   end
end)
