-- bitrix24.transport.ngx: the REST client's transport inside OpenResty (ngx_lua, http subsystem),
-- never blocking the nginx worker:
--   * on lua-resty-http (cosockets) when `require "resty.http"` works — a `resolver` directive is
--     needed for host names, and `lua_ssl_trusted_certificate` for TLS verification;
--   * otherwise on ngx.run_worker_thread with the C http session of bitrix24.core (libcurl), which
--     needs a thread pool in the main context of nginx.conf: `thread_pool bitrix24 threads=16;`
--     (the option thread_pool names another);
--   * otherwise a clear error saying what to configure.
-- The shape the client uses: transport:request(req) -> res { status, headers (lower-case names),
-- body } | nil, msg, kind, sent; transport:request_many(reqs) -> { res | { error, kind, sent } … }
-- run concurrently on light threads; transport.now() (core.now, the library's one monotonic
-- clock) / transport.sleep(s) (ngx.sleep). bitrix24 picks this transport inside nginx.
-- This module is also what the worker threads load (thread_request): its top level touches no
-- ngx API, since a worker thread's Lua state has almost none.
local core = require "bitrix24.core"
local ngx_adapter = require "bitrix24.ngx"

local type = type
local error = error
local pairs = pairs
local pcall = pcall
local require = require
local tostring = tostring
local setmetatable = setmetatable
local string_find = string.find
local string_lower = string.lower
local string_format = string.format
local table_concat = table.concat
local math_floor = math.floor

local _M = {}
local mt = { __index = _M }

local DEFAULT_POOL = "bitrix24"
local DEFAULT_TIMEOUT = 65
local DEFAULT_CONNECT_TIMEOUT = 5
local DEFAULT_KEEPALIVE = 60
local DEFAULT_POOL_SIZE = 32
local DEFAULT_CONCURRENCY = 16
local DEFAULT_MAX_RESPONSE = 64 * 1048576

-- ---- the worker-thread side --------------------------------------------------------------------

-- One C http session per worker thread's Lua state and set of options, so connections are kept
-- alive across the requests that thread runs.
local thread_sessions = {}

-- Runs in an nginx worker thread (ngx.run_worker_thread): one request on the C http session.
-- Always returns one table: the response, { error, kind, sent } for a transport failure, or
-- { raised = msg } for misuse the session raised on.
-- A request marked fresh (a write) gets a connection of its own from the session (req.fresh):
-- libcurl sends a request again when a reused keep-alive connection dies before any answer,
-- which would repeat a write the portal may already have run.
function _M.thread_request(req, session_opts, session_key)
   local ok, res, msg, kind, sent = pcall(function()
      local session = thread_sessions[session_key]
      if session == nil then
         session = core.http(session_opts)
         thread_sessions[session_key] = session
      end
      return session:request(req)
   end)
   if not ok then return { raised = tostring(res) } end
   if res then
      return { status = res.status, headers = res.headers, body = res.body,
               http_version = res.http_version, reused = res.reused }
   end
   return { error = msg, kind = kind, sent = sent }
end

-- ---- the nginx side ----------------------------------------------------------------------------

-- Whether this Lua state runs inside nginx's http subsystem (ngx_lua): bitrix24.ngx.available.
_M.available = ngx_adapter.available

local function check_seconds(opts, name, default)
   local v = opts[name]
   if v == nil then return default end
   if type(v) ~= "number" or not (v > 0 and v <= 86400) then
      error("bad option '" .. name .. "' (seconds from 0 to 86400 expected)", 3)
   end
   return v
end

local function check_count(opts, name, default)
   local v = opts[name]
   if v == nil then return default end
   if type(v) ~= "number" or v < 1 or v ~= math_floor(v) then
      error("bad option '" .. name .. "' (a whole number from 1 expected)", 3)
   end
   return v
end

local HOW_TO_CONFIGURE = "install lua-resty-http (so that require \"resty.http\" works), or declare a"
   .. " thread pool in the main context of nginx.conf: `thread_pool %s threads=16;`"

-- Creates the transport. opts: backend ("resty" | "thread"; by default resty when resty.http
-- loads, else thread), thread_pool (name, "bitrix24"), timeout (s, 65), connect_timeout (s, 5),
-- verify (TLS, true), ca_file, max_response (bytes), user_agent, proxy (thread backend),
-- keepalive (s, 60), pool_size (32) (resty backend), concurrency (16, request_many).
-- Raises outside nginx's http subsystem, and when no backend can work.
function _M.new(opts)
   if opts == nil then opts = {} end
   if type(opts) ~= "table" then error("bad argument #1 to 'new' (table of options expected)", 2) end
   if not ngx_adapter.available() then
      error("bitrix24.transport.ngx works only inside nginx (ngx_lua, http subsystem)", 2)
   end
   local ngx = _G.ngx
   local pool = opts.thread_pool or DEFAULT_POOL
   if type(pool) ~= "string" or pool == "" then
      error("bad option 'thread_pool' (a thread pool name expected)", 2)
   end
   if opts.verify ~= nil and type(opts.verify) ~= "boolean" then
      error("bad option 'verify' (boolean expected)", 2)
   end
   for _, name in pairs({ "ca_file", "user_agent", "proxy" }) do
      if opts[name] ~= nil and type(opts[name]) ~= "string" then
         error("bad option '" .. name .. "' (string expected)", 2)
      end
   end
   local self = {
      thread_pool = pool,
      timeout = check_seconds(opts, "timeout", DEFAULT_TIMEOUT),
      connect_timeout = check_seconds(opts, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
      keepalive = check_seconds(opts, "keepalive", DEFAULT_KEEPALIVE),
      pool_size = check_count(opts, "pool_size", DEFAULT_POOL_SIZE),
      concurrency = check_count(opts, "concurrency", DEFAULT_CONCURRENCY),
      max_response = check_count(opts, "max_response", DEFAULT_MAX_RESPONSE),
      verify = opts.verify ~= false,
      ca_file = opts.ca_file,
      user_agent = opts.user_agent,
   }
   local backend = opts.backend
   if backend ~= nil and backend ~= "resty" and backend ~= "thread" then
      error("bad option 'backend' (\"resty\" or \"thread\" expected)", 2)
   end
   local has_resty, resty = false, nil
   if backend == nil or backend == "resty" then has_resty, resty = pcall(require, "resty.http") end
   if backend == "resty" and not has_resty then
      error("bitrix24.transport.ngx: backend \"resty\" needs lua-resty-http: " .. tostring(resty), 2)
   end
   if has_resty and type(resty) == "table" and type(resty.new) == "function" then
      self.backend = "resty"
      self.resty = resty
   elseif type(ngx.run_worker_thread) == "function" then
      self.backend = "thread"
      self.session_opts = {
         timeout = self.timeout, connect_timeout = self.connect_timeout, verify = self.verify,
         ca_file = self.ca_file, max_response = self.max_response, user_agent = opts.user_agent,
         proxy = opts.proxy,
      }
      local parts = {}
      for _, name in pairs({ "timeout", "connect_timeout", "verify", "ca_file", "max_response",
                             "user_agent", "proxy" }) do
         parts[#parts + 1] = name .. "=" .. tostring(self.session_opts[name])
      end
      self.session_key = table_concat(parts, "\n")
   else
      error("bitrix24.transport.ngx: no non-blocking HTTP in this nginx: "
            .. string_format(HOW_TO_CONFIGURE, pool)
            .. " (ngx.run_worker_thread needs ngx_lua 0.10.21 or later)", 2)
   end
   return setmetatable(self, mt)
end

-- Monotonic seconds: core.now, the clock of the whole library (ngx.now is the wall clock of the
-- event loop's last update). Called as transport.now().
_M.now = core.now

-- Sleeps without blocking the worker (ngx.sleep). transport.sleep(s) and transport:sleep(s).
function _M.sleep(a, b)
   local s = a
   if type(a) == "table" then s = b end
   if type(s) ~= "number" or s ~= s then error("bad argument to 'sleep' (seconds expected)", 2) end
   if s > 0 then _G.ngx.sleep(s) end
end

local function check_request(req)
   if type(req) ~= "table" then error("bad argument #1 to 'request' (request table expected)", 3) end
   if type(req.url) ~= "string" then error("bad request field 'url' (string expected)", 3) end
   if req.body ~= nil and type(req.body) ~= "string" then
      error("bad request field 'body' (string expected)", 3)
   end
   if req.headers ~= nil and type(req.headers) ~= "table" then
      error("bad request field 'headers' (table expected)", 3)
   end
end

-- ---- on a worker thread (libcurl) ----

local function thread_request(self, req)
   local ngx = _G.ngx
   local call = { url = req.url, method = req.method, headers = req.headers, body = req.body,
                  timeout = req.timeout, connect_timeout = req.connect_timeout, fresh = req.fresh }
   local ok, res = ngx.run_worker_thread(self.thread_pool, "bitrix24.transport.ngx", "thread_request",
                                         call, self.session_opts, self.session_key)
   if not ok then
      local msg = tostring(res)
      if string_find(msg, "not found", 1, true) and string_find(msg, "pool", 1, true) then
         error("bitrix24.transport.ngx: " .. msg .. ": " .. string_format(HOW_TO_CONFIGURE,
               self.thread_pool), 0)
      end
      -- the task never ran (the pool's queue is full, …): nothing reached the server
      return nil, "worker thread: " .. msg, "connect", false
   end
   if type(res) ~= "table" then return nil, "worker thread gave no response", "recv", true end
   if res.raised then error(res.raised, 0) end
   if res.status == nil then return nil, res.error, res.kind, res.sent end
   return res
end

-- ---- on cosockets (lua-resty-http) ----

local function lower_headers(headers)
   local out = {}
   if type(headers) ~= "table" then return out end
   for name, value in pairs(headers) do
      if type(value) == "table" then value = table_concat(value, ", ") end
      out[string_lower(tostring(name))] = tostring(value)
   end
   return out
end

-- The kind of a cosocket error message, as the C session names them.
local function cosocket_kind(msg, default)
   msg = string_lower(tostring(msg))
   if string_find(msg, "timeout", 1, true) then return "timeout" end
   if string_find(msg, "resolve", 1, true) or string_find(msg, "resolver", 1, true) then return "dns" end
   if string_find(msg, "handshake", 1, true) or string_find(msg, "ssl", 1, true)
      or string_find(msg, "certificate", 1, true) then
      return "tls"
   end
   return default
end

local fresh_count = 0

local function resty_request(self, req)
   local httpc = self.resty.new()
   local timeout_ms = math_floor((req.timeout or self.timeout) * 1000)
   local connect_ms = math_floor((req.connect_timeout or self.connect_timeout) * 1000)
   httpc:set_timeouts(connect_ms, timeout_ms, timeout_ms)
   local uri, err = httpc:parse_uri(req.url, false)
   if not uri then return nil, "bad url: " .. tostring(err), "connect", false end
   local scheme, host, port, path, query = uri[1], uri[2], uri[3], uri[4], uri[5]
   -- a write (fresh) goes on a connection of its own, never on one a pool kept: a pooled
   -- connection the server has closed meanwhile fails after sending, which leaves a write's
   -- outcome unknown
   local pool
   if req.fresh then
      fresh_count = fresh_count + 1
      pool = "bitrix24-fresh-" .. fresh_count
   end
   local ok
   ok, err = httpc:connect{
      scheme = scheme, host = host, port = port, pool = pool,
      ssl_verify = self.verify, ssl_server_name = host, pool_size = self.pool_size,
   }
   if not ok then
      return nil, "connect to " .. tostring(host) .. ": " .. tostring(err),
         cosocket_kind(err, "connect"), false
   end
   if query and query ~= "" then path = path .. "?" .. query end
   local headers = req.headers
   if self.user_agent then
      headers = { ["User-Agent"] = self.user_agent }
      for name, value in pairs(req.headers or {}) do headers[name] = value end
   end
   local res
   res, err = httpc:request{ method = req.method or "GET", path = path, headers = headers,
                             body = req.body }
   if not res then
      httpc:close()
      return nil, tostring(err), cosocket_kind(err, "send"), true
   end
   local body
   body, err = res:read_body()
   if body == nil then
      httpc:close()
      return nil, tostring(err), cosocket_kind(err, "recv"), true
   end
   if #body > self.max_response then
      httpc:close()
      return nil, "response larger than the limit of " .. self.max_response .. " bytes",
         "too_large", true
   end
   headers = lower_headers(res.headers)
   if req.fresh or headers.connection == "close" then
      httpc:close()
   else
      httpc:set_keepalive(math_floor(self.keepalive * 1000), self.pool_size)
   end
   return { status = res.status, headers = headers, body = body }
end

-- One request: req { url, method ("GET"), headers, body, timeout, connect_timeout, fresh } ->
-- res { status, headers, body } | nil, msg, kind, sent (kind: timeout, connect, dns, tls, send,
-- recv, too_large; sent false when nothing can have reached the server). Yields the current
-- light thread; raises on misuse and on a thread pool missing from nginx.conf.
function _M.request(self, req)
   check_request(req)
   if self.backend == "resty" then return resty_request(self, req) end
   return thread_request(self, req)
end

-- Several requests at once on light threads (at most `concurrency` in flight): an array in the
-- order of reqs, each item the response or { error = msg, kind = kind, sent = sent }.
function _M.request_many(self, reqs)
   if type(reqs) ~= "table" then
      error("bad argument #1 to 'request_many' (array of requests expected)", 2)
   end
   local n = #reqs
   for i = 1, n do check_request(reqs[i]) end
   local ngx = _G.ngx
   local results = {}
   local next_index = 0
   local raised
   local function worker()
      while raised == nil do
         next_index = next_index + 1
         local i = next_index
         if i > n then return end
         local ok, res, msg, kind, sent = pcall(_M.request, self, reqs[i])
         if not ok then
            raised = res
         elseif res then
            results[i] = res
         else
            results[i] = { error = msg, kind = kind, sent = sent }
         end
      end
   end
   local threads = {}
   local count = n < self.concurrency and n or self.concurrency
   for t = 1, count do
      local th, err = ngx.thread.spawn(worker)
      if not th then error("bitrix24.transport.ngx: could not start a light thread: " .. tostring(err), 2) end
      threads[t] = th
   end
   for t = 1, count do ngx.thread.wait(threads[t]) end
   if raised ~= nil then error(raised, 2) end
   return results
end

return _M
