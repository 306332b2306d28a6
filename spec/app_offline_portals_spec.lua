-- Two portals pulled at once (issue 16 item 4), over real HTTP with real processes: one
-- `b24 serve` application receiver (spec/helpers/app_offline_main.lua, bitrix24.app with
-- offline = { parallel = 2 }, `--jobs 2`) installed on two emulated portals that share one OAuth
-- server, as cloud portals share oauth.bitrix.info (portal A is `b24 emulate --app`, portal B
-- `b24 emulate --app --oauth-server A`); both bind ONCRMLEADADD offline. The receiver is
-- stopped, distinct leads are added on both portals, the receiver starts again: every lead of
-- both portals is handled exactly once, under its own portal, and the two portals were pulled
-- by different jobs (bitrix24.offline/1 and /2: each portal always in its shard, the shards in
-- distinct job threads, so both pulled at once): while A's answer to event.offline.get is held,
-- B is pulled to the end.
local bitrix24 = require "bitrix24"
local offline = require "bitrix24.offline"
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"

local CLIENT_ID = "local.spec0portals00001"
local SECRET = "spec0portals0secret0value000001"
local LEADS = { a = 300, b = 200 } -- distinct leads added on each portal while the receiver is down
local PARALLEL = 2

-- Two member ids that the puller deals to different jobs (bitrix24.offline shard_of).
local function member_ids()
   local by_shard = {}
   for i = 1, 100 do
      local id = ("spec0portal%03d"):format(i)
      local k = offline.shard_of(id, PARALLEL)
      by_shard[k] = by_shard[k] or id
      if by_shard[1] and by_shard[2] then return by_shard[1], by_shard[2] end
   end
   error("no two member ids in different shards")
end

-- The world: portal A (also the OAuth server), portal B, the receiver's inbox; the application
-- installed on both and ONCRMLEADADD bound offline; the receiver stopped.
local function world()
   local w = { dir = b24.tmpdir(), portals = {} }
   w.store = w.dir .. "/inbox.sqlite"
   w.port = b24.free_port()
   local member_a, member_b = member_ids()
   local common = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET, "--time-scale", "1000" }
   local function portal(member, extra)
      local args = { "--member-id", member }
      for _, a in ipairs(common) do args[#args + 1] = a end
      for _, a in ipairs(extra) do args[#args + 1] = a end
      local srv = b24.emulate{ args = args }
      return { srv = srv, member_id = member, admin = bitrix24.client(srv.base .. emu.path("")) }
   end
   w.portals.a = portal(member_a, { "--token-ttl", "360000000" })
   w.portals.b = portal(member_b, { "--oauth-server", w.portals.a.srv.base })
   -- the application trusts one OAuth server: A's
   w.env = "APP_CLIENT_ID=" .. CLIENT_ID .. " APP_CLIENT_SECRET=" .. SECRET .. " APP_OAUTH=" .. w.portals.a.srv.base

   function w.receiver()
      return b24.start{ script_path = b24.root .. "/spec/helpers/app_offline_main.lua",
                        args = { "--listen", "127.0.0.1:" .. w.port, "--workers", "4", "--jobs", tostring(PARALLEL),
                                 "--inbox", w.store },
                        env = w.env .. " APP_OFFLINE_INTERVAL=0.2 APP_OFFLINE_PARALLEL=" .. PARALLEL .. " " }
   end

   function w.run(mode, ...) return b24.app_run(w.env, w.store, mode, ...) end

   function w.stop()
      w.portals.b.srv:stop()
      w.portals.a.srv:stop()
      os.execute("rm -rf " .. b24.quote(w.dir))
   end

   local srv = w.receiver()
   b24.app_install_offline(srv, w.portals, w.run)
   srv:stop()
   return w
end

-- Hands each line of srv's log, from the first on, to step(line) until it returns true (reading
-- more as they come); raises with the log when the receiver ends first.
local function follow(srv, step)
   local i = 1
   while true do
      local line = srv.lines[i]
      if not line then
         line = srv.stream:read("l")
         assert(line and not line:match("^b24%-exit="), "the receiver ended first:\n" .. srv:log())
         srv.lines[#srv.lines + 1] = line
      end
      if step(line) then return end
      i = i + 1
   end
end

-- A step for follow: true once the "bitrix24.offline: pulled" lines of member sum to rows (each
-- logged after its pull's event.offline.clear: the portal's queue is empty then).
local function pulled(member, rows)
   local sum = 0
   return function(line)
      if line:find('msg="bitrix24.offline: pulled"', 1, true) and line:find("member_id=" .. member, 1, true) then
         sum = sum + tonumber(line:match("rows=(%d+)"))
      end
      return sum >= rows
   end
end

describe("bitrix24.app offline queue: two portals, one OAuth server, pulled at once", function()
   local w
   setup(function() w = world() end)
   teardown(function() if w then w.stop() end end)

   it("handles every lead of both portals exactly once, each portal pulled by its own job", function()
      assert.equal(2, w.run("portal").portals)
      local want, total = {}, 0
      for name, p in pairs(w.portals) do
         local calls = {}
         for i = 1, LEADS[name] do calls[i] = { "crm.lead.add", { fields = { TITLE = name .. " " .. i } } } end
         local ids, errors = p.admin:call_many(calls)
         assert.is_nil(errors)
         for _, id in ipairs(ids) do want[p.member_id .. "/" .. emu.str(id)] = true end
         total = total + #ids
         assert.equal(LEADS[name], assert(p.admin:call("emulator.offline.stats")).rows)
      end
      local srv = w.receiver()
      finally(function() srv:stop() end) -- a failed assert leaves no receiver behind
      -- every lead of both portals, by portal: read the log until all are handled, and each
      -- portal's pulls are all cleared
      local seen, handled = {}, 0
      follow(srv, function(line)
         local id, member = line:match('msg="lead handled" id=(%d+) offline=yes portal=([%w_-]+)')
         if id and not seen[member .. "/" .. id] then
            seen[member .. "/" .. id] = true
            handled = handled + 1
         end
         return handled == total
      end)
      for name, p in pairs(w.portals) do
         follow(srv, pulled(p.member_id, LEADS[name]))
         assert.equal(0, assert(p.admin:call("emulator.offline.stats")).rows)
      end
      srv:stop() -- its log read to the end
      -- exactly once per object, under its own portal
      local runs, count = {}, 0
      for _, line in ipairs(srv.lines) do
         local id, flag, member = line:match('msg="lead handled" id=(%d+) offline=(%a+) portal=([%w_-]+)')
         if id then
            assert.equal("yes", flag)
            local key = member .. "/" .. id
            assert.is_true(want[key], "a lead no portal queued: " .. key)
            if not runs[key] then count = count + 1 end
            runs[key] = (runs[key] or 0) + 1
         end
      end
      assert.equal(total, count)
      for key, n in pairs(runs) do assert.equal(1, n, key) end
      -- the pulls: rows per portal, and the job each portal was pulled by
      local rows, jobs = {}, {}
      for _, line in ipairs(srv.lines) do
         if line:find('msg="bitrix24.offline: pulled"', 1, true) then
            local member = line:match("member_id=([%w_-]+)")
            local job = line:match("job=(%S+)")
            rows[member] = (rows[member] or 0) + tonumber(line:match("rows=(%d+)"))
            jobs[member] = jobs[member] or {}
            jobs[member][job or "?"] = true
         end
      end
      local a, b = w.portals.a.member_id, w.portals.b.member_id
      assert.equal(LEADS.a, rows[a])
      assert.equal(LEADS.b, rows[b])
      local ja, jb = emu.keys(jobs[a]), emu.keys(jobs[b])
      assert.same({ "bitrix24.offline/" .. offline.shard_of(a, PARALLEL) }, ja) -- always the same job
      assert.same({ "bitrix24.offline/" .. offline.shard_of(b, PARALLEL) }, jb)
      assert.are_not.same(ja, jb)
      print(("# two portals: %s %d rows by %s, %s %d rows by %s"):format(a, rows[a], ja[1], b, rows[b], jb[1]))
   end)

   it("pulls B to the end while A's pull is held: one portal's slow answer does not hold the other", function()
      local pa, pb = w.portals.a, w.portals.b
      local added = {}
      for name, p in pairs(w.portals) do
         local calls = {}
         for i = 1, 100 do calls[i] = { "crm.lead.add", { fields = { TITLE = "held " .. name .. " " .. i } } } end
         local ids, errors = p.admin:call_many(calls)
         assert.is_nil(errors)
         added[name] = ids
      end
      -- every get of A runs (its rows marked) and its answer does not come while this test runs:
      -- the receiver's client gives up on it only after its timeout (65 s), and logs "pull failed"
      assert(pa.admin:call("emulator.holds.set", { latency = "event.offline.get=600000" }))
      local srv, back = w.receiver(), nil
      finally(function()
         srv:stop("KILL")
         if back then back:stop() end
      end)
      assert(pa.srv:wait_log("method=event.offline.get ran=yes"), pa.srv:log())
      -- meanwhile every lead of B is handled, and B's pulls are cleared
      local missing = {}
      for _, id in ipairs(added.b) do missing[emu.str(id)] = true end
      local left = #added.b
      follow(srv, function(line)
         local id = line:match('msg="lead handled" id=(%d+) offline=yes portal=' .. pb.member_id)
         if id and missing[id] then
            missing[id] = nil
            left = left - 1
         end
         return left == 0
      end)
      follow(srv, pulled(pb.member_id, #added.b))
      assert.equal(0, assert(pb.admin:call("emulator.offline.stats")).rows)
      -- and A's first get is still waiting: nothing of A pulled, no pull of A given up (one job
      -- for both portals would have had to give A's up before B's second pull), its rows queued
      for _, line in ipairs(srv.lines) do
         assert.is_nil(line:find("pulled\".*member_id=" .. pa.member_id), line)
         assert.is_nil(line:find("pull failed\".*member_id=" .. pa.member_id), line)
      end
      assert.equal(100, assert(pa.admin:call("emulator.offline.stats")).rows)
      -- the receiver dies with A's pull held; back, it takes A's marked rows again
      assert.equal(137, srv:stop("KILL"))
      assert(pa.admin:call("emulator.holds.set"))
      back = w.receiver()
      assert(back:wait_log("rows of an unfinished pull taken again"), back:log())
      local want, left_a = {}, #added.a
      for _, id in ipairs(added.a) do want[emu.str(id)] = true end
      follow(back, function(line)
         local id = line:match('msg="lead handled" id=(%d+) offline=yes portal=' .. pa.member_id)
         if id and want[id] then
            want[id] = nil
            left_a = left_a - 1
         end
         return left_a == 0
      end)
      follow(back, pulled(pa.member_id, #added.a))
      assert.equal(0, assert(pa.admin:call("emulator.offline.stats")).rows)
      back:stop()
   end)
end)
