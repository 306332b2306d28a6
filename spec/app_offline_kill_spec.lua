-- An EXTERNAL kill -9 of the `b24 serve` receiver during an offline pull (issue 16 item 4), over
-- real HTTP with real processes and a real SQLite inbox: `b24 emulate --app` holds one answer
-- (emulator.holds.set: --method-latency runs the call and holds its answer, --method-stall holds
-- the call and never runs it), logs "emulator answer held" once it has it, and the spec kills the
-- receiver (spec/helpers/app_offline_main.lua) right then; a new receiver on the same inbox must
-- finish the job.
--   clear = 0, before the commit: the held event.offline.get has marked its rows with a process;
--     the receiver never saw them. After the restart every lead is handled.
--   clear = 0, after the commit: the rows are in the inbox, the event.offline.clear that would
--     delete them never ran. After the restart every lead is handled; the rows come again
--     (event.offline.list → get{process_id}) and meet the inbox's deduplication (ONCRMLEADADD
--     is an *ADD: a repeat is a duplicate), so no lead runs twice unless its run was in flight
--     at the kill (the inbox is at-least-once: at most --workers such runs).
--   clear = 1 (no rest_offline_extended): the held get has deleted its rows; the kill loses
--     exactly that pull's `limit` rows and nothing beyond.
-- Platform: yuliai/bitrix-modules rest/lib/api/event.php eventOfflineGet/Clear,
-- rest/lib/eventoffline.php markEvents/clearEvents; the loss window as lua/bitrix24/offline.lua
-- states it.
if rawget(_G, "jit") then return end -- real processes killed and restarted: the Lua 5.4 pass only

local bitrix24 = require "bitrix24"
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"

local CLIENT_ID = "local.spec0offkill000001"
local SECRET = "spec0offkill0secret0value0000001"
local N = 200     -- distinct leads changed while the receiver is stopped
local LIMIT = 50  -- rows a pull
local WORKERS = 4 -- the receiver's handler threads: the runs that can be in flight at a kill
local HOLD = "600000" -- ms an answer is held: far beyond the spec, the kill comes first

-- A portal with the application installed into a receiver's inbox and ONCRMLEADADD bound
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

   -- the receiver on its fixed port and inbox
   function w.receiver()
      return b24.start{ script_path = b24.root .. "/spec/helpers/app_offline_main.lua",
                        args = { "--listen", "127.0.0.1:" .. w.port, "--workers", tostring(WORKERS),
                                 "--inbox", w.store },
                        env = w.env .. " APP_OFFLINE_INTERVAL=0.2 APP_OFFLINE_LIMIT=" .. LIMIT .. " " }
   end

   function w.run(mode, ...) return b24.app_run(w.env, w.store, mode, ...) end

   -- n leads added through the webhook: their ids in the order added
   function w.add_leads(n, title)
      local calls = {}
      for i = 1, n do calls[i] = { "crm.lead.add", { fields = { TITLE = title .. " " .. i } } } end
      local results, errors = w.admin:call_many(calls)
      assert.is_nil(errors)
      local ids = {}
      for i, id in ipairs(results) do ids[i] = emu.str(id) end
      return ids
   end

   function w.queued()
      return assert(w.admin:call("emulator.offline.stats")).rows
   end

   -- the held answers from now on (emulator.holds.set; none without arguments)
   function w.hold(kind, spec)
      assert(w.admin:call("emulator.holds.set", kind and { [kind] = spec } or {}))
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

-- Every "lead handled" line of a receiver's log so far: runs (a list of ids, repeats kept).
local function runs_of(srv)
   local out = {}
   for _, line in ipairs(srv.lines) do
      local id, offline = line:match('msg="lead handled" id=(%d+) offline=(%a+)')
      if id then
         assert.equal("yes", offline)
         out[#out + 1] = id
      end
   end
   return out
end

-- Reads srv's log until the leads in `want` (a set) that `before` (a set) lacks have all been
-- handled, and then until its puller found the queue empty; raises with the log if it ends first.
local function wait_handled(srv, want, before)
   local missing = 0
   for id in pairs(want) do
      if not before[id] then missing = missing + 1 end
   end
   local seen, i = {}, 1
   while missing > 0 do
      local line = srv.lines[i]
      if not line then
         line = srv.stream:read("l")
         assert(line and not line:match("^b24%-exit="), "the receiver ended with leads unhandled:\n" .. srv:log())
         srv.lines[#srv.lines + 1] = line
      end
      local id = line:match('msg="lead handled" id=(%d+)')
      if id and want[id] and not before[id] and not seen[id] then
         seen[id] = true
         missing = missing - 1
      end
      i = i + 1
   end
end

-- Reads srv's log until its "bitrix24.offline: pulled" lines sum to rows (each is logged once its
-- pull is committed and, with clear = 0, cleared); raises with the log if it ends first.
local function wait_pulled(srv, rows)
   local sum, i = 0, 1
   while sum < rows do
      local line = srv.lines[i]
      if not line then
         line = srv.stream:read("l")
         assert(line and not line:match("^b24%-exit="), "the receiver ended before " .. rows .. " rows:\n" .. srv:log())
         srv.lines[#srv.lines + 1] = line
      end
      if line:find('msg="bitrix24.offline: pulled"', 1, true) then sum = sum + tonumber(line:match("rows=(%d+)")) end
      i = i + 1
   end
   assert.equal(rows, sum)
end

-- A set of a list.
local function set_of(list)
   local s = {}
   for _, v in ipairs(list) do s[v] = true end
   return s
end

-- The size of a set.
local function size(s)
   local n = 0
   for _ in pairs(s) do n = n + 1 end
   return n
end

-- The ids in a list of runs that run more than once: their count.
local function repeats(runs)
   local seen, n = {}, 0
   for _, id in ipairs(runs) do
      if seen[id] then n = n + 1 end
      seen[id] = true
   end
   return n
end

-- Kills srv with SIGKILL once the portal has logged the held answer (line `held`).
local function kill_when_held(w, srv, held)
   local line = w.portal:wait_log(held)
   assert(line, "the portal never held the answer:\n" .. w.portal:log())
   assert.equal(137, srv:stop("KILL")) -- 128 + 9: killed, no drain, no close
end

describe("bitrix24.app offline queue: kill -9 during a pull, clear = 0", function()
   local w
   setup(function() w = world() end)
   teardown(function() if w then w.stop() end end)

   it("loses nothing when killed before the commit (the get's rows marked, never received)", function()
      local added = w.add_leads(N, "Before")
      assert.equal(N, w.queued())
      -- the third get runs (its rows are marked with its process) and its answer never leaves
      w.hold("latency", "event.offline.get@3=" .. HOLD)
      local dying, srv = w.receiver(), nil
      finally(function() -- a failed assert leaves no receiver behind
         dying:stop("KILL")
         if srv then srv:stop() end
      end)
      kill_when_held(w, dying, "method=event.offline.get ran=yes")
      local before = runs_of(dying)
      -- the held pull (the leads added 101st to 150th) never reached the dead receiver
      local ran = set_of(before)
      for i = 2 * LIMIT + 1, 3 * LIMIT do assert.is_nil(ran[added[i]], "lead " .. added[i]) end
      -- two pulls cleared; the dead pull's rows are still on the portal (marked), and the rest
      assert.equal(N - 2 * LIMIT, w.queued())
      w.hold()
      srv = w.receiver()
      wait_handled(srv, set_of(added), set_of(before))
      -- the rows the dead pull had marked came back through event.offline.list and get{process_id}
      local again = assert(srv:wait_log("rows of an unfinished pull taken again"), srv:log())
      assert.matches("rows=" .. LIMIT, again, 1, true)
      -- pulled after the restart: the dead pull's rows again, then the last pull
      wait_pulled(srv, N - 2 * LIMIT)
      assert.equal(0, w.queued())
      srv:stop()
      local after = runs_of(srv)
      local all = {}
      for _, id in ipairs(before) do all[#all + 1] = id end
      for _, id in ipairs(after) do all[#all + 1] = id end
      assert.equal(N, size(set_of(all)))  -- every lead handled
      assert.is_true(repeats(all) <= WORKERS, "runs repeated: " .. repeats(all))
      print(("# kill before the commit: %d of %d handled; runs %d before the kill, %d after it, %d repeated")
         :format(size(set_of(all)), N, #before, #after, repeats(all)))
   end)

   it("loses nothing when killed after the commit, and the rows coming again meet the inbox's dedup", function()
      local added = w.add_leads(N, "After")
      assert.equal(N, w.queued())
      -- the second clear is held and never runs: its process's rows stay marked, committed
      w.hold("stall", "event.offline.clear@2=" .. HOLD)
      local dying, srv = w.receiver(), nil
      finally(function() -- a failed assert leaves no receiver behind
         dying:stop("KILL")
         if srv then srv:stop() end
      end)
      kill_when_held(w, dying, "method=event.offline.clear ran=no")
      local before = runs_of(dying)
      w.hold()
      srv = w.receiver()
      wait_handled(srv, set_of(added), set_of(before))
      local again = assert(srv:wait_log("rows of an unfinished pull taken again"), srv:log())
      assert.matches("rows=" .. LIMIT, again, 1, true)
      -- pulled after the restart: the committed rows whose clear never ran, then the two last pulls
      wait_pulled(srv, N - LIMIT)
      assert.equal(0, w.queued())
      srv:stop()
      local after = runs_of(srv)
      local all = {}
      for _, id in ipairs(before) do all[#all + 1] = id end
      for _, id in ipairs(after) do all[#all + 1] = id end
      assert.equal(N, size(set_of(all)))
      -- the 50 rows committed twice ran once: only runs in flight at the kill may repeat
      assert.is_true(repeats(all) <= WORKERS, "runs repeated: " .. repeats(all))
      print(("# kill after the commit: %d of %d handled; runs %d before the kill, %d after it, %d repeated")
         :format(size(set_of(all)), N, #before, #after, repeats(all)))
   end)
end)

describe("bitrix24.app offline queue: kill -9 during a pull, clear = 1 (no rest_offline_extended)", function()
   local w
   setup(function() w = world({ "--offline-extended", "off" }) end)
   teardown(function() if w then w.stop() end end)

   it("loses exactly the one pull whose answer the receiver never got, nothing beyond", function()
      local added = w.add_leads(N, "Unsafe")
      -- get 1 asks clear = 0 and is refused (WRONG_LICENSE); gets 2 and 3 take a pull each; the
      -- fourth deletes its rows (clear = 1) and its answer never leaves
      w.hold("latency", "event.offline.get@4=" .. HOLD)
      local dying, srv = w.receiver(), nil
      finally(function() -- a failed assert leaves no receiver behind
         dying:stop("KILL")
         if srv then srv:stop() end
      end)
      kill_when_held(w, dying, "method=event.offline.get ran=yes")
      assert.matches("no rest_offline_extended", dying:log(), 1, true)
      local before = runs_of(dying)
      assert.equal(N - 3 * LIMIT, w.queued()) -- the held pull's rows are gone from the portal
      w.hold()
      -- the leads the held pull took are added 101st to 150th (a get takes TIMESTAMP_X, then ID, order)
      local lost = {}
      for i = 2 * LIMIT + 1, 3 * LIMIT do lost[added[i]] = true end
      local want = {}
      for _, id in ipairs(added) do
         if not lost[id] then want[id] = true end
      end
      srv = w.receiver()
      wait_handled(srv, want, set_of(before))
      wait_pulled(srv, N - 3 * LIMIT) -- the last pull, and nothing else
      -- the queue is empty: no lost lead can come any more
      assert.equal(0, w.queued())
      srv:stop()
      local after = runs_of(srv)
      local handled = set_of(before)
      for _, id in ipairs(after) do handled[id] = true end
      local missing = {}
      for _, id in ipairs(added) do
         if not handled[id] then missing[id] = true end
      end
      assert.same(lost, missing) -- exactly that pull's rows, and nothing beyond it
      assert.equal(N - LIMIT, size(handled))
      local all = {}
      for _, id in ipairs(before) do all[#all + 1] = id end
      for _, id in ipairs(after) do all[#all + 1] = id end
      assert.is_true(repeats(all) <= WORKERS, "runs repeated: " .. repeats(all))
      print(("# kill with clear = 1: %d of %d handled, %d lost (limit %d); runs %d before the kill, %d after it, "
         .. "%d repeated"):format(size(handled), N, size(missing), LIMIT, #before, #after, repeats(all)))
   end)
end)
