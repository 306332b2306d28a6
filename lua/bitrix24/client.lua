-- bitrix24.client: the REST client of incoming webhooks (protocol.md §1–§5): calls, batches and
-- the limits around them (a leaky bucket mirroring the portal's, retries that never repeat a
-- write after an ambiguous failure, the operating limit). list/all are bitrix24.export's engine,
-- reached through client:_runner(); the transport is given (bitrix24.client picks the default).
-- One piece of some 680 lines: calls and batches share the run loop (run), the classifier of
-- outcomes (settle) and the limiter, none of which should be visible outside this file.
--   local b24 = require("bitrix24").client("https://portal.bitrix24.ru/rest/1/CODE/")
--   local id, err = b24:call("crm.lead.add", { fields = { NAME = "Ivan" } })
local core = require "bitrix24.core"
local Error = require "bitrix24.error"
local webhook = require "bitrix24.webhook"
local export = require "bitrix24.export"
local log_module = require "bitrix24.log"

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local error = error
local next = next
local string_format = string.format
local string_lower = string.lower
local string_upper = string.upper
local string_find = string.find
local string_sub = string.sub
local string_gsub = string.gsub
local string_gmatch = string.gmatch
local string_match = string.match
local string_rep = string.rep
local table_concat = table.concat
local table_sort = table.sort
local math_floor = math.floor
local math_min = math.min
local math_max = math.max
local math_random = math.random
local math_huge = math.huge
local os_time = os.time

-- JSON is the core's both ways: every digit of a number kept (Lua 5.4 integers and LuaJIT int64
-- cdata exactly, other numbers as the shortest text that reads back the same), and integers of a
-- response stay integers on Lua 5.4. null is json_null (the same value as cjson.null).
local json_encode = core.json_encode
local json_decode = core.json_decode
local null = core.json_null
-- Nested empty tables go out as {} (as lua-cjson wrote them; PHP reads {} and [] alike).
local ENCODE = { empty = "object" }

local BATCH_MAX = 50

local _M = {}
local mt = { __index = _M }

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

local PRESETS = {
   standard = { capacity = 50, drain = 2 },
   enterprise = { capacity = 250, drain = 5 },
}

-- Leaky bucket ---------------------------------------------------------------------------------

local Bucket = {}
local bucket_mt = { __index = Bucket }

local function new_bucket(capacity, drain, now)
   return setmetatable({ capacity = capacity, drain = drain, level = 0, at = now(), now = now }, bucket_mt)
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

-- Client ---------------------------------------------------------------------------------------

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

-- new(opts) → client (bitrix24.client(url | opts) fills in the default transport). opts: url
-- (the webhook prefix …/rest/USER/CODE/), transport (a table with request; see docs/api.md
-- "Transports"), limit ("standard", "enterprise", false, {capacity, drain}), retries (attempts
-- per request, 8), connect_retries (attempts while the portal cannot be reached, 3), backoff
-- ({base, cap} seconds), max_wait (the longest OPERATION_TIME_LIMIT wait, 600 s), operating_wait
-- (the wait when the reset time is unknown, 10 s), parallel (requests at once in exports and
-- call_many, 8), log (function(level, msg, fields); by default the writer a host installed with
-- bitrix24.log.use, else none), auth (an
-- OAuth access token, masked too), clock (a function giving unix seconds, os.time by default),
-- random. Raises on misuse.
function _M.new(opts)
   if type(opts) == "string" then opts = { url = opts } end
   if type(opts) ~= "table" then error("bitrix24.client: a webhook URL or an options table expected", 2) end
   -- every form the portal shows (…/rest/1/CODE, /profile.json, /crm.lead.add) is the base
   -- …/rest/1/CODE/; with an access token an application's endpoint …/rest/ too
   local hook, why = webhook.parse(opts.url, opts.auth ~= nil)
   if not hook then error("bitrix24.client: " .. why, 2) end
   local url = hook.base
   local transport = opts.transport
   if type(transport) ~= "table" or type(transport.request) ~= "function" then
      error("bitrix24.client: bad option 'transport' (a table with request expected)", 2)
   end
   if opts.log ~= nil and type(opts.log) ~= "function" then
      error("bitrix24.client: bad option 'log' (a function(level, msg, fields) expected)", 2)
   end
   local code = hook.code
   local now = transport.now or core.now
   local limit = check_limit(opts.limit)
   local backoff = opts.backoff or {}
   return setmetatable({
      url = url,
      masked_url = hook.masked,
      mask = Error.masker({ code, opts.auth }),
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
      log = opts.log or log_module.quiet,
      auth = opts.auth,
      random = opts.random or math_random,
      operating_reset = {},
      stats = { requests = 0, retries = 0 },
   }, mt)
end

function mt.__tostring(self)
   return "bitrix24.client (" .. self.masked_url .. ")"
end

-- A line on the client's log, every value masked; a raising log is ignored.
local function log(self, level, msg, fields)
   local clean = {}
   for k, v in pairs(fields or {}) do clean[k] = self.mask(v) end
   pcall(self.log, level, self.mask(msg), clean)
end

-- Closes the transport's session when it has close.
function _M.close(self)
   if self.transport.close then self.transport:close() end
end

-- The seconds before retry n (1-based) of a request: exponential, capped, with jitter.
local function backoff(self, n)
   local d = math_min(self.backoff_cap, self.backoff_base * 2 ^ (n - 1))
   return d * (0.5 + 0.5 * self.random())
end

local function encode_params(params)
   if params == nil or next(params) == nil then return "{}" end
   local ok, body = pcall(json_encode, params, ENCODE)
   if not ok then error("bitrix24.client: parameters cannot be encoded as JSON: " .. tostring(body), 3) end
   return body
end

-- A response body as a Lua value, or nil. The transport has already bounded its size
-- (max_response), so the codec's limits are set where no real answer reaches them: a list page or
-- a batch of 50 × 50 rows is well over the codec's defaults of 1 MiB and 10,000 values. Every
-- value takes a byte of text at least; 32 bytes of Lua memory per byte is more than any text
-- takes, so the memory watch stays off.
local function decode_body(text)
   local n = #text
   return json_decode(text, { max_size = n + 1, max_pairs = n + 1, max_depth = 1000,
                              max_memory = 32 * n + 1048576 })
end

-- A job is one HTTP exchange: { method, body, idempotent } and, once run, env | err.
local function new_job(method, body, idempotent)
   return { method = method, body = body, idempotent = idempotent, attempt = 0, not_before = 0 }
end

-- Remembers when a method's operating window resets (from a `time` of a response).
local function note_time(self, method, time)
   if type(time) ~= "table" then return end
   if tonumber(time.operating_reset_at) then
      self.operating_reset[string_lower(method)] = tonumber(time.operating_reset_at)
   end
   -- the portal's clock against ours: reset times are the portal's unix seconds
   if tonumber(time.finish) and not self.clock_set then self.wall_offset = tonumber(time.finish) - self.now() end
end

-- The portal's unix time as well as we know it.
function _M.wall(self)
   if self.clock_set or not self.wall_offset then return self.clock() end
   return self.now() + self.wall_offset
end

-- The seconds until a method may run again after OPERATION_TIME_LIMIT, or nil when too long.
local function operating_delay(self, method, body)
   local reset = tonumber(type(body) == "table" and (body.operating_reset_at or
      type(body.time) == "table" and body.time.operating_reset_at)) or self.operating_reset[string_lower(method)]
   local wait = self.operating_wait
   if reset then wait = reset - self:wall() end
   if wait < 0.05 then wait = 0.05 end
   return wait
end

-- The portal may have run the job: only an idempotent one is tried again.
local function ambiguous(err, job)
   err.ambiguous = true
   err.retryable = job.idempotent
   return job.idempotent
end

-- Classifies a transport outcome: true (done: job.env or job.err) or false, delay (retry).
local function settle(self, job, res, msg, kind, sent)
   local err, delay, retry
   local url = self.masked_url .. job.method
   if not res then
      err = Error.new{ code = kind or "transport", description = self.mask(msg), method = job.method, url = url }
      if kind == "too_large" or kind == "tls" then
         err.retryable = false
      elseif sent == false or kind == "connect" or kind == "dns" then
         err.retryable = true                       -- nothing reached the server
         retry = job.attempt < self.connect_attempts -- but a portal that is down stays down a while
      else
         retry = ambiguous(err, job)                -- a timeout after sending, a reset, …
      end
   else
      local body = decode_body(res.body or "")
      local status = res.status
      if type(body) == "table" and body.error ~= nil and body.error ~= null then
         local code = tostring(body.error)
         local upper = string_upper(code)
         err = Error.new{ code = code, description = self.mask(body.error_description), status = status,
                          method = job.method, url = url, argument = body.argument }
         if upper == "QUERY_LIMIT_EXCEEDED" then
            if self.bucket then self.bucket:fill() end
            err.retryable, retry = true, true
         elseif upper == "OPERATION_TIME_LIMIT" then
            err.retryable = true
            local wait = operating_delay(self, job.method, body)
            if wait <= self.max_wait then retry, delay = true, wait end
         elseif upper == "OVERLOAD_LIMIT" then
            err.retryable = true                     -- a portal-wide block: the caller decides
         elseif status >= 500 then
            retry = ambiguous(err, job)
         end
      elseif status >= 200 and status < 300 and type(body) == "table" then
         job.env = body
         note_time(self, job.method, body.time)
         return true
      else
         err = Error.new{ code = "HTTP_" .. tostring(status), status = status, method = job.method, url = url,
                          description = type(body) == "table" and "unexpected response" or "the response is not JSON" }
         if status >= 500 then retry = ambiguous(err, job) end
      end
   end
   err.attempts = job.attempt
   job.err = err
   if retry and job.attempt < self.attempts then
      return false, delay or backoff(self, job.attempt)
   end
   return true
end

local function http_request(self, job)
   local headers = { ["Content-Type"] = "application/json", ["Accept"] = "application/json" }
   return { url = self.url .. job.method, method = "POST", headers = headers, body = job.body,
            fresh = not job.idempotent }
end

-- Runs jobs (HTTP exchanges) to completion: concurrently through request_many when the transport
-- has it, within the bucket, at most `parallel` at a time, retrying as settle decides.
local function run(self, jobs)
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
            for i, job in ipairs(ready) do reqs[i] = http_request(self, job) end
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
               local res, msg, kind, sent = transport:request(http_request(self, job))
               outcomes[i] = { res, msg, kind, sent }
            end
         end
         local done = {}
         for i, job in ipairs(ready) do
            job.attempt = job.attempt + 1
            job.env, job.err = nil, nil
            self.stats.requests = self.stats.requests + 1
            local o = outcomes[i]
            local finished, delay = settle(self, job, o[1], o[2], o[3], o[4])
            if finished then
               done[job] = true
            else
               self.stats.retries = self.stats.retries + 1
               job.not_before = self.now() + delay
               log(self, "warn", "bitrix24: retrying", { method = job.method, error = job.err.code,
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

local function with_auth(self, params)
   if not self.auth then return params end
   local p = {}
   for k, v in pairs(params or {}) do p[k] = v end
   p.auth = self.auth
   return p
end

-- client:request(method, params, opts) → the whole envelope {result, total, next, time} | nil, err.
-- opts.safe = true lets a write be sent again after an ambiguous failure.
function _M.request(self, method, params, opts)
   check_method(method, 2)
   check_params(params, 2)
   opts = opts or {}
   local job = new_job(method, encode_params(with_auth(self, params)), opts.safe or is_read(method))
   run(self, { job })
   if job.env then return job.env end
   return nil, job.err
end

-- client:call(method, params, opts) → result | nil, err
function _M.call(self, method, params, opts)
   check_method(method, 2)
   check_params(params, 2)
   local env, err = self:request(method, params, opts)
   if not env then return nil, err end
   return env.result
end

-- Batches --------------------------------------------------------------------------------------

local function natural_key(s)
   return (string_gsub(s, "%d+", function(d) return string_rep("0", 20 - #d) .. d end))
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
      for _, label in string_gmatch(v, "%$(%a+)%[([^%]]*)%]") do into[label] = true end
   end
   return into
end

-- LuaJIT's int64_t and uint64_t cdata (123LL) in a command's parameters as their digits, copying
-- only the tables that hold one: form_encode writes every value as text but takes no cdata.
local LUAJIT = type(rawget(_G, "jit")) == "table"
local function cdata_digits(v, depth)
   if type(v) == "cdata" then
      return string_match(tostring(v), "^(%-?%d+)U?LL$") or v -- other cdata: form_encode refuses it
   end
   if type(v) ~= "table" or depth > 100 then return v end -- past 100 form_encode refuses the nesting
   local copy
   for k, item in pairs(v) do
      local got = cdata_digits(item, depth + 1)
      if got ~= item then
         if not copy then
            copy = {}
            for k2, item2 in pairs(v) do copy[k2] = item2 end
         end
         copy[k] = got
      end
   end
   return copy or v
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
local function prepare_batch(self, cmds, opts, level)
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
      if LUAJIT and params then params = cdata_digits(params, 0) end
      local q = (params and next(params) ~= nil) and core.form_encode(params) or ""
      local cmd = q ~= "" and (method .. "?" .. q) or method
      parts[i] = json_encode(label) .. ":" .. json_encode(cmd)
   end
   local head = '{"halt":' .. ((opts and opts.halt) and "1" or "0")
   if self.auth then head = head .. ',"auth":' .. json_encode(self.auth) end
   local body = head .. ',"cmd":{' .. table_concat(parts, ",") .. "}}"
   return { order = order, methods = methods, list = is_list, body = body,
            idempotent = (opts and opts.safe) or idempotent }
end

local function section_value(sec, label)
   if type(sec) ~= "table" then return nil end
   local v = sec[label]
   if v == nil and sec[1] ~= nil and string_match(label, "^%d+$") then v = sec[tonumber(label) + 1] end
   if v == null then v = nil end
   return v
end

local SUB_RETRYABLE = { QUERY_LIMIT_EXCEEDED = true, OPERATION_TIME_LIMIT = true }

-- Splits a batch envelope into per-label results, errors and meta ({total, next, time}).
local function split_batch(self, prep, env)
   local r = type(env.result) == "table" and env.result or {}
   local results, errors, meta, failed = {}, {}, {}, false
   local halted_at
   for i, label in ipairs(prep.order) do
      local key = prep.list and i or label
      local method = prep.methods[label]
      local time = section_value(r.result_time, label)
      note_time(self, method, time)
      meta[key] = { total = section_value(r.result_total, label),
                    next = section_value(r.result_next, label),
                    time = time }
      local e = section_value(r.result_error, label)
      local has_result = type(r.result) == "table" and (r.result[label] ~= nil or
         (r.result[1] ~= nil and string_match(label, "^%d+$") and r.result[tonumber(label) + 1] ~= nil))
      if e ~= nil then
         local code = type(e) == "table" and tostring(e.error or "") or tostring(e)
         local upper = string_upper(code)
         local err = Error.new{ code = code, method = method, label = label,
            description = self.mask(type(e) == "table" and e.error_description or nil),
            retryable = SUB_RETRYABLE[upper] or (upper == "INTERNAL_SERVER_ERROR" and is_read(method)) or false }
         errors[key] = err
         failed = true
         halted_at = halted_at or label
      elseif has_result then
         local v = section_value(r.result, label)
         results[key] = v == nil and null or v
      else
         errors[key] = Error.new{ code = "NOT_RUN", method = method, label = label,
            description = halted_at and ("not run: the batch halted at " .. halted_at) or "no result" }
         failed = true
      end
   end
   return results, failed and errors or nil, meta
end

-- Sends each command table of list as one batch, all at once within the limiter: outcomes[i] =
-- { results, errors, meta } as split_batch gives them, or { err } when the batch failed whole.
local function run_batches(self, list, opts, level)
   local preps, jobs = {}, {}
   for i, cmds in ipairs(list) do
      preps[i] = prepare_batch(self, cmds, opts, level + 1)
      jobs[i] = new_job("batch", preps[i].body, preps[i].idempotent)
   end
   run(self, jobs)
   local outcomes = {}
   for i, job in ipairs(jobs) do
      if job.env then
         local results, errors, meta = split_batch(self, preps[i], job.env)
         outcomes[i] = { results = results, errors = errors, meta = meta }
      else
         outcomes[i] = { err = job.err }
      end
   end
   return outcomes
end

-- client:batch(cmds, opts) → results, errors (nil when every command succeeded), meta | nil, err.
-- cmds: a map label → {method, params} (the labels are kept and may be referenced as
-- $result[label][…]) or a list of {method, params} (labels c0, c1, …; results by position).
-- opts.halt stops at the first failing command; opts.safe marks writes safe to resend.
function _M.batch(self, cmds, opts)
   local got = run_batches(self, { cmds }, opts, 2)[1]
   if got.err then return nil, got.err end
   return got.results, got.errors, got.meta
end

-- client:call_many(calls, opts) → results, errors: any number of {method, params} packed 50 a
-- batch, sent up to `parallel` at once; results[i] / errors[i] in the caller's order (errors is
-- nil when all succeeded). A batch that failed as a whole gives its error to each of its calls.
function _M.call_many(self, calls, opts)
   if type(calls) ~= "table" then error("bitrix24.client: call_many expects a list of {method, params}", 2) end
   local n = #calls
   local chunks = {}
   for first = 1, n, BATCH_MAX do
      local chunk = {}
      for i = first, math_min(n, first + BATCH_MAX - 1) do chunk[#chunk + 1] = calls[i] end
      chunks[#chunks + 1] = chunk
   end
   local results, errors, failed = { n = n }, {}, false
   for b, got in ipairs(run_batches(self, chunks, opts, 2)) do
      local first = (b - 1) * BATCH_MAX
      for i = 1, #chunks[b] do
         local v = got.results and got.results[i]
         if v == null then v = nil end
         results[first + i] = v
         local err = got.err or (got.errors and got.errors[i])
         if err then errors[first + i], failed = err, true end
      end
   end
   return results, failed and errors or nil
end

-- Exports --------------------------------------------------------------------------------------

local READS = { safe = true } -- list methods only read: their batches may be sent again

-- The client's side of bitrix24.export, its only way in (see export.lua): batches, request,
-- backoff, sleep, attempts and parallel of this client.
function _M._runner(self)
   return {
      batches = function(list) return run_batches(self, list, READS, 1) end,
      request = function(method, params) return self:request(method, params) end,
      backoff = function(n) return backoff(self, n) end,
      sleep = self.sleep,
      attempts = self.attempts,
      parallel = self.parallel,
   }
end

-- client:list(method, params, opts) → an iterator over the rows, fetched as they are needed:
--   for row, err in b24:list("crm.lead.list", { select = { "ID", "TITLE" } }) do
--      if not row then error(err) end …
--   end
-- A failure ends the loop with (false, err). Without an order, the keyset scan splits the ID
-- range and rows come in no particular order; with order = { ID = "ASC" } they come sorted.
-- opts: parallel, keyset = false (force offset paging), id/key/wrapper (for other list
-- methods), on_progress(rows, estimate) after each round.
function _M.list(self, method, params, opts)
   check_method(method, 2)
   check_params(params, 2)
   return export.list(self:_runner(), method, params, opts)
end

-- client:all(method, params, opts) → every row | nil, err
function _M.all(self, method, params, opts)
   check_method(method, 2)
   check_params(params, 2)
   return export.all(self:_runner(), method, params, opts)
end

-- The default transport outside nginx, for callers of the former client.http_transport.
function _M.http_transport(opts)
   return require("bitrix24.transport.curl").new(opts)
end

return _M
