-- A `b24 serve` script for spec/app_offline_spec.lua, app_offline_kill_spec.lua and
-- app_offline_portals_spec.lua: an application whose router pulls its portals' offline queues
-- into the inbox (bitrix24.offline) and logs each lead it handles as "lead handled" with its id,
-- whether it came from the queue and its portal (member_id). Config from the environment:
-- APP_CLIENT_ID, APP_CLIENT_SECRET, APP_OAUTH, APP_OFFLINE_INTERVAL (60), APP_OFFLINE_LIMIT (50),
-- APP_OFFLINE_PARALLEL (the puller's parallel: portals sharded over that many jobs; unset: none);
-- APP_DIE_AT = "put:N" ends the process (kill -9 of itself: no drain) at the Nth inbox commit,
-- before it; "clear:N" right before the Nth event.offline.clear, after its rows were committed.
local bitrix24 = require "bitrix24"
local host = require "b24.host"

local die_at, die_n = (os.getenv("APP_DIE_AT") or ""):match("^(%a+):(%d+)$")
die_n = tonumber(die_n)
local seen = { put = 0, clear = 0 }
-- The process's pid (Linux: these specs run real processes there).
local function own_pid()
   local f = assert(io.open("/proc/self/stat"))
   local pid = f:read("a"):match("^(%d+)")
   f:close()
   return assert(pid)
end

local function maybe_die(point)
   seen[point] = seen[point] + 1
   if die_at == point and seen[point] == die_n then
      -- one write(2) to stderr: b24's log batches its lines, and the kill would lose them
      io.stderr:write(('level=warn msg="dying at %s" n=%d\n'):format(point, die_n))
      -- a kill -9 of itself, not os.exit: exit(3) on this (jobs) thread runs the process's
      -- atexit handlers and destructors while its other threads still run, and they crash on
      -- what those freed (OpenSSL's RAND lock: SEGV); under ASan that crash's report deadlocks
      -- with the exiting thread, one thread spinning at 100% CPU, and SIGTERM never ends it
      os.execute("kill -KILL " .. own_pid())
      error("still alive after kill -9 of itself") -- not reached
   end
end

-- host.inbox_put as the puller sees it, dying on request
local put = host.inbox_put
local hooked = setmetatable({
   inbox_put = function(d)
      maybe_die("put")
      return put(d)
   end,
}, { __index = host })

local app = bitrix24.app{
   client_id = os.getenv("APP_CLIENT_ID"), client_secret = os.getenv("APP_CLIENT_SECRET"),
   oauth_server = os.getenv("APP_OAUTH"), store = host.tokens(), log = host.log,
   transport = (function()
      local t = bitrix24.transport()
      local request = t.request
      -- before an event.offline.clear leaves: the point after the commit
      t.request = function(self, req)
         if type(req.url) == "string" and req.url:find("/event.offline.clear", 1, true) then maybe_die("clear") end
         return request(self, req)
      end
      return t
   end)(),
}
local router = app:router{ offline = { host = hooked, interval = tonumber(os.getenv("APP_OFFLINE_INTERVAL") or "60"),
                                       limit = tonumber(os.getenv("APP_OFFLINE_LIMIT") or "50"),
                                       parallel = tonumber(os.getenv("APP_OFFLINE_PARALLEL") or "") } }
router:on("ONAPPINSTALL", function(event)
   host.log("info", "app installed", { member_id = event.member_id })
end)
-- Each lead handled, as a line in the log's format written straight to stderr (one write(2)
-- before the handler returns): b24's log batches its lines under load, and a kill -9 may lose
-- the last ones, while the specs count these lines of a receiver they kill to know what it ran.
router:on("ONCRMLEADADD", function(event)
   io.stderr:write(('level=info msg="lead handled" id=%s offline=%s portal=%s\n'):format(
      tostring(event.id), event.offline and "yes" or "no", tostring(event.member_id)))
end)
return router
