-- For specs of the durable inbox of `b24 serve`: the captured deliveries of ../shared, a router
-- script whose handler records every run it makes, `b24 inbox` and /metrics read back, and
-- waits on log lines (never sleeps).
local b24 = require "helpers.b24"
local core = require "bitrix24.core"
local cjson = require "cjson"

local M = {}

M.FORM = "application/x-www-form-urlencoded"
M.JSON = "application/json"

-- ../shared beside the repository (found from helpers/b24.lua's path); B24_SHARED overrides
local env_shared = os.getenv("B24_SHARED")
M.shared = (env_shared and env_shared ~= "") and env_shared or (b24.root .. "/../shared")

local function vector_file(name)
   return assert(b24.read(M.shared .. "/vectors/events/" .. name), "missing vector " .. name)
end

-- The captured deliveries, each as its form body and its JSON body, with what the handler must
-- see: name, id, and the decoded fields (ts, auth, data).
local function vector(name, id, form, json)
   local t = cjson.decode(json)
   return { name = name, id = id, form = form, json = json, fields = t,
                member_id = t.auth.member_id, domain = t.auth.domain, token = t.auth.application_token }
end
do
   local deal_json = vector_file("webhook-oncrmdealadd.json")
   M.vectors = {
      vector("ONCRMDEALADD", "7405", core.form_encode(cjson.decode(deal_json)), deal_json),
      vector("ONCRMCONTACTADD", "134806", vector_file("app-oncrmcontactadd.form"),
                vector_file("app-oncrmcontactadd.expected.json")),
      -- a task comment event carries its comment in FIELDS_AFTER (ID "0", MESSAGE_ID the
      -- comment), FIELDS_BEFORE is "undefined"
      vector("ONTASKCOMMENTADD", "48760", vector_file("webhook-ontaskcommentadd.form"),
                vector_file("webhook-ontaskcommentadd.expected.json")),
   }
end
M.deal = M.vectors[1]

-- tokens per portal (member_id), as one receiver serving the three portals of the vectors
function M.tokens()
   local t = {}
   for _, v in ipairs(M.vectors) do t[v.member_id] = v.token end
   return t
end

-- A form body of a synthetic event on the deal vector's portal, with its token unless
-- t.auth says otherwise: t = { name, id, ts, data = { extra fields }, auth = { overrides } }.
function M.event(t)
   local data = { FIELDS = { ID = t.id } }
   for k, v in pairs(t.data or {}) do data[k] = v end
   local auth = { domain = M.deal.domain, member_id = M.deal.member_id,
                         application_token = M.deal.token }
   for k, v in pairs(t.auth or {}) do auth[k] = v ~= false and v or nil end
   return { event = t.name, event_handler_id = "975", data = data, ts = t.ts or "1766047124",
                auth = auth }
end

function M.form(t) return core.form_encode(M.event(t)) end

-- Lua source of a value of strings, numbers, booleans and tables.
local function lua_source(v)
   if type(v) == "string" then return ("%q"):format(v) end
   if type(v) ~= "table" then return tostring(v) end
   local parts = {}
   for k, x in pairs(v) do parts[#parts + 1] = "[" .. lua_source(k) .. "] = " .. lua_source(x) end
   return "{ " .. table.concat(parts, ", ") .. " }"
end

-- The router script. Its one handler ("*"), on every run:
--   data[BLOCK]=1 (first attempt): writes the event ID to the FIFO dir/started and waits
--     until something is written to the FIFO dir/release;
--   data[SPIN]=1 (first attempt): loops forever (for --handler-timeout);
--   data[CRASH]=1: records the run, then kills the host with SIGKILL (every attempt);
--   appends a JSON line { name, id, attempt, ts, domain, member_id, data, client, log } to
--     the record file, then logs msg="saw NAME ID ATTEMPT" through ctx.log;
--   data[FAILS]=N: raises "planned failure on attempt K" while K <= N, unless the flag file
--     exists.
local HANDLER = [[
local bitrix24 = require "bitrix24"
local cjson = require "cjson"
local CFG = %s
local router = bitrix24.router(CFG.router)
local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end
router:on("*", function(event, ctx)
  local data = type(event.data) == "table" and event.data or {}
  if data.BLOCK == "1" and ctx.attempt == 1 then
    local f = assert(io.open(CFG.dir .. "/started", "w"))
    f:write(tostring(event.id))
    f:close()
    local g = assert(io.open(CFG.dir .. "/release", "r"))
    g:read("a")
    g:close()
  end
  if data.SPIN == "1" and ctx.attempt == 1 then
    while true do end
  end
  if data.CRASH == "1" then -- the host dies in the run, as on a crash in a C module
    local f = assert(io.open(CFG.record, "a"))
    f:write(cjson.encode{ name = event.name, id = event.id, attempt = ctx.attempt, crash = true }, "\n")
    f:close()
    os.execute("kill -KILL $PPID")
    while true do end
  end
  local rec = { name = event.name, id = event.id, attempt = ctx.attempt, ts = event.ts,
                domain = event.domain, member_id = event.member_id, data = event.data,
                client = type(ctx.client) == "table" and ctx.client.name or nil,
                log = type(ctx.log) }
  local f = assert(io.open(CFG.record, "a"))
  f:write(cjson.encode(rec), "\n")
  f:close()
  ctx.log("info", "saw " .. event.name .. " " .. tostring(event.id) .. " " .. ctx.attempt)
  local fails = tonumber(data.FAILS) or 0
  if ctx.attempt <= fails and not exists(CFG.flag) then
    error("planned failure on attempt " .. ctx.attempt)
  end
end)
return router
]]

local Env = {}
Env.__index = Env

-- A directory with the inbox file, the record file, the flag path and the router script.
-- router: the options of bitrix24.router (a REST client stand-in is added as ctx.client).
function M.env(router)
   local dir = b24.tmpdir()
   local self = setmetatable({ dir = dir, inbox = dir .. "/inbox.sqlite",
                                             record = dir .. "/record.jsonl", flag = dir .. "/flag",
                                             script = dir .. "/router.lua", servers = {} }, Env)
   local opts = {}
   for k, v in pairs(router) do opts[k] = v end
   opts.client = { name = "spec client" }
   b24.write(self.script, HANDLER:format(lua_source{ router = opts, dir = dir, record = self.record,
                                                                              flag = self.flag }))
   return self
end

-- Starts b24 serve on the env's script and inbox file; args are added.
function Env:start(args, env)
   local a = { "--inbox", self.inbox }
   for _, x in ipairs(args or {}) do a[#a + 1] = x end
   local srv = b24.start{ script_path = self.script, args = a, env = env }
   self.servers[#self.servers + 1] = srv
   return srv
end

function Env:cleanup()
   for _, srv in ipairs(self.servers) do
      -- a run blocked on the FIFOs would hold a SIGTERM up: those servers are killed
      if not srv.stopped then srv:stop(self.has_fifos and "KILL" or "TERM") end
   end
   os.execute(b24.clean .. "rm -rf " .. b24.quote(self.dir))
end

-- Makes the FIFOs a BLOCK handler talks through.
function Env:fifos()
   self.has_fifos = true
   os.execute(b24.clean .. "mkfifo " .. b24.quote(self.dir .. "/started") .. " " .. b24.quote(self.dir .. "/release"))
end

-- Blocks until a BLOCK handler has started; returns the event ID it wrote.
function Env:started()
   local f = assert(io.open(self.dir .. "/started", "r"))
   local id = f:read("a")
   f:close()
   return id
end

function Env:release()
   local f = assert(io.open(self.dir .. "/release", "w"))
   f:write("go")
   f:close()
end

-- `b24 inbox ARGS --inbox FILE`: output, exit status.
function Env:inbox_cmd(args)
   return b24.exec(b24.quote(b24.bin) .. " inbox " .. args .. " --inbox " .. b24.quote(self.inbox))
end

function Env:stats()
   local out, code = self:inbox_cmd("stats")
   assert(code == 0, out)
   return cjson.decode(out)
end

-- The rows of `b24 inbox list [--dead]`, decoded.
function Env:list(dead)
   local out, code = self:inbox_cmd("list --limit 100000" .. (dead and " --dead" or ""))
   assert(code == 0, out)
   local rows = {}
   for line in out:gmatch("[^\n]+") do rows[#rows + 1] = cjson.decode(line) end
   return rows
end

-- Every run the handler recorded, in order; with name (and id), only those.
function Env:records(name, id)
   local runs = {}
   for line in (b24.read(self.record) or ""):gmatch("[^\n]+") do
      local r = cjson.decode(line)
      if (name == nil or r.name == name) and (id == nil or r.id == id) then runs[#runs + 1] = r end
   end
   return runs
end

-- The attempts of the recorded runs of one event, in order.
function Env:attempts(name, id)
   local a = {}
   for _, r in ipairs(self:records(name, id)) do a[#a + 1] = r.attempt end
   return a
end

-- POSTs a body (a form by default) to a server.
function M.post(srv, body, content_type, headers)
   local h = { ["Content-Type"] = content_type or M.FORM }
   for k, v in pairs(headers or {}) do h[k] = v end
   return assert(srv:request{ method = "POST", path = "/hook", headers = h, body = body })
end

-- A sample's value in /metrics (series is the name with its labels), or nil.
function M.metric(srv, series)
   local text = assert(srv:request{ path = "/metrics" }).body
   for line in text:gmatch("[^\n]+") do
      if line:sub(1, #series + 1) == series .. " " then return tonumber(line:sub(#series + 2)) end
   end
   return nil
end

-- Waits for a server that is going to die by itself (exits, is killed) and cleans up after it.
function M.reap(srv)
   assert(srv:wait_log("b24-exit="))
   srv.signal = function() end -- there is no process to signal any more
   return srv:stop()
end

function M.healthz(srv)
   local res = assert(srv:request{ path = "/healthz" })
   return res.status, cjson.decode(res.body)
end

-- Waits for a log line containing needle among the lines from position `from` on (1-based);
-- returns it and its position, or nil and the log when the server exited first.
function M.wait_log_from(srv, from, needle)
   local i = from
   while true do
      while i <= #srv.lines do
         if srv.lines[i]:find(needle, 1, true) then return srv.lines[i], i end
         i = i + 1
      end
      local line = srv.stream:read("l")
      if not line then return nil, table.concat(srv.lines, "\n") end
      srv.lines[#srv.lines + 1] = line
      if line:match("^b24%-exit=") and not needle:match("^b24%-exit") then
         return nil, table.concat(srv.lines, "\n")
      end
   end
end

-- Waits for the handler's msg="saw NAME ID ATTEMPT" line (from position `from` on).
function M.wait_saw(srv, name, id, attempt, from)
   local line, seen = M.wait_log_from(srv, from or 1, ('msg="saw %s %s %d"'):format(name, id, attempt))
   return assert(line, "no run of " .. name .. " " .. id .. " attempt " .. attempt .. " in:\n" .. tostring(seen))
end

-- With --handler-threads 1: posts a marker delivery and waits for its run. Every outcome of a
-- run that ended before the marker ran has been committed by then (the one handler thread
-- commits a run's outcome before it claims the next delivery).
local barrier_n = 0
function M.barrier(srv)
   barrier_n = barrier_n + 1
   local id = tostring(900000 + barrier_n)
   local res = M.post(srv, M.form{ name = "ONSPECBARRIER", id = id, ts = tostring(os.time()) })
   assert(res.status == 200, res.body)
   M.wait_saw(srv, "ONSPECBARRIER", id, 1)
   -- and its outcome counted in /metrics, which comes just before this line
   local _, at = M.wait_log_from(srv, 1, ('msg="saw ONSPECBARRIER %s 1"'):format(id))
   assert(M.wait_log_from(srv, at, 'msg="delivery handled" event=ONSPECBARRIER'))
end

-- With --handler-threads 1 and the FIFOs made: posts a marker delivery that blocks its run,
-- and returns once it runs. Until release_hold, every earlier outcome has been committed and
-- the inbox holds exactly the marker (running) and what is pending.
local hold_n = 0
function Env:hold(srv)
   hold_n = hold_n + 1
   local id = tostring(800000 + hold_n)
   local res = M.post(srv, M.form{ name = "ONSPECHOLD", id = id, ts = tostring(os.time()),
                                                   data = { BLOCK = "1" } })
   assert(res.status == 200, res.body)
   assert(self:started() == id)
   self.held = id
end

function Env:release_hold(srv)
   local from = #srv.lines + 1
   self:release()
   M.wait_saw(srv, "ONSPECHOLD", self.held, 1, from)
end

-- The rows still in the inbox (`b24 inbox list`), markers left out.
function Env:rows()
   local rows = {}
   for _, row in ipairs(self:list()) do
      if row.event ~= "ONSPECBARRIER" and row.event ~= "ONSPECHOLD" then rows[#rows + 1] = row end
   end
   return rows
end

-- The event names of the rows still in the inbox, markers left out.
function Env:pending_events()
   local names = {}
   for _, row in ipairs(self:list()) do
      if row.event ~= "ONSPECBARRIER" and row.event ~= "ONSPECHOLD" then names[#names + 1] = row.event end
   end
   return names
end

return M
