-- bitrix24.offline: an application's offline event queue pulled into the host's durable inbox,
-- so a change made while the receiver was down is handled when it returns (issue 16).
--
-- The platform (yuliai/bitrix-modules rest/lib/api/event.php eventOfflineGet/Clear/Error/List,
-- rest/lib/eventoffline.php; bitrix24/b24restdocs api-reference/events/offline-events.md):
-- - event.bind{event, event_type = "offline"} queues the application's events on the portal
--   instead of posting them; a row merges with a queued row of the same MESSAGE_ID
--   (md5(EVENT_NAME|json(EVENT_DATA))) that no process has taken;
-- - event.offline.get{clear = 1} (the default) returns up to `limit` rows and deletes them in the
--   same call: an answer lost on the way loses them;
-- - with the portal feature rest_offline_extended, get{clear = 0} marks the rows with a new
--   process_id and keeps them; event.offline.clear{process_id} deletes them once they are safe,
--   event.offline.error{process_id, message_id} parks rows that cannot be taken (ERROR = 1), and
--   get{process_id} returns a process's rows again (after a crash: event.offline.list shows
--   rows with their PROCESS_ID); without the feature get{clear = 0} is 403 WRONG_LICENSE;
-- - ONOFFLINEEVENT, an online event, rings when the queue gains rows.
--
-- The puller, per installed portal: get (clear = 0 when the portal has the feature) → commit each
-- row to the inbox as a delivery the router dispatches like an online one (same keys, so the
-- same dedup and merge) → clear. A crash before the commit leaves the rows marked: the next start
-- finds their process ids with event.offline.list and takes them again; after the commit, they
-- come again and meet the inbox's deduplication. Without the feature (clear = 1) a pull's rows
-- are gone from the portal as soon as it answers: a crash or a lost answer between that answer
-- and the inbox commit loses at most one pull (`limit` rows); the mode is warned about at start
-- (the first pull runs at start) and shown in the log, in /metrics and /healthz
-- (b24_offline_mode{member_id, mode}, by host.metric) and by offline:mode(member_id).
--
-- Portals are dealt over `parallel` host jobs ("bitrix24.offline/1" … "/N", each portal always
-- in the same one, by a hash of its member_id); under `b24 serve --jobs N` (N >= parallel)
-- they run in distinct threads, so portals are pulled at once, each by one job and one client:
-- within its own rate limit. Hosts of a fleet sharing one inbox database pull each portal on
-- one host at a time (host.kv_claim, renewed each run, taken over when its holder stops).
--
-- A pull never sleeps long inside its job's run: its client retries little and briefly (a run
-- holds the other portals of its shard, and b24 serve's stop waits for the run under way, in a
-- sleep the stop cannot cut), and a portal whose pull failed (gone, refusing connections, its
-- OAuth server gone) is pulled again only after a backoff, doubling from `interval` up to
-- `backoff_cap` (300 s) while it keeps failing: the wait is the jobs thread's, between runs.
local core = require "bitrix24.core"
local event_module = require "bitrix24.event"
local router_module = require "bitrix24.router"

local type = type
local ipairs = ipairs
local setmetatable = setmetatable
local pairs = pairs
local pcall = pcall
local error = error
local tostring = tostring
local os_time = os.time
local string_find = string.find
local string_byte = string.byte
local json_encode = core.json_encode
local math_min = math.min
local math_huge = math.huge

local _M = {}

_M.JOB = "bitrix24.offline"

-- The puller's clients: one short retry, no wait for OPERATION_TIME_LIMIT and no connection
-- retries (the portal is pulled again after the backoff instead): a pull's sleeps stay under
-- about 2 s, whatever the portal does.
_M.CLIENT = { retries = 2, connect_retries = 1, backoff = { base = 0.5, cap = 2 }, max_wait = 0 }
-- The longest wait between two pulls of a portal whose pulls fail (seconds), unless interval
-- is longer.
_M.BACKOFF_CAP = 300

local function log(app, level, msg, fields)
   pcall(app.log, level, msg, fields)
end

-- The shard (1..n) of a portal: a hash of its member_id, the same in every Lua state.
local function shard_of(member_id, n)
   local h = 5381
   local s = tostring(member_id)
   for i = 1, #s do h = (h * 33 + string_byte(s, i)) % 4294967296 end
   return h % n + 1
end

-- Publishes a portal's mode (and its rows pulled) in /metrics and /healthz when the host can.
local function publish(self, member_id, mode)
   local metric = self.host.metric
   if type(metric) ~= "function" then return end
   local other = mode == "delete" and "confirm" or "delete"
   pcall(metric, "b24_offline_mode", { member_id = member_id, mode = other }, nil)
   pcall(metric, "b24_offline_mode", { member_id = member_id, mode = mode }, 1)
   pcall(metric, "b24_offline_rows_total", { member_id = member_id }, self.pulled[member_id] or 0, "counter")
end

-- The delivery a queued row becomes: the body an online delivery of that event has (event, data,
-- ts, auth with the portal's application token), as JSON, with `offline` = { id, message_id,
-- process_id, timestamp } beside it. ts is the time of the pull (the row's own time is
-- offline.timestamp).
local function delivery(record, row, process_id)
   return json_encode({
      event = row.EVENT_NAME, event_handler_id = "offline", data = row.EVENT_DATA, ts = tostring(os_time()),
      auth = { domain = record.domain, member_id = record.member_id, application_token = record.application_token,
               client_endpoint = record.client_endpoint, server_endpoint = record.server_endpoint },
      offline = { id = row.ID, message_id = row.MESSAGE_ID, process_id = process_id, timestamp = row.TIMESTAMP_X },
   }, { empty = "object" })
end

-- Commits the rows of one pull to the inbox: the message ids that could not be made a delivery
-- at all (refused by the inbox's bounds: parked with event.offline.error), or nil, err when the
-- inbox itself failed (nothing may be cleared then).
local function commit(self, record, rows, process_id)
   local refused = {}
   for _, row in ipairs(rows) do
      -- a row that cannot be a delivery the router would accept (no JSON, past max_body, no
      -- event name) is refused here; any failure of the inbox itself stops the pull
      local ok, body = pcall(delivery, record, row, process_id)
      local event = ok and #body <= self.router.max_body
         and event_module.parse(body, "application/json", self.router.limits) or nil
      if not event then
         refused[#refused + 1] = row.MESSAGE_ID
      else
         local key = (self.router.key_function or router_module.default_key)(event)
         -- the inbox takes the kind (duplicate or merge on a repeat) from the event's name
         local got, err = self.host.inbox_put{ key = key, event = event.name, content_type = "application/json",
                                               body = body }
         if not got and string_find(tostring(err), "over --max-body", 1, true) then
            refused[#refused + 1] = row.MESSAGE_ID -- b24 serve's --max-body is below the router's
         elseif not got then
            return nil, err
         else
            self.counts.committed = self.counts.committed + 1
         end
      end
   end
   return refused
end

-- Takes a process's rows (or, with clear = 1, a fresh batch that the get deletes): the number
-- taken, or nil, err.
function _M.take(self, client, record, process_id)
   local confirm = self.modes[record.member_id] ~= "delete"
   local params = { limit = self.limit, clear = confirm and 0 or 1, auth_connector = self.auth_connector,
                    process_id = process_id }
   local res, err = client:call("event.offline.get", params)
   if res == nil and confirm and err and err.code == "WRONG_LICENSE" then
      -- the portal lacks rest_offline_extended: rows go as the get answers (see the top)
      self.modes[record.member_id] = "delete"
      log(self.app, "warn", "bitrix24.offline: the portal cannot keep rows until they are committed "
         .. "(no rest_offline_extended): a pull's rows are lost if the receiver dies before the commit",
         { member_id = record.member_id, limit = self.limit })
      return _M.take(self, client, record, process_id)
   end
   if res == nil then return nil, err end
   local rows = type(res) == "table" and res.events or nil
   if type(rows) ~= "table" then return 0 end
   local pid = res.process_id
   local refused, cerr = commit(self, record, rows, pid)
   if not refused then return nil, cerr end
   if confirm and type(pid) == "string" and pid ~= "" and #rows > 0 then
      if #refused > 0 then
         local ok, eerr = client:call("event.offline.error", { process_id = pid, message_id = refused,
                                                               auth_connector = self.auth_connector })
         if ok == nil then return nil, eerr end
         log(self.app, "error", "bitrix24.offline: rows parked as errors (cannot become deliveries)",
             { member_id = record.member_id, count = #refused })
      end
      local ok, clerr = client:call("event.offline.clear", { process_id = pid, auth_connector = self.auth_connector })
      if ok == nil then return nil, clerr end
   end
   self.counts.pulled = self.counts.pulled + #rows
   self.pulled[record.member_id] = (self.pulled[record.member_id] or 0) + #rows
   publish(self, record.member_id, confirm and "confirm" or "delete")
   if #rows > 0 then
      log(self.app, "info", "bitrix24.offline: pulled", { member_id = record.member_id, rows = #rows,
         mode = confirm and "confirm" or "delete", refused = #refused > 0 and #refused or nil,
         job = self.job_name })
   end
   return #rows
end

-- Rows a crashed run left marked (clear = 0): their process ids, from event.offline.list.
local function stale_processes(self, client)
   -- rest.php sanitizeFilter takes no "!": a PROCESS_ID greater than "" is one that is set
   local rows, err = client:all("event.offline.list", { filter = { [">PROCESS_ID"] = "" },
                                                        auth_connector = self.auth_connector }, { keyset = false })
   if not rows then return nil, err end
   local seen, out = {}, {}
   for _, row in ipairs(rows) do
      local pid = type(row) == "table" and row.PROCESS_ID or nil
      if type(pid) == "string" and pid ~= "" and not seen[pid] then
         seen[pid] = true
         out[#out + 1] = pid
      end
   end
   return out
end

-- One portal: its left-over processes once per start, then pulls while they come back full.
-- true when more rows may be waiting, or nil, err.
function _M.drain(self, record)
   -- a fleet on one database pulls each portal on one host at a time: the host holding the
   -- portal's claim (renewed each run; a dead host's runs out); without a shared inbox, nil
   local claim = self.host.kv_claim
   if type(claim) == "function" then
      local held = claim("bitrix24.offline:" .. record.member_id, self.interval * 2 + 60)
      if held == false then return false end
   end
   local client, err = self.app:client(record.member_id, self.client_opts)
   if not client then return nil, err end
   if not self.recovered[record.member_id] and self.modes[record.member_id] ~= "delete" then
      local pids, lerr = stale_processes(self, client)
      if pids then
         for _, pid in ipairs(pids) do
            local n, terr = _M.take(self, client, record, pid)
            if not n then return nil, terr end
            log(self.app, "info", "bitrix24.offline: rows of an unfinished pull taken again",
                { member_id = record.member_id, rows = n })
         end
         self.recovered[record.member_id] = true
      else -- tried again next run; the queue is pulled meanwhile
         log(self.app, "warn", "bitrix24.offline: cannot look for unfinished pulls",
             { member_id = record.member_id, error = tostring(lerr) })
      end
   end
   local n, terr = _M.take(self, client, record, nil)
   if not n then return nil, terr end
   return n >= self.limit
end

-- A failed pull of a portal: its next pull waits interval, doubled at each failure in a row, up
-- to the cap; the wait in seconds.
local function backoff(self, member_id)
   local failures = (self.failures[member_id] or 0) + 1
   self.failures[member_id] = failures
   local wait = math_min(self.interval * 2 ^ (failures - 1), self.backoff_cap)
   self.retry_at[member_id] = self.now() + wait
   return wait
end

-- One job (shard k of n): each installed portal of the shard, one pull each (a portal in its
-- backoff after failed pulls skipped); 0 (run again at once) while some portal came back full,
-- else nil (the interval).
function _M.run(self, k, n)
   local more = false
   self.job_name = self.names[k]
   for _, record in ipairs(self.app.store:list()) do
      local member_id = record.member_id
      local ok, got, err = true, false, nil
      if shard_of(member_id, n) == k and not (self.retry_at[member_id] and self.now() < self.retry_at[member_id]) then
         ok, got, err = pcall(_M.drain, self, record)
         if ok and got ~= nil then self.failures[member_id], self.retry_at[member_id] = nil, nil end
      end
      if not ok or got == nil then
         local wait = backoff(self, member_id)
         log(self.app, "warn", "bitrix24.offline: pull failed", { member_id = member_id,
            error = ok and tostring(err) or tostring(got), failures = self.failures[member_id],
            retry_in = ("%.1f"):format(wait) })
      elseif got then
         more = true
      end
   end
   self.counts.runs = self.counts.runs + 1
   if more then return 0 end
   return nil
end

-- attach(app, router, opts) → the puller. opts: host (b24.host: job, wake, inbox_put; metric
-- when it has it), interval (seconds between pulls without a ring, 60), limit (rows a pull, 50:
-- the platform's LIST_LIMIT), parallel (host jobs the portals are dealt over, 2: at most b24
-- serve's --jobs run at once), auth_connector, confirm = false (pull with clear = 1 even where
-- clear = 0 works), name (of the jobs: name/1 … name/parallel), backoff_cap (the longest wait
-- after failed pulls, 300 s or interval), client (client options over _M.CLIENT). Registers the
-- host jobs and the ONOFFLINEEVENT handler that wakes the ringing portal's job. Raises on misuse.
function _M.attach(app, router, opts)
   if type(opts) ~= "table" or type(opts.host) ~= "table" then
      error("bitrix24.app: offline needs { host = require('b24.host') } (under b24 serve)", 3)
   end
   local host = opts.host
   for _, f in ipairs({ "job", "wake", "inbox_put" }) do
      if type(host[f]) ~= "function" then error("bitrix24.app: offline needs host." .. f .. " (b24 serve)", 3) end
   end
   local parallel = opts.parallel or 2
   if type(parallel) ~= "number" or parallel < 1 or parallel > 16 or parallel % 1 ~= 0 then
      error("bitrix24.app: bad offline option 'parallel' (an integer 1 to 16 expected)", 3)
   end
   local interval = opts.interval or 60
   if type(interval) ~= "number" or interval ~= interval or interval <= 0 or interval == math_huge then
      error("bitrix24.app: bad offline option 'interval' (a number of seconds > 0 expected)", 3)
   end
   local cap = opts.backoff_cap or _M.BACKOFF_CAP
   if type(cap) ~= "number" or cap ~= cap or cap <= 0 then
      error("bitrix24.app: bad offline option 'backoff_cap' (a number of seconds > 0 expected)", 3)
   end
   if opts.client ~= nil and type(opts.client) ~= "table" then
      error("bitrix24.app: bad offline option 'client' (a table of client options expected)", 3)
   end
   local client_opts = {}
   for key, v in pairs(_M.CLIENT) do client_opts[key] = v end
   for key, v in pairs(opts.client or {}) do client_opts[key] = v end
   local self = setmetatable({
      app = app, router = router, host = host,
      interval = interval, limit = opts.limit or 50, auth_connector = opts.auth_connector,
      modes = {}, recovered = {}, pulled = {}, counts = { runs = 0, pulled = 0, committed = 0 },
      parallel = parallel, names = {}, client_opts = client_opts,
      failures = {}, retry_at = {}, backoff_cap = cap > interval and cap or interval,
      now = app.now or core.now,
   }, { __index = _M })
   if opts.confirm == false then
      setmetatable(self.modes, { __index = function() return "delete" end })
      -- the script loads in every state of the host: the warning once a process
      if type(host.once) ~= "function" or host.once("bitrix24.offline: confirm = false") then
         log(app, "warn", "bitrix24.offline: rows are deleted as they are pulled (confirm = false): a pull's "
            .. "rows are lost if the receiver dies before the commit", { limit = self.limit })
      end
   end
   local name = opts.name or _M.JOB
   for k = 1, parallel do
      self.names[k] = name .. "/" .. k
      host.job(self.names[k], self.interval, function() return _M.run(self, k, parallel) end)
   end
   router:on("ONOFFLINEEVENT", function(event) self:wake(event.member_id) end)
   self.name = name
   return self
end

-- Pulls a portal's queue soon (its job is woken), or every portal's when member_id is nil or
-- not a string.
function _M.wake(self, member_id)
   if type(member_id) == "string" and member_id ~= "" then
      self.host.wake(self.names[shard_of(member_id, self.parallel)])
      return
   end
   for k = 1, self.parallel do self.host.wake(self.names[k]) end
end

-- The mode a portal is pulled in: "confirm" (clear = 0, then event.offline.clear) or "delete".
function _M.mode(self, member_id)
   return self.modes[member_id] == "delete" and "delete" or "confirm"
end

_M.delivery = delivery
_M.shard_of = shard_of

return _M
