-- bitrix24.client: the REST client of incoming webhooks (protocol.md §1–§5).
--   local b24 = require("bitrix24").client("https://portal.bitrix24.ru/rest/1/CODE/")
--   local id, err = b24:call("crm.lead.add", { fields = { NAME = "Ivan" } })
-- Calls are JSON POSTs through a pluggable transport (the C http session by default) under a
-- leaky bucket mirroring the portal's; retries never repeat a write after an ambiguous failure.
local core = require "bitrix24.core"
local cjson = require("cjson.safe").new()

-- lua-cjson decodes every JSON number as a float on Lua 5.3+; an id a method returns (121, not
-- 121.0) and counts are given back as integers there. Rows keep what the portal sent (strings).
local tointeger = math.tointeger
local function integral(v)
   if tointeger and type(v) == "number" then return tointeger(v) or v end
   return v
end

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local error = error
local next = next
local string_format = string.format
local string_lower = string.lower
local string_upper = string.upper
local string_find = string.find
local string_sub = string.sub
local string_gsub = string.gsub
local string_match = string.match
local table_concat = table.concat
local table_sort = table.sort
local math_floor = math.floor
local math_ceil = math.ceil
local math_min = math.min
local math_max = math.max
local math_random = math.random
local math_huge = math.huge
local os_time = os.time

cjson.encode_number_precision(14) -- the most lua-cjson 2.1.0 allows
cjson.decode_invalid_numbers(false)

local PAGE = 50
local BATCH_MAX = 50

local _M = {}

-- Error ----------------------------------------------------------------------------------------

local Error = {}
Error.__index = Error
Error.__name = "bitrix24.Error"

function Error.__tostring(e)
   local parts = { "bitrix24: " }
   if e.method then parts[#parts + 1] = e.method .. (e.label and ("[" .. e.label .. "]") or "") .. ": " end
   local code = e.code
   if code == nil or code == "" then code = "(no code)" end
   parts[#parts + 1] = tostring(code)
   if e.description and e.description ~= "" then parts[#parts + 1] = ": " .. tostring(e.description) end
   local extra = {}
   if e.status then extra[#extra + 1] = "HTTP " .. tostring(e.status) end
   if e.url then extra[#extra + 1] = e.url end
   if e.attempts and e.attempts > 1 then extra[#extra + 1] = e.attempts .. " attempts" end
   if #extra > 0 then parts[#parts + 1] = " (" .. table_concat(extra, ", ") .. ")" end
   return table_concat(parts)
end

-- Error.new{ code, description, status, method, retryable, … } → a bitrix24.Error
function Error.new(t)
   t = t or {}
   if t.retryable == nil then t.retryable = false end
   return setmetatable(t, Error)
end

function Error.is(v)
   return getmetatable(v) == Error
end

_M.Error = Error

-- Methods --------------------------------------------------------------------------------------

-- Reads: safe to send again after an ambiguous failure. Everything else (add, update, delete,
-- set, bind, send, …) is a write unless the caller marks it safe.
local READ_VERBS = {
   get = true, list = true, fields = true, current = true, count = true, search = true,
   info = true, getlist = true, getfields = true, version = true, access = true, scope = true,
   methods = true, profile = true, settings = true, status = true, tail = true, find = true,
}

local function is_read(method)
   local verb = string_lower(string_match(method, "([^.]*)$") or "")
   if READ_VERBS[verb] then return true end
   if string_sub(verb, 1, 3) == "get" or string_sub(verb, 1, 4) == "list" then return true end
   return false
end
_M.is_read = is_read

-- Rows of list methods: the wrapper key in result, the id field of a row, the filter/order key.
local LIST_SHAPES = {
   ["crm.item.list"] = { wrapper = "items", id = "id", key = "id" },
   ["tasks.task.list"] = { wrapper = "tasks", id = "id", key = "ID" },
}
_M.LIST_SHAPES = LIST_SHAPES

local PRESETS = {
   standard = { capacity = 50, drain = 2 },
   enterprise = { capacity = 250, drain = 5 },
}

-- Masking --------------------------------------------------------------------------------------

local function plain_pattern(s)
   return (string_gsub(s, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- Replaces every occurrence of the client's secrets in s with ***.
local function masker(secrets)
   local pats = {}
   for _, s in ipairs(secrets) do
      if type(s) == "string" and #s >= 4 then pats[#pats + 1] = plain_pattern(s) end
   end
   return function(s)
      if s == nil then return nil end
      s = tostring(s)
      for _, p in ipairs(pats) do s = string_gsub(s, p, "***") end
      return s
   end
end

-- Leaky bucket ---------------------------------------------------------------------------------

local Bucket = {}
Bucket.__index = Bucket

local function new_bucket(capacity, drain, now)
   return setmetatable({ capacity = capacity, drain = drain, level = 0, at = now(), now = now }, Bucket)
end

function Bucket:update()
   local t = self.now()
   self.level = math_max(0, self.level - (t - self.at) * self.drain)
   self.at = t
end

-- Takes up to n drops: how many fit now, and the seconds until the next one fits.
function Bucket:take(n)
   self:update()
   local k = math_floor(self.capacity - self.level + 1e-9)
   if k > n then k = n end
   if k < 0 then k = 0 end
   self.level = self.level + k
   local wait = 0
   if k == 0 then wait = (self.level + 1 - self.capacity) / self.drain end
   return k, wait
end

-- The portal said it is full (503): mirror that.
function Bucket:fill()
   self:update()
   self.level = math_max(self.level, self.capacity)
end

-- Transports -----------------------------------------------------------------------------------

-- The default transport: a libcurl session of bitrix24.core, with request_many when the core
-- has it. A request marked `fresh` (a write) goes on a connection of its own: libcurl silently
-- sends a request again when a reused keep-alive connection dies before any answer, which would
-- repeat a write the portal may already have run.
function _M.http_transport(opts)
   opts = opts or {}
   local session_opts = {
      connect_timeout = opts.connect_timeout or 5, timeout = opts.timeout or 65,
      verify = opts.verify, ca_file = opts.ca_file, proxy = opts.proxy,
      user_agent = opts.user_agent or ("bitrix24-lua/" .. tostring(core._VERSION)),
   }
   local session = core.http(session_opts)
   local t = { session = session, now = core.now, sleep = core.sleep }
   function t:request(req)
      return session:request(req)
   end
   if session.request_many then
      local MANY = 64 -- what one session:request_many takes
      function t:request_many(reqs)
         if #reqs <= MANY then return session:request_many(reqs) end
         local out = {}
         for first = 1, #reqs, MANY do
            local part = {}
            for i = first, math.min(#reqs, first + MANY - 1) do part[#part + 1] = reqs[i] end
            local got = session:request_many(part)
            for j, r in ipairs(got) do out[first + j - 1] = r end
         end
         return out
      end
   end
   function t:close() session:close() end
   return t
end

-- Whether this runs inside nginx's http subsystem (ngx_lua / OpenResty), where the default
-- transport is bitrix24.transport.ngx.
function _M.in_nginx()
   local ngx = rawget(_G, "ngx")
   return type(ngx) == "table" and type(ngx.config) == "table" and ngx.config.subsystem == "http"
end

-- Client ---------------------------------------------------------------------------------------

local Client = {}
Client.__index = Client
_M.Client = Client

local function check_limit(limit)
   if limit == nil or limit == "standard" then return PRESETS.standard end
   if limit == "enterprise" then return PRESETS.enterprise end
   if limit == false then return false end
   if type(limit) == "table" and type(limit.capacity) == "number" and limit.capacity >= 1 and
      type(limit.drain) == "number" and limit.drain > 0 then
      return { capacity = limit.capacity, drain = limit.drain }
   end
   error("bitrix24.client: bad option 'limit' (\"standard\", \"enterprise\", false or {capacity, drain} expected)", 3)
end

local function host_log()
   local ok, host = pcall(require, "b24.host") -- only inside b24
   if ok and type(host) == "table" and type(host.log) == "function" then return host.log end
   return nil
end

-- bitrix24.client(url | opts) → client. opts: url (the webhook prefix …/rest/USER/CODE/),
-- transport (bitrix24.transport.ngx inside nginx, thread_pool naming its pool; the C http
-- session elsewhere), timeout (65), connect_timeout (5), verify, ca_file, proxy, limit ("standard",
-- "enterprise", false, {capacity, drain}), retries (attempts per request, 8), connect_retries
-- (attempts while the portal cannot be reached, 3), backoff ({base,
-- cap} seconds), max_wait (the longest OPERATION_TIME_LIMIT wait, 600 s), operating_wait (the
-- wait when the reset time is unknown, 10 s), parallel (requests at once in exports and
-- call_many, 8), log (function(level, msg, fields)), auth (an OAuth access token, masked too),
-- clock (a function giving unix seconds, os.time by default).
function _M.new(opts)
   if type(opts) == "string" then opts = { url = opts } end
   if type(opts) ~= "table" then error("bitrix24.client: a webhook URL or an options table expected", 2) end
   local url = opts.url
   if type(url) ~= "string" or not string_match(url, "^https?://[^/]+") then
      error("bitrix24.client: bad option 'url' (an http(s) webhook URL expected)", 2)
   end
   if string_sub(url, -1) ~= "/" then url = url .. "/" end
   local code = string_match(url, "/rest/[^/]+/([^/]+)/$")
   local secrets = { code, opts.auth }
   local mask = masker(secrets)
   local transport = opts.transport
   if transport == nil and _M.in_nginx() then
      -- inside OpenResty: cosockets or worker threads, never a blocking call in the worker
      transport = require("bitrix24.transport.ngx").new{
         timeout = opts.timeout, connect_timeout = opts.connect_timeout, verify = opts.verify,
         ca_file = opts.ca_file, proxy = opts.proxy, thread_pool = opts.thread_pool,
         user_agent = opts.user_agent or ("bitrix24-lua/" .. tostring(core._VERSION)),
      }
   elseif transport == nil then
      transport = _M.http_transport(opts)
   elseif type(transport) ~= "table" or type(transport.request) ~= "function" then
      error("bitrix24.client: bad option 'transport' (a table with request expected)", 2)
   end
   local now = transport.now or core.now
   local limit = check_limit(opts.limit)
   local backoff = opts.backoff or {}
   local self = setmetatable({
      url = url,
      masked_url = code and (string_sub(url, 1, #url - #code - 1) .. "***/") or url,
      mask = mask,
      transport = transport,
      now = now,
      sleep = transport.sleep or core.sleep,
      clock = opts.clock or os_time,
      clock_set = opts.clock ~= nil,
      bucket = limit and new_bucket(limit.capacity, limit.drain, now) or nil,
      attempts = opts.retries or 8,
      connect_attempts = opts.connect_retries or 3,
      backoff_base = backoff.base or 0.5,
      backoff_cap = backoff.cap or 30,
      max_wait = opts.max_wait or 600,
      operating_wait = opts.operating_wait or 10,
      parallel = opts.parallel or 8,
      log = opts.log or host_log(),
      auth = opts.auth,
      random = opts.random or math_random,
      operating_reset = {},
      stats = { requests = 0, retries = 0 },
   }, Client)
   return self
end

function Client:__tostring()
   return "bitrix24.client (" .. self.masked_url .. ")"
end

function Client:_log(level, msg, fields)
   if not self.log then return end
   local clean = {}
   for k, v in pairs(fields or {}) do clean[k] = self.mask(v) end
   pcall(self.log, level, self.mask(msg), clean)
end

function Client:close()
   if self.transport.close then self.transport:close() end
end

-- The seconds before retry n (1-based) of a request: exponential, capped, with jitter.
function Client:_backoff(n)
   local d = math_min(self.backoff_cap, self.backoff_base * 2 ^ (n - 1))
   return d * (0.5 + 0.5 * self.random())
end

local function encode_params(params)
   if params == nil or next(params) == nil then return "{}" end
   local body, err = cjson.encode(params)
   if not body then error("bitrix24.client: parameters cannot be encoded as JSON: " .. tostring(err), 3) end
   return body
end

-- A job is one HTTP exchange: { method, body, idempotent } and, once run, env | err.
local function new_job(method, body, idempotent)
   return { method = method, body = body, idempotent = idempotent, attempt = 0, not_before = 0 }
end

-- Remembers when a method's operating window resets (from a `time` of a response).
function Client:_note_time(method, time)
   if type(time) ~= "table" then return end
   if tonumber(time.operating_reset_at) then
      self.operating_reset[string_lower(method)] = tonumber(time.operating_reset_at)
   end
   -- the portal's clock against ours: reset times are the portal's unix seconds
   if tonumber(time.finish) and not self.clock_set then self.wall_offset = tonumber(time.finish) - self.now() end
end

-- The portal's unix time as well as we know it.
function Client:wall()
   if self.clock_set or not self.wall_offset then return self.clock() end
   return self.now() + self.wall_offset
end

-- The seconds until a method may run again after OPERATION_TIME_LIMIT, or nil when too long.
function Client:_operating_delay(method, body)
   local reset = tonumber(type(body) == "table" and (body.operating_reset_at or
      type(body.time) == "table" and body.time.operating_reset_at)) or self.operating_reset[string_lower(method)]
   local wait = self.operating_wait
   if reset then wait = reset - self:wall() end
   if wait < 0.05 then wait = 0.05 end
   return wait
end

-- Classifies a transport outcome: true (done: job.env or job.err) or false, delay (retry).
function Client:_settle(job, res, msg, kind, sent)
   local err, delay, retry
   local where = { method = job.method, url = self.masked_url .. job.method }
   if not res then
      err = Error.new{ code = kind or "transport", description = self.mask(msg), method = job.method,
                       url = where.url }
      if kind == "too_large" or kind == "tls" then
         err.retryable = false
      elseif sent == false or kind == "connect" or kind == "dns" then
         err.retryable = true                       -- nothing reached the server
         retry = job.attempt < self.connect_attempts -- but a portal that is down stays down a while
      else
         err.ambiguous = true                       -- the portal may have run it
         err.retryable = job.idempotent
         retry = job.idempotent
      end
   else
      local body = cjson.decode(res.body or "")
      local status = res.status
      if type(body) == "table" and body.error ~= nil and body.error ~= cjson.null then
         local code = tostring(body.error)
         local upper = string_upper(code)
         err = Error.new{ code = code, description = self.mask(body.error_description), status = status,
                          method = job.method, url = where.url, argument = body.argument }
         if upper == "QUERY_LIMIT_EXCEEDED" then
            if self.bucket then self.bucket:fill() end
            err.retryable, retry = true, true
         elseif upper == "OPERATION_TIME_LIMIT" then
            err.retryable = true
            local wait = self:_operating_delay(job.method, body)
            if wait <= self.max_wait then retry, delay = true, wait end
         elseif upper == "OVERLOAD_LIMIT" then
            err.retryable = true                     -- a portal-wide block: the caller decides
         elseif status >= 500 then
            err.ambiguous = true
            err.retryable = job.idempotent
            retry = job.idempotent
         end
      elseif status >= 200 and status < 300 and type(body) == "table" then
         body.result, body.total, body.next = integral(body.result), integral(body.total), integral(body.next)
         job.env = body
         self:_note_time(job.method, body.time)
         return true
      else
         err = Error.new{ code = "HTTP_" .. tostring(status), status = status, method = job.method, url = where.url,
                          description = type(body) == "table" and "unexpected response" or "the response is not JSON" }
         if status >= 500 then
            err.ambiguous = true
            err.retryable = job.idempotent
            retry = job.idempotent
         end
      end
   end
   err.attempts = job.attempt
   job.err = err
   if retry and job.attempt < self.attempts then
      return false, delay or self:_backoff(job.attempt)
   end
   return true
end

function Client:_http_request(job)
   local headers = { ["Content-Type"] = "application/json", ["Accept"] = "application/json" }
   return { url = self.url .. job.method, method = "POST", headers = headers, body = job.body,
            fresh = not job.idempotent }
end

-- Runs jobs (HTTP exchanges) to completion: concurrently through request_many when the transport
-- has it, within the bucket, at most `parallel` at a time, retrying as _settle decides.
function Client:_run(jobs)
   local pending = {}
   for i, job in ipairs(jobs) do pending[i] = job end
   local transport = self.transport
   while #pending > 0 do
      local t = self.now()
      local ready, earliest = {}, math_huge
      for _, job in ipairs(pending) do
         if job.not_before <= t then
            if #ready < self.parallel then ready[#ready + 1] = job end
         elseif job.not_before < earliest then
            earliest = job.not_before
         end
      end
      local wait = 0
      if #ready == 0 then
         wait = earliest - t
      elseif self.bucket then
         local k
         k, wait = self.bucket:take(#ready)
         for i = #ready, k + 1, -1 do ready[i] = nil end
      end
      if #ready == 0 then
         self.sleep(math_max(wait, 0.001))
      else
         local outcomes = {}
         if #ready > 1 and transport.request_many then
            local reqs = {}
            for i, job in ipairs(ready) do reqs[i] = self:_http_request(job) end
            local got = transport:request_many(reqs)
            for i = 1, #ready do
               local r = got[i]
               if type(r) == "table" and r.status ~= nil then
                  outcomes[i] = { r }
               else
                  r = type(r) == "table" and r or {}
                  outcomes[i] = { nil, r.error or "transport failure", r.kind, r.sent }
               end
            end
         else
            for i, job in ipairs(ready) do
               local res, msg, kind, sent = transport:request(self:_http_request(job))
               outcomes[i] = { res, msg, kind, sent }
            end
         end
         local done = {}
         for i, job in ipairs(ready) do
            job.attempt = job.attempt + 1
            job.env, job.err = nil, nil
            self.stats.requests = self.stats.requests + 1
            local o = outcomes[i]
            local finished, delay = self:_settle(job, o[1], o[2], o[3], o[4])
            if finished then
               done[job] = true
            else
               self.stats.retries = self.stats.retries + 1
               job.not_before = self.now() + delay
               self:_log("warn", "bitrix24: retrying", { method = job.method, error = job.err.code,
                  attempt = job.attempt, delay = string_format("%.2f", delay) })
            end
         end
         local keep = {}
         for _, job in ipairs(pending) do
            if not done[job] then keep[#keep + 1] = job end
         end
         pending = keep
      end
   end
end

local function check_method(method, level)
   if type(method) ~= "string" or method == "" or string_find(method, "[%s?#/]") then
      error("bitrix24.client: a method name expected", level + 1)
   end
end

local function check_params(params, level)
   if params ~= nil and type(params) ~= "table" then
      error("bitrix24.client: parameters must be a table", level + 1)
   end
end

function Client:_with_auth(params)
   if not self.auth then return params end
   local p = {}
   for k, v in pairs(params or {}) do p[k] = v end
   p.auth = self.auth
   return p
end

-- client:request(method, params, opts) → the whole envelope {result, total, next, time} | nil, err.
-- opts.safe = true lets a write be sent again after an ambiguous failure.
function Client:request(method, params, opts)
   check_method(method, 2)
   check_params(params, 2)
   opts = opts or {}
   local job = new_job(method, encode_params(self:_with_auth(params)), opts.safe or is_read(method))
   self:_run({ job })
   if job.env then return job.env end
   return nil, job.err
end

-- client:call(method, params, opts) → result | nil, err
function Client:call(method, params, opts)
   check_method(method, 2)
   check_params(params, 2)
   local env, err = self:request(method, params, opts)
   if not env then return nil, err end
   return env.result
end

-- Batches --------------------------------------------------------------------------------------

local function natural_key(s)
   return (string_gsub(s, "%d+", function(d) return string.rep("0", 20 - #d) .. d end))
end

-- The labels of a map of commands in an order where each referenced label runs first.
local function label_order(cmds, refs)
   local labels = {}
   for label in pairs(cmds) do labels[#labels + 1] = label end
   table_sort(labels, function(a, b) return natural_key(a) < natural_key(b) end)
   local done, order = {}, {}
   local function visit(label, depth)
      if done[label] or depth > #labels then return end
      done[label] = true
      for dep in pairs(refs[label]) do
         if cmds[dep] ~= nil and dep ~= label then visit(dep, depth + 1) end
      end
      order[#order + 1] = label
   end
   for _, label in ipairs(labels) do visit(label, 0) end
   return order
end

-- Collects the labels referenced by $result[…]/$next[…]/$total[…] in the string values of v.
local function collect_refs(v, into)
   if type(v) == "table" then
      for _, item in pairs(v) do collect_refs(item, into) end
   elseif type(v) == "string" and string_find(v, "$", 1, true) then
      for _, label in string.gmatch(v, "%$(%a+)%[([^%]]*)%]") do into[label] = true end
   end
   return into
end

local function command_of(spec, level)
   local method, params
   if type(spec) == "table" then
      method, params = spec[1] or spec.method, spec[2] or spec.params
   end
   check_method(method, level + 1)
   check_params(params, level + 1)
   return method, params
end

-- Prepares one batch: { order = {labels…}, methods = {label → method}, body, idempotent }.
function Client:_prepare_batch(cmds, opts, level)
   if type(cmds) ~= "table" then error("bitrix24.client: batch expects a table of commands", level + 1) end
   local order, methods, queries = {}, {}, {}
   local idempotent = true
   local is_list = cmds[1] ~= nil
   if is_list then
      for i, spec in ipairs(cmds) do
         local label = "c" .. (i - 1)
         order[i] = label
         methods[label], queries[label] = command_of(spec, level + 1)
      end
   else
      local refs = {}
      for label, spec in pairs(cmds) do
         if type(label) ~= "string" or label == "" or string_find(label, "[%[%]%s&=?]") then
            error("bitrix24.client: batch labels must be non-empty strings without brackets", level + 1)
         end
         methods[label], queries[label] = command_of(spec, level + 1)
         refs[label] = collect_refs(queries[label], {})
      end
      order = label_order(methods, refs)
   end
   if #order == 0 then error("bitrix24.client: an empty batch", level + 1) end
   if #order > BATCH_MAX then
      error("bitrix24.client: a batch holds at most 50 commands (use call_many)", level + 1)
   end
   local parts = {}
   for i, label in ipairs(order) do
      local method, params = methods[label], queries[label]
      if not is_read(method) then idempotent = false end
      local q = (params and next(params) ~= nil) and core.form_encode(params) or ""
      local cmd = q ~= "" and (method .. "?" .. q) or method
      parts[i] = cjson.encode(label) .. ":" .. cjson.encode(cmd)
   end
   local head = '{"halt":' .. ((opts and opts.halt) and "1" or "0")
   if self.auth then head = head .. ',"auth":' .. cjson.encode(self.auth) end
   local body = head .. ',"cmd":{' .. table_concat(parts, ",") .. "}}"
   return { order = order, methods = methods, list = is_list, body = body,
            idempotent = (opts and opts.safe) or idempotent }
end

local function section_value(sec, label)
   if type(sec) ~= "table" then return nil end
   local v = sec[label]
   if v == nil and sec[1] ~= nil and string_match(label, "^%d+$") then v = sec[tonumber(label) + 1] end
   if v == cjson.null then v = nil end
   return v
end

local SUB_RETRYABLE = { QUERY_LIMIT_EXCEEDED = true, OPERATION_TIME_LIMIT = true }

-- Splits a batch envelope into per-label results, errors and meta ({total, next, time}).
function Client:_split_batch(prep, env)
   local r = type(env.result) == "table" and env.result or {}
   local results, errors, meta, failed = {}, {}, {}, false
   local halted_at
   for i, label in ipairs(prep.order) do
      local key = prep.list and i or label
      local method = prep.methods[label]
      local time = section_value(r.result_time, label)
      self:_note_time(method, time)
      meta[key] = { total = integral(section_value(r.result_total, label)),
                    next = integral(section_value(r.result_next, label)),
                    time = time }
      local e = section_value(r.result_error, label)
      local has_result = type(r.result) == "table" and (r.result[label] ~= nil or
         (r.result[1] ~= nil and string_match(label, "^%d+$") and r.result[tonumber(label) + 1] ~= nil))
      if e ~= nil then
         local code = type(e) == "table" and tostring(e.error or "") or tostring(e)
         local err = Error.new{ code = code, method = method, label = label,
            description = self.mask(type(e) == "table" and e.error_description or nil),
            retryable = SUB_RETRYABLE[string_upper(code)] or (string_upper(code) == "INTERNAL_SERVER_ERROR" and is_read(method)) or false }
         errors[key] = err
         failed = true
         halted_at = halted_at or label
      elseif has_result then
         local v = integral(section_value(r.result, label))
         results[key] = v == nil and cjson.null or v
      else
         errors[key] = Error.new{ code = "NOT_RUN", method = method, label = label,
            description = halted_at and ("not run: the batch halted at " .. halted_at) or "no result" }
         failed = true
      end
   end
   return results, failed and errors or nil, meta
end

-- client:batch(cmds, opts) → results, errors (nil when every command succeeded), meta | nil, err.
-- cmds: a map label → {method, params} (the labels are kept and may be referenced as
-- $result[label][…]) or a list of {method, params} (labels c0, c1, …; results by position).
-- opts.halt stops at the first failing command; opts.safe marks writes safe to resend.
function Client:batch(cmds, opts)
   local prep = self:_prepare_batch(cmds, opts, 2)
   local job = new_job("batch", prep.body, prep.idempotent)
   self:_run({ job })
   if not job.env then return nil, job.err end
   return self:_split_batch(prep, job.env)
end

-- client:call_many(calls, opts) → results, errors: any number of {method, params} packed 50 a
-- batch, sent up to `parallel` at once; results[i] / errors[i] in the caller's order (errors is
-- nil when all succeeded). A batch that failed as a whole gives its error to each of its calls.
function Client:call_many(calls, opts)
   if type(calls) ~= "table" then error("bitrix24.client: call_many expects a list of {method, params}", 2) end
   local n = #calls
   local preps, jobs = {}, {}
   for first = 1, n, BATCH_MAX do
      local chunk = {}
      for i = first, math_min(n, first + BATCH_MAX - 1) do chunk[#chunk + 1] = calls[i] end
      local prep = self:_prepare_batch(chunk, opts, 2)
      prep.first = first
      preps[#preps + 1] = prep
      jobs[#jobs + 1] = new_job("batch", prep.body, prep.idempotent)
   end
   self:_run(jobs)
   local results, errors = { n = n }, {}
   local failed = false
   for b, prep in ipairs(preps) do
      local job = jobs[b]
      if job.env then
         local res, errs = self:_split_batch(prep, job.env)
         for i = 1, #prep.order do
            local v = res[i]
            if v == cjson.null then v = nil end
            results[prep.first + i - 1] = v
            if errs and errs[i] then errors[prep.first + i - 1] = errs[i]; failed = true end
         end
      else
         for i = 1, #prep.order do errors[prep.first + i - 1] = job.err end
         failed = true
      end
   end
   return results, failed and errors or nil
end

-- Exports --------------------------------------------------------------------------------------

local function copy(t)
   local out = {}
   if type(t) == "table" then for k, v in pairs(t) do out[k] = v end end
   return out
end

local function id_of(row, field)
   if type(row) ~= "table" then return nil end
   return tonumber(row[field])
end

local function rows_of(result, wrapper)
   if wrapper then result = type(result) == "table" and result[wrapper] or nil end
   if type(result) ~= "table" then return {} end
   return result
end

-- How the caller's order and filter admit the keyset scan: "any" (no order: ranges may run in
-- parallel), "asc" (ID ascending: one chain, rows in order) or nil (offset paging).
local function keyset_mode(params, shape)
   local order = params.order
   if order == nil or (type(order) == "table" and next(order) == nil) then return "any" end
   if type(order) ~= "table" then return nil end
   local only, dir
   for k, v in pairs(order) do
      if only then return nil end
      only, dir = k, v
   end
   if type(only) == "string" and string_upper(only) == string_upper(shape.key) and
      type(dir) == "string" and string_upper(dir) == "ASC" then
      return "asc"
   end
   return nil
end

-- Takes the caller's ID bounds out of a filter: filter without them, lo (exclusive), hi (inclusive).
local function split_bounds(filter, key)
   local out, lo, hi = {}, nil, nil
   local ukey = string_upper(key)
   for k, v in pairs(filter) do
      local op, name = nil, nil
      if type(k) == "string" then op, name = string_match(k, "^([<>]=?)(.*)$") end
      local n = tonumber(v)
      if op and string_upper(name) == ukey and n then
         if op == ">" then lo = math_max(lo or -math_huge, math_floor(n))
         elseif op == ">=" then lo = math_max(lo or -math_huge, math_ceil(n) - 1)
         elseif op == "<" then hi = math_min(hi or math_huge, math_ceil(n) - 1)
         else hi = math_min(hi or math_huge, math_floor(n)) end
      else
         out[k] = v
      end
   end
   return out, lo, hi
end

local function with_id_select(select, id)
   if type(select) ~= "table" or #select == 0 then return select end
   for _, name in ipairs(select) do
      if name == "*" or (type(name) == "string" and string_upper(name) == string_upper(id)) then return select end
   end
   local out = copy(select)
   out[#out + 1] = id
   return out
end

local function fmt_id(n)
   return string_format("%d", n)
end

-- A keyset scan: chains over ID ranges (lo, hi], each advancing by batches of sub-calls that
-- reference the previous sub-call's 50th row.
local Keyset = {}
Keyset.__index = Keyset

function Keyset:params(lo, hi, ref, desc)
   local p = copy(self.base)
   local f = copy(self.filter)
   local key = self.shape.key
   if ref then f[">" .. key] = ref elseif lo then f[">" .. key] = fmt_id(lo) end
   if hi then f["<=" .. key] = fmt_id(hi) end
   p.filter = next(f) and f or nil
   p.order = { [key] = desc and "DESC" or "ASC" }
   p.start = -1
   if desc then p.select = { self.shape.id } end
   return p
end

-- The batch commands advancing chain c by n sub-calls.
function Keyset:commands(c, n)
   local cmds = {}
   local wrap = self.shape.wrapper and ("[" .. self.shape.wrapper .. "]") or ""
   for i = 1, n do
      local ref
      if i > 1 then ref = "$result[c" .. (i - 2) .. "]" .. wrap .. "[" .. (PAGE - 1) .. "][" .. self.shape.id .. "]" end
      cmds[i] = { self.method, self:params(c.lo, c.hi, ref) }
   end
   return cmds
end

-- Takes a chain's batch results: appends new rows to out, advances c.lo, marks c.done.
function Keyset:absorb(c, n, results, errors, out)
   for i = 1, n do
      if errors and errors[i] then
         c.err = errors[i]
         return
      end
      local rows = rows_of(results[i], self.shape.wrapper)
      for _, row in ipairs(rows) do
         local id = id_of(row, self.shape.id)
         if id and (not c.lo or id > c.lo) and (not c.hi or id <= c.hi) then
            out[#out + 1] = row
            c.lo = id
         end
      end
      if #rows < PAGE then c.done = true; return end
   end
   if c.hi and c.lo and c.lo >= c.hi then c.done = true end
end

-- Sub-calls for the next batch of a chain: as many as the range should still hold.
function Keyset:width(c)
   if not c.hi or not c.lo or not self.density then return BATCH_MAX end
   local expect = (c.hi - c.lo) * self.density
   return math_max(1, math_min(BATCH_MAX, math_ceil(expect / PAGE)))
end

-- The first request: the first page (real rows) and the highest id, in one batch.
function Keyset:probe(out)
   local client = self.client
   local cmds = { { self.method, self:params(self.lo, self.hi) } }
   if self.mode == "any" then cmds[2] = { self.method, self:params(self.lo, self.hi, nil, true) } end
   local prep = client:_prepare_batch(cmds, nil, 1)
   local job = new_job("batch", prep.body, true)
   client:_run({ job })
   if not job.env then return nil, job.err end
   local results, errors = client:_split_batch(prep, job.env)
   if errors and errors[1] then return nil, errors[1] end
   local first = { lo = self.lo, hi = self.hi }
   self:absorb(first, 1, results, nil, out)
   if first.done or self.mode == "asc" then
      first.done = first.done or false
      self.chains = first.done and {} or { { lo = first.lo, hi = self.hi } }
      return true
   end
   local top = rows_of(results[2], self.shape.wrapper)[1]
   local hi = id_of(top, self.shape.id)
   if errors and errors[2] or not hi then
      self.chains = { { lo = first.lo, hi = self.hi } }
      return true
   end
   if self.hi then hi = math_min(hi, self.hi) end
   local lo = first.lo
   local low = id_of(out[1], self.shape.id) or lo
   self.density = math_min(1, (PAGE - 1) / math_max(1, lo - low))
   local expect = (hi - lo) * self.density
   self.estimate = #out + expect
   local k = math_max(1, math_min(self.parallel, math_ceil(expect / (PAGE * BATCH_MAX))))
   self.chains = {}
   if hi <= lo then return true end
   local step = (hi - lo) / k
   local from = lo
   for i = 1, k do
      local to = (i == k) and hi or math_floor(lo + step * i)
      if to > from then self.chains[#self.chains + 1] = { lo = from, hi = to } end
      from = to
   end
   return true
end

-- One round: a batch per unfinished chain, run at once. Appends rows to out; false when done.
function Keyset:round(out)
   if not self.chains then return self:probe(out) end
   local active = {}
   for _, c in ipairs(self.chains) do
      if not c.done then active[#active + 1] = c end
   end
   if #active == 0 then return false end
   local client = self.client
   local jobs, preps = {}, {}
   for i, c in ipairs(active) do
      c.n = self:width(c)
      preps[i] = client:_prepare_batch(self:commands(c, c.n), nil, 1)
      jobs[i] = new_job("batch", preps[i].body, true)
   end
   client:_run(jobs)
   for i, c in ipairs(active) do
      local job = jobs[i]
      if not job.env then return nil, job.err end
      local results, errors = client:_split_batch(preps[i], job.env)
      c.err = nil
      self:absorb(c, c.n, results, errors, out)
      if c.err then
         c.failures = (c.failures or 0) + 1
         if not c.err.retryable or c.failures >= client.attempts then return nil, c.err end
         self.pause = math_max(self.pause or 0, client:_backoff(c.failures))
      else
         c.failures = 0
      end
   end
   if self.pause then client.sleep(self.pause); self.pause = nil end
   return true
end

-- Offset paging for orders the keyset scan cannot follow: the first page gives the total, the
-- rest go as batches of 50 offsets, several at once; rows come in the caller's order.
local Offset = {}
Offset.__index = Offset

function Offset:round(out)
   local client = self.client
   if not self.total then
      local p = copy(self.base)
      p.start = 0
      local env, err = client:request(self.method, p)
      if not env then return nil, err end
      for _, row in ipairs(rows_of(env.result, self.shape.wrapper)) do out[#out + 1] = row end
      self.total = tonumber(env.total) or #out
      self.estimate = self.total
      self.next = tonumber(env.next)
      return true
   end
   if not self.next or self.next >= self.total then return false end
   local offsets = {}
   local span = PAGE * BATCH_MAX * self.parallel
   for o = self.next, math_min(self.total, self.next + span) - 1, PAGE do offsets[#offsets + 1] = o end
   local pages, failures = {}, 0
   local todo = offsets
   while #todo > 0 do
      local preps, jobs = {}, {}
      for first = 1, #todo, BATCH_MAX do
         local cmds = {}
         for i = first, math_min(#todo, first + BATCH_MAX - 1) do
            local p = copy(self.base)
            p.start = todo[i]
            cmds[#cmds + 1] = { self.method, p }
         end
         local prep = client:_prepare_batch(cmds, nil, 1)
         prep.first = first
         preps[#preps + 1] = prep
         jobs[#jobs + 1] = new_job("batch", prep.body, true)
      end
      client:_run(jobs)
      local again = {}
      for b, prep in ipairs(preps) do
         local job = jobs[b]
         if not job.env then return nil, job.err end
         local results, errors = client:_split_batch(prep, job.env)
         for i = 1, #prep.order do
            local o = todo[prep.first + i - 1]
            if errors and errors[i] then
               if not errors[i].retryable then return nil, errors[i] end
               again[#again + 1] = o
               self.last_err = errors[i]
            else
               pages[o] = rows_of(results[i], self.shape.wrapper)
            end
         end
      end
      if #again > 0 then
         failures = failures + 1
         if failures >= client.attempts then return nil, self.last_err end
         client.sleep(client:_backoff(failures))
      end
      todo = again
   end
   for _, o in ipairs(offsets) do
      for _, row in ipairs(pages[o]) do out[#out + 1] = row end
   end
   self.next = offsets[#offsets] + PAGE
   return true
end

-- The scanner for a list method: keyset when the order allows, offset paging otherwise.
function Client:_scanner(method, params, opts)
   check_method(method, 3)
   check_params(params, 3)
   opts = opts or {}
   params = params or {}
   local shape = LIST_SHAPES[string_lower(method)] or {}
   shape = { wrapper = opts.wrapper or shape.wrapper, id = opts.id or shape.id or "ID",
             key = opts.key or opts.id or shape.key or "ID" }
   local base = copy(params)
   base.start = nil
   local mode = opts.keyset ~= false and keyset_mode(params, shape) or nil
   local parallel = opts.parallel or self.parallel
   if mode then
      base.order = nil
      local filter, lo, hi = split_bounds(type(params.filter) == "table" and params.filter or {}, shape.key)
      base.filter = nil
      base.select = with_id_select(params.select, shape.id)
      return setmetatable({ client = self, method = method, shape = shape, base = base, filter = filter,
                            lo = lo, hi = hi, mode = mode, parallel = parallel }, Keyset)
   end
   return setmetatable({ client = self, method = method, shape = shape, base = base,
                         parallel = parallel }, Offset)
end

-- client:list(method, params, opts) → an iterator over the rows, fetched as they are needed:
--   for row, err in b24:list("crm.lead.list", { select = { "ID", "TITLE" } }) do
--      if not row then error(err) end …
--   end
-- A failure ends the loop with (false, err). Without an order, the keyset scan splits the ID
-- range and rows come in no particular order; with order = { ID = "ASC" } they come sorted.
-- opts: parallel, keyset = false (force offset paging), id/key/wrapper (for other list
-- methods), on_progress(rows, estimate) after each round.
function Client:list(method, params, opts)
   local scan = self:_scanner(method, params, opts)
   local progress = opts and opts.on_progress
   local buf, pos, n, count, finished = {}, 1, 0, 0, false
   return function()
      while pos > n do
         if finished then return nil end
         buf, pos = {}, 1
         local more, err = scan:round(buf)
         n = #buf
         if more == nil then
            finished = true
            return false, err
         end
         if not more then finished = true end
         count = count + n
         if progress then progress(count, scan.estimate) end
      end
      local row = buf[pos]
      buf[pos] = nil
      pos = pos + 1
      return row
   end
end

-- client:all(method, params, opts) → every row | nil, err
function Client:all(method, params, opts)
   local out = {}
   for row, err in self:list(method, params, opts) do
      if not row then return nil, err end
      out[#out + 1] = row
   end
   return out
end

return _M
