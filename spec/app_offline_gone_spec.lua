-- The offline puller when its portal, or the OAuth server, is gone (kill -9), over real HTTP
-- with real processes: the `b24 serve` receiver (spec/helpers/app_offline_main.lua, pulling
-- every 0.2 s) must not hammer a portal that refuses connections (its failed pulls back off,
-- the waits doubling), must not spin, and must end on SIGTERM with status 0 within its
-- --drain-timeout; a pull of a portal whose answers are 500 (its OAuth server gone) must not
-- hold its job, and so the stop, in the client's long retry sleeps (8 attempts, up to 30 s each).
if rawget(_G, "jit") then return end -- real processes killed: the Lua 5.4 pass only

local bitrix24 = require "bitrix24"
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local socket = require "socket"

local CLIENT_ID = "local.spec0offgone000001"
local SECRET = "spec0offgone0secret0value0000001"
local DRAIN = 5 -- the receiver's --drain-timeout

-- Seconds of the day of a log line's time= field (milliseconds kept).
local function time_of(line)
   local h, m, s = line:match("time=%d+%-%d+%-%d+T(%d+):(%d+):([%d.]+)Z")
   return h and (tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(s)) or nil
end

-- CPU seconds (user + system) the process has used so far.
local function cpu_seconds(pid)
   local f = assert(io.open("/proc/" .. pid .. "/stat"))
   local stat = f:read("a")
   f:close()
   local fields = {}
   for x in stat:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = x end
   return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime at 100 ticks a second
end

-- Reads srv's log from line `from` until step(line) returns true; raises with the log when the
-- receiver ends first, or when `watchdog` seconds pass (checked as lines come: the puller's
-- warnings keep them coming).
local function follow(srv, from, watchdog, step)
   local started, i = socket.gettime(), from
   while true do
      local line = srv.lines[i]
      if not line then
         line = srv.stream:read("l")
         assert(line and not line:match("^b24%-exit="), "the receiver ended first:\n" .. srv:log())
         srv.lines[#srv.lines + 1] = line
      end
      if step(line) then return i end
      assert(socket.gettime() - started < watchdog, "nothing after " .. watchdog .. " s:\n" .. srv:log(from))
      i = i + 1
   end
end

-- Portals (each `b24 emulate --app`; the first is the OAuth server of all) with the application
-- installed into a receiver's inbox and ONCRMLEADADD bound offline; the receiver stopped.
local function world(n)
   local w = { dir = b24.tmpdir(), portals = {} }
   w.store = w.dir .. "/inbox.sqlite"
   w.port = b24.free_port()
   for i = 1, n do
      local args = { "--member-id", ("spec0gone%03d"):format(i), "--code", emu.CODE,
                     "--app", CLIENT_ID .. ":" .. SECRET, "--time-scale", "1000", "--token-ttl", "360000000" }
      if i > 1 then
         args[#args + 1] = "--oauth-server"
         args[#args + 1] = w.portals[1].srv.base
      end
      local srv = b24.emulate{ args = args }
      w.portals[i] = { srv = srv, member_id = args[2], admin = bitrix24.client(srv.base .. emu.path("")) }
   end
   w.env = "APP_CLIENT_ID=" .. CLIENT_ID .. " APP_CLIENT_SECRET=" .. SECRET .. " APP_OAUTH=" .. w.portals[1].srv.base

   -- the receiver on its fixed port and inbox; more: environment
   function w.receiver(more)
      return b24.start{ script_path = b24.root .. "/spec/helpers/app_offline_main.lua",
                        args = { "--listen", "127.0.0.1:" .. w.port, "--workers", "2", "--jobs", "2",
                                 "--drain-timeout", tostring(DRAIN), "--inbox", w.store },
                        env = w.env .. " APP_OFFLINE_INTERVAL=0.2 APP_OFFLINE_PARALLEL=" .. n .. " "
                           .. (more or "") .. " " }
   end

   function w.run(mode, ...) return b24.app_run(w.env, w.store, mode, ...) end

   function w.stop()
      for _, p in ipairs(w.portals) do p.srv:stop("KILL") end
      os.execute("rm -rf " .. b24.quote(w.dir))
   end

   local srv = w.receiver()
   b24.app_install_offline(srv, w.portals, w.run)
   srv:stop()
   return w
end

-- SIGTERM ends srv with status 0 within the drain and a margin.
local function stops_in_time(srv)
   local started = socket.gettime()
   local code = srv:stop()
   local took = socket.gettime() - started
   assert.equal(0, code, srv:log())
   assert.is_true(took < DRAIN + 10, ("the stop took %.1f s (--drain-timeout %d)"):format(took, DRAIN))
end

describe("bitrix24.app offline queue: the portal gone", function()
   local w
   setup(function() w = world(1) end)
   teardown(function() if w then w.stop() end end)

   -- the helper's APP_DIE_AT (the other app_offline specs' "receiver dies during a pull") once
   -- called os.exit on the jobs thread: exit(3) ran the atexit handlers while the server's
   -- threads ran on, one crashed on OpenSSL's freed lock, and under ASan that receiver hung at
   -- 100% CPU, deaf to SIGTERM. It must die as a kill -9 does, at once.
   it("lets a receiver dying during a pull (APP_DIE_AT) die at once, as a kill -9 does", function()
      local calls = {}
      for i = 1, 60 do calls[i] = { "crm.lead.add", { fields = { TITLE = "Dying " .. i } } } end
      local _, errors = w.portals[1].admin:call_many(calls)
      assert.is_nil(errors)
      -- the log streamer gives up after 60 s: a hang fails here instead of holding the run
      local dying = w.receiver("APP_DIE_AT=put:30 B24_SPEC_TIMEOUT=60")
      finally(function() if not dying.stopped then dying:stop("KILL") end end)
      assert(dying:wait_log("dying at put"), dying:log())
      local line = dying:wait_log("b24-exit=")
      assert(line, "the dying receiver did not end:\n" .. dying:log())
      assert.equal("b24-exit=137", line, dying:log()) -- SIGKILL: no exit handlers, no crash
      dying:stop()
   end)

   it("backs off its pulls, does not spin, and stops on SIGTERM with status 0", function()
      local portal = w.portals[1]
      local srv = w.receiver()
      finally(function() if not srv.stopped then srv:stop("KILL") end end)
      assert(srv:wait_log('msg="jobs ready"'), srv:log())
      portal.srv:signal("KILL")
      local from = #srv.lines + 1
      local cpu0, wall0 = cpu_seconds(srv.pid), socket.gettime()
      -- six failed pulls in a row: without a backoff they come every interval plus the client's
      -- own connection retries (about 1.5 s each, evenly); with it, the waits double
      local times = {}
      follow(srv, from, 90, function(line)
         if line:find('msg="bitrix24.offline: pull failed"', 1, true) then times[#times + 1] = time_of(line) end
         return #times == 6
      end)
      local cpu, wall = cpu_seconds(srv.pid) - cpu0, socket.gettime() - wall0
      local gaps = {}
      for i = 2, #times do gaps[i - 1] = (times[i] - times[i - 1]) % 86400 end
      for i, g in ipairs(gaps) do gaps[i] = ("%.2f"):format(g) end
      local shown = table.concat(gaps, " ")
      print(("# failed pulls %s s apart; %.2f s of CPU in %.1f s"):format(shown, cpu, wall))
      assert.is_true(tonumber(gaps[#gaps]) >= 4 * tonumber(gaps[1]),
                     "the failed pulls do not back off: " .. shown .. " s apart")
      assert.is_true(cpu < 0.5 * wall, ("the receiver spins: %.2f s of CPU in %.1f s"):format(cpu, wall))
      stops_in_time(srv)
   end)
end)

describe("bitrix24.app offline queue: the OAuth server gone", function()
   local w
   setup(function() w = world(2) end)
   teardown(function() if w then w.stop() end end)

   it("gives a pull of a portal answering 500 up soon, and stops on SIGTERM with status 0", function()
      local oauth, portal = w.portals[1], w.portals[2]
      local srv = w.receiver()
      finally(function() if not srv.stopped then srv:stop("KILL") end end)
      assert(srv:wait_log('msg="jobs ready"'), srv:log())
      oauth.srv:signal("KILL")
      local from = #srv.lines + 1
      -- the portal cannot check its tokens: every call is a 500. Two of its pulls fail well
      -- within the watchdog (the client's 8 attempts alone would sleep 30 s or more)
      local failed = 0
      follow(srv, from, 25, function(line)
         if line:find('msg="bitrix24.offline: pull failed"', 1, true)
            and line:find("member_id=" .. portal.member_id, 1, true) then
            failed = failed + 1
         end
         return failed == 2
      end)
      stops_in_time(srv)
   end)
end)
