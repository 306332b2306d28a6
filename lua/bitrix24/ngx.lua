-- bitrix24.ngx: the library's nginx adapter (ngx_lua / OpenResty). It holds the one answer to
-- "does this run inside nginx?" (available), the router's nginx side (the request as
-- router:accept takes it, the answer written back, the handlers run in an ngx.timer after the
-- answer: handle, which router:handle_ngx calls) and a log on ngx.log. Loading it touches no ngx
-- API, so a worker thread's Lua state may load it too.
local Error = require "bitrix24.error"
local log_module = require "bitrix24.log"

local type = type
local error = error
local pairs = pairs
local pcall = pcall
local rawget = rawget
local setmetatable = setmetatable
local tostring = tostring
local tonumber = tonumber
local io_open = io.open
local string_lower = string.lower
local string_sub = string.sub
local table_concat = table.concat

local _M = {}

local MAX_HEADERS = 100

-- Whether this Lua state runs inside nginx's http subsystem with ngx_lua: where bitrix24 talks
-- through bitrix24.transport.ngx and router:handle_ngx works.
function _M.available()
   local ngx = rawget(_G, "ngx")
   return type(ngx) == "table" and type(ngx.config) == "table" and ngx.config.subsystem == "http"
end

-- The ngx API table, raising a clear error outside nginx.
function _M.api()
   if not _M.available() then
      error("bitrix24.ngx works only inside nginx with ngx_lua (content_by_lua*)", 3)
   end
   return _G.ngx
end

-- The request headers with lower-case names, a repeated header joined with ", " as b24 gives it.
local function request_headers(ngx)
   local raw = ngx.req.get_headers(MAX_HEADERS)
   local headers = {}
   for name, value in pairs(raw) do
      if type(value) == "table" then value = table_concat(value, ", ") end
      headers[string_lower(name)] = value
   end
   return headers
end

local function too_large()
   return Error.new{ code = "too_large", status = 413, description = "request body too large" }
end

-- The body nginx spilled to a temporary file (beyond client_body_buffer_size): read up to
-- max_body bytes; nil, err when it is larger or cannot be read.
local function read_body_file(path, max_body)
   local f, msg = io_open(path, "rb")
   if not f then
      return nil, Error.new{ code = "unreadable", status = 500,
                             description = "request body could not be read: " .. tostring(msg) }
   end
   local size = f:seek("end")
   if size and size > max_body then
      f:close()
      return nil, too_large()
   end
   f:seek("set", 0)
   local body = f:read(max_body + 1) or ""
   f:close()
   if #body > max_body then return nil, too_large() end
   return body
end

-- The current nginx request as router:accept takes it: { method, path, query, headers (lower-case
-- names), body, remote_addr }. The body is read here (ngx.req.read_body): from memory, or from the
-- file nginx spilled it to, up to max_body bytes. Returns the request, or nil and a
-- bitrix24.Error whose status is the answer (413 for a body over max_body, never a silently
-- empty body; 500 for a spilled body that cannot be read).
function _M.read_request(max_body)
   local ngx = _M.api()
   local headers = request_headers(ngx)
   local request = {
      method = ngx.req.get_method(),
      path = ngx.var.uri,
      query = ngx.var.args,
      headers = headers,
      remote_addr = ngx.var.remote_addr,
      body = "",
   }
   -- a declared length over the limit is refused before a byte of the body is read
   local declared = tonumber(headers["content-length"] or "")
   if declared and declared > max_body then return nil, too_large() end
   ngx.req.read_body()
   local body = ngx.req.get_body_data()
   if body == nil then
      local path = ngx.req.get_body_file()
      if path then
         local err
         body, err = read_body_file(path, max_body)
         if body == nil then return nil, err end
      end
   end
   if body and #body > max_body then return nil, too_large() end
   request.body = body or ""
   return request
end

-- Writes an answer and finishes the response (ngx.eof), so the client has it at once even when
-- more work follows in this request or in a timer.
function _M.respond(status, headers, body)
   local ngx = _M.api()
   ngx.status = status
   if type(headers) == "table" then
      for name, value in pairs(headers) do ngx.header[name] = value end
   end
   if body and body ~= "" then ngx.print(body) end
   return ngx.eof()
end

local LEVELS = { error = "ERR", warn = "WARN", warning = "WARN", info = "INFO", debug = "DEBUG" }

-- A log(level, msg, fields) on ngx.log: the line of bitrix24.log (logfmt, masked, fields in key
-- order) at the matching nginx level; bitrix24.log.stderr outside nginx.
function _M.log(level, msg, fields)
   if not _M.available() then return log_module.stderr(level, msg, fields) end
   local ngx = _G.ngx
   local line = log_module.line("logfmt", tostring(level), msg, fields)
   ngx.log(ngx[LEVELS[level] or "NOTICE"] or ngx.NOTICE, string_sub(line, 1, -2))
end

-- Answers a verdict (router:accept's, or one of router.refusal / router.duplicate) and returns
-- its status.
local function answer(verdict)
   _M.respond(verdict.status, verdict.headers, verdict.body)
   return verdict.status
end

-- The store of a lua_shared_dict, shared by every nginx worker. "duplicate" keys hold
-- "running" while they run and "done" dedup_ttl after; "merge" keys count the deliveries
-- since their run started (1 running, 2 one more run asked for, more merged into it) with
-- atomic incr, so workers never race. A worker that dies mid-run leaves its count until the
-- entry expires (dedup_ttl).
local SharedStore = {}
SharedStore.__index = SharedStore

-- A store on ngx.shared[name]; raises when nginx has no such lua_shared_dict.
function _M.shared_store(name)
   local ngx = _M.api()
   local dict = ngx.shared[name]
   if dict == nil then
      error("no lua_shared_dict " .. tostring(name) .. " in nginx.conf (router option shared_dict)", 2)
   end
   return setmetatable({ dict = dict }, SharedStore)
end

local function merge_key(key) return "m:" .. key end
local function duplicate_key(key) return "d:" .. key end

function SharedStore:begin(key, dedup, _, ttl)
   local dict = self.dict
   if dedup == "duplicate" then
      local added, err = dict:add(duplicate_key(key), "running", ttl)
      if added then return "run" end
      if err == "exists" then return "duplicate" end
      return "run" -- the dict is full: running twice beats dropping a delivery
   end
   local n = dict:incr(merge_key(key), 1, 0, ttl)
   if n == nil or n == 1 then return "run" end
   if n == 2 then return "rerun" end
   return "merged"
end

function SharedStore:finish(key, dedup, ok, _, ttl)
   local dict = self.dict
   if dedup == "duplicate" then
      if ok then dict:set(duplicate_key(key), "done", ttl) else dict:delete(duplicate_key(key)) end
      return false
   end
   local n = dict:incr(merge_key(key), -1)
   if n == nil or n <= 0 then return false end
   -- deliveries came while it ran: back to 1 (running) keeping any that come meanwhile, and
   -- run once more
   dict:incr(merge_key(key), 1 - n)
   return true
end

-- router:handle_ngx: reads the request, checks it with router:accept, answers at once, and runs
-- the handlers of an accepted, new event after the response in ngx.timer.at(0, …), deduplicated
-- by router:begin / router:finish (the router's store, or that of opts.shared_dict): a repeat
-- of an add or delete is a duplicate, any other repeat is merged or runs the handlers once more
-- after the run going on. A failing handler is logged, never raised, and its key forgotten so a
-- redelivery runs it again. opts: max_body, max_running (nginx timers running or pending at
-- most when an event comes, else 503), log (bitrix24.ngx.log when nil), shared_dict. Returns
-- the status answered.
function _M.handle(router, opts)
   local ngx = _M.api()
   local log = opts.log or _M.log
   if opts.shared_dict and not router.shared_store then
      router.shared_store = _M.shared_store(opts.shared_dict)
      router.store = router.shared_store
   end
   local request, err = _M.read_request(opts.max_body)
   if not request then return answer(router.refusal(err)) end
   local ok, verdict = pcall(router.accept, router, request) -- a bad key function raises
   if not ok then
      pcall(log, "error", "accept failed", { error = verdict })
      return answer(router.refusal(Error.new{ code = "accept_failed", status = 500,
                                              description = "delivery could not be accepted" }))
   end
   if verdict.status ~= 200 then
      router.log_refusal(log, verdict)
      return answer(verdict)
   end
   local event = verdict.event
   -- nginx's own counts, so a timer it dropped leaves no count behind
   local timer = ngx.timer
   if timer.running_count() + timer.pending_count() >= opts.max_running then
      pcall(log, "error", "too many handlers running", { event = event.name, id = event.id,
                                                         max_running = opts.max_running })
      return answer(router.refusal(Error.new{ code = "busy", status = 503,
                                              description = "too many handlers running" }))
   end
   local outcome = router:begin(verdict)
   if outcome ~= "run" then
      router.log_not_run(log, outcome, event)
      _M.respond(200, { ["Content-Type"] = "application/json" }, router.NOT_RUN[outcome][1])
      return 200
   end
   -- a timer runs in the worker's Lua state once this request handler yields or ends, as a
   -- light thread of its own: cosockets, ngx.sleep and ngx.run_worker_thread work there. It also
   -- runs when nginx is shutting down (premature), since Bitrix24 does not send an event twice.
   local function run()
      router:run_verdict(verdict, { attempt = 1, log = log })
   end
   local scheduled, why = timer.at(0, run)
   if not scheduled then
      router:finish(verdict, false)
      pcall(log, "error", "handlers could not be scheduled", { event = event.name, error = why })
      return answer(router.refusal(Error.new{ code = "not_scheduled", status = 503,
                                              description = "handlers could not be scheduled" }))
   end
   return answer(verdict)
end

return _M
