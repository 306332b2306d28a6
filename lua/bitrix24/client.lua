-- bitrix24.client: the REST client of incoming webhooks (protocol.md §1–§5): calls, batches and
-- the limits around them (a leaky bucket mirroring the portal's, retries that never repeat a
-- write after an ambiguous failure, the operating limit). list/all are bitrix24.export's engine,
-- reached through client:_runner(); the transport is given (bitrix24.client picks the default).
-- Some 700 lines in one piece: calls and batches share the run loop (run), the classifier of
-- outcomes (settle, redirects included) and the operating limit's clock, none of which should be
-- visible outside this file. Batch commands blocked by the operating limit are sent again here
-- too (run_batches), so batch, call_many and the export's batches all wait a block out the same
-- way. What needs no client is elsewhere: bitrix24.commands (reads, batch labels and
-- references), bitrix24.bucket (the leaky bucket), bitrix24.webhook, bitrix24.hints.
--   local b24 = require("bitrix24").client("https://portal.bitrix24.ru/rest/1/CODE/")
--   local id, err = b24:call("crm.lead.add", { fields = { NAME = "Ivan" } })
local core = require "bitrix24.core"
local Error = require "bitrix24.error"
local webhook = require "bitrix24.webhook"
local hints = require "bitrix24.hints"
local export = require "bitrix24.export"
local commands = require "bitrix24.commands"
local bucket = require "bitrix24.bucket"
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
local string_match = string.match
local table_concat = table.concat
local table_remove = table.remove
local string_sub = string.sub
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

local is_read = commands.is_read
_M.is_read = is_read

-- Client ---------------------------------------------------------------------------------------

-- new(opts) → client (bitrix24.client(url | opts) fills in the default transport). opts: url
-- (the webhook prefix …/rest/USER/CODE/), transport (a table with request; see docs/api.md
-- "Transports"), limit ("standard", "enterprise", false, {capacity, drain}), retries (attempts
-- per request, 8), connect_retries (attempts while the portal cannot be reached, 3), backoff
-- ({base, cap} seconds), max_wait (all the OPERATION_TIME_LIMIT waits of a request, 660 s), operating_wait
-- (the wait when the reset time is unknown, 10 s), parallel (requests at once in exports and
-- call_many, 8), log (function(level, msg, fields); by default the writer a host installed with
-- bitrix24.log.use, else none), auth (an OAuth access token, masked too; url is then an
-- application's endpoint https://PORTAL/rest/), refresh (with auth: function(stale_token) → a
-- fresh token | nil, err, called on expired_token; bitrix24.app gives one that refreshes
-- single-flight), auth_connector (with auth: sent with every call, so the application's own
-- writes queue no offline events for it), clock (a function giving unix seconds, os.time by
-- default), random. Raises on misuse.
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
   if opts.auth ~= nil and (type(opts.auth) ~= "string" or opts.auth == "") then
      error("bitrix24.client: bad option 'auth' (an access token string expected)", 2)
   end
   if opts.refresh ~= nil and (type(opts.refresh) ~= "function" or not opts.auth) then
      error("bitrix24.client: bad option 'refresh' (a function, with auth, expected)", 2)
   end
   if opts.auth_connector ~= nil and (type(opts.auth_connector) ~= "string" or not opts.auth) then
      error("bitrix24.client: bad option 'auth_connector' (a string, with auth, expected)", 2)
   end
   local code = hook.code
   local now = transport.now or core.now
   local limit = bucket.check_limit(opts.limit, "bitrix24.client: ", 2)
   local backoff = opts.backoff or {}
   return setmetatable({
      url = url,
      hook = hook,
      masked_url = hook.masked,
      code = code,
      tokens = { opts.auth },
      mask = Error.masker({ code, opts.auth }),
      transport = transport,
      now = now,
      sleep = transport.sleep or core.sleep,
      clock = opts.clock or os_time,
      clock_set = opts.clock ~= nil,
      bucket = limit and bucket.new(limit.capacity, limit.drain, now) or nil,
      attempts = opts.retries or 8,
      connect_attempts = opts.connect_retries or 3,
      backoff_base = backoff.base or 0.5,
      backoff_cap = backoff.cap or 30,
      -- a block lasts until the window's oldest basket leaves it: up to the 600-second window
      -- (and the portal's rounding up to a second), then maybe the next 60-second basket
      max_wait = opts.max_wait or 660,
      operating_wait = opts.operating_wait or 10,
      parallel = opts.parallel or 8,
      log = opts.log or log_module.quiet,
      auth = opts.auth,
      refresh = opts.refresh,
      auth_connector = opts.auth_connector,
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

-- Parameters as the JSON body of a request. Raises at `level` (as check_params does) when they
-- cannot reach the portal as they are: a NaN or an infinity, a function or another value JSON has
-- no form for, a table with both string and integer keys, a string that is not UTF-8. The
-- message names the field (fields[NAME]) and the error points at the caller's line.
local function encode_params(params, level)
   if params == nil or next(params) == nil then return "{}" end
   local ok, body = pcall(json_encode, params, ENCODE)
   if ok then return body end
   local what, path = string_match(tostring(body), "^cannot JSON%-encode (.-) at (.+)$")
   local msg = what and ("parameter " .. path .. " cannot be sent: it is " .. what)
      or ("the parameters cannot be sent: " .. tostring(body))
   error("bitrix24.client: " .. msg, level + 1)
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

-- A job is one HTTP exchange: { method, body, idempotent } and, once run, env | err. waited:
-- the seconds spent waiting out OPERATION_TIME_LIMIT for it; blocked: the attempts that met it.
local function new_job(method, body, idempotent)
   return { method = method, body = body, idempotent = idempotent, attempt = 0, not_before = 0,
            waited = 0, blocked = 0 }
end

-- Remembers when a method's operating window resets (from a `time` of a response, or of a batch
-- command: result_time). Only a whole answer's time sets the clock: a command finished before it.
local function note_time(self, method, time, command)
   if type(time) ~= "table" then return end
   local reset = tonumber(time.operating_reset_at)
   if reset then
      -- the oldest basket's expiry only moves forward: an answer that arrives late tells less
      local key = string_lower(method)
      self.operating_reset[key] = math_max(self.operating_reset[key] or reset, reset)
   end
   -- the portal's clock against ours: reset times are the portal's unix seconds. Each answer
   -- finished before it reached us, so the portal's clock is at least that far ahead: the
   -- largest offset is the best (answers of concurrent requests arrive in any order)
   if not command and tonumber(time.finish) and not self.clock_set then
      local offset = tonumber(time.finish) - self.now()
      if not self.wall_offset or offset > self.wall_offset then self.wall_offset = offset end
   end
end

-- The portal's unix time as well as we know it.
function _M.wall(self)
   if self.clock_set or not self.wall_offset then return self.clock() end
   return self.now() + self.wall_offset
end

-- The seconds until a method may run again after OPERATION_TIME_LIMIT: until its
-- operating_reset_at (from the error body, else remembered from earlier answers), or
-- operating_wait when that is unknown or already past (the window's next basket still holds more
-- than the limit, and a blocked answer carries no time to tell when it leaves).
local function operating_delay(self, method, body)
   local reset = tonumber(type(body) == "table" and (body.operating_reset_at or
      type(body.time) == "table" and body.time.operating_reset_at)) or self.operating_reset[string_lower(method)]
   local wait = reset and reset - self:wall()
   if not wait or wait <= 0 then wait = self.operating_wait end
   if wait < 0.05 then wait = 0.05 end
   return wait
end

-- The portal may have run the job: only an idempotent one is tried again.
local function ambiguous(err, job)
   err.ambiguous = true
   err.retryable = job.idempotent
   return job.idempotent
end

-- The most redirects one request follows (a portal that redirects in a circle ends here).
local MAX_REDIRECTS = 5

-- A 3xx: follows it when webhook.redirect allows (the request was not executed, so sending it
-- again, a write too, is safe): the client's base moves there for every later request; else an
-- error naming the new location, masked. true when the job is to be sent again.
local function redirected(self, job, res, url)
   local location = type(res.headers) == "table" and res.headers.location or nil
   local base, why = webhook.redirect(self.hook, location)
   job.redirects = (job.redirects or 0) + 1
   if base and job.redirects > MAX_REDIRECTS then
      base, why = nil, "the portal redirected " .. MAX_REDIRECTS .. " times: not followed further"
   end
   if not base then
      return false, Error.new{ code = "REDIRECT", status = res.status, method = job.method, url = url,
                               description = self.mask(why), retryable = false }
   end
   if base ~= self.url then
      local hook = assert(webhook.parse(base))
      log(self, "warn", "bitrix24: the portal moved; following it", { method = job.method,
         from = self.masked_url, to = hook.masked, status = res.status })
      self.url, self.hook, self.masked_url = base, hook, hook.masked
   end
   return true
end

-- A fresh access token after `stale` expired: the client's own when another request already
-- renewed it, else the refresh option's (the new token joins the masked secrets) | nil, err.
local function renewed(self, stale)
   if self.auth ~= stale then return self.auth end
   local ok, token, err = pcall(self.refresh, stale)
   if not ok or type(token) ~= "string" or token == "" then
      if ok and Error.is(err) then return nil, err end
      return nil, Error.new{ code = "refresh_failed", retryable = false,
         description = self.mask(ok and (err and tostring(err) or "the refresh gave no token") or token) }
   end
   local tokens = self.tokens -- the latest few: an old one may still be in a message under way
   tokens[#tokens + 1] = token
   if #tokens > 4 then table_remove(tokens, 1) end
   local secrets = { token }
   for i = 1, #tokens do secrets[#secrets + 1] = tokens[i] end
   if self.code then secrets[#secrets + 1] = self.code end
   self.mask = Error.masker(secrets)
   self.auth = token
   log(self, "info", "bitrix24: access token renewed", {})
   return token
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
   elseif res.status >= 300 and res.status < 400 then
      local follow
      follow, err = redirected(self, job, res, url)
      -- not an attempt: the portal did not run it
      if follow then job.attempt = job.attempt - 1; return false, 0 end
   else
      local body = decode_body(res.body or "")
      local status = res.status
      if type(body) == "table" and body.error ~= nil and body.error ~= null then
         local code = tostring(body.error)
         local upper = string_upper(code)
         err = Error.new{ code = code, description = self.mask(body.error_description), status = status,
                          method = job.method, url = url, argument = body.argument }
         if upper == "EXPIRED_TOKEN" and self.refresh and (job.refreshes or 0) < 2 then
            -- an application's access token expired: a fresh one (or the one another request
            -- already got), then the same request again at once; not an attempt
            local token, rerr = renewed(self, job.token)
            if token then
               job.refreshes = (job.refreshes or 0) + 1
               job.attempt = job.attempt - 1
               return false, 0
            end
            rerr.method, rerr.url = rerr.method or job.method, rerr.url or url
            err = rerr
         elseif hints.terminal(upper) then
            -- no retry now cures these (PORTAL_DELETED, a wrong webhook, a missing scope, …):
            -- the error says what to do (err.hint). A portal-wide OVERLOAD_LIMIT lifts after
            -- minutes: not retried here, but marked retryable for the caller who can wait
            err.retryable = upper == "OVERLOAD_LIMIT"
         elseif upper == "QUERY_LIMIT_EXCEEDED" then
            if self.bucket then self.bucket:fill() end
            err.retryable, retry = true, true
         elseif upper == "OPERATION_TIME_LIMIT" then
            -- nothing ran: waited out, up to max_wait in all, without counting as an attempt
            err.retryable = true
            local wait = operating_delay(self, job.method, body)
            if job.waited + wait <= self.max_wait then
               retry, delay = true, wait
               job.waited, job.blocked = job.waited + wait, job.blocked + 1
            end
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
   if retry and job.attempt - job.blocked < self.attempts then
      return false, delay or backoff(self, job.attempt)
   end
   return true
end

-- The request of a job. An access token goes into the JSON body as it is sent (auth first; the
-- body of a job never holds it), so a job sent again after a refresh carries the fresh token.
local function http_request(self, job)
   local headers = { ["Content-Type"] = "application/json", ["Accept"] = "application/json" }
   local body = job.body
   job.token = self.auth
   if self.auth and string_sub(body, 1, 1) == "{" then
      local auth = '"auth":' .. json_encode(self.auth)
      if self.auth_connector then auth = auth .. ',"auth_connector":' .. json_encode(self.auth_connector) end
      body = body == "{}" and ("{" .. auth .. "}") or ("{" .. auth .. "," .. string_sub(body, 2))
   end
   return { url = self.url .. job.method, method = "POST", headers = headers, body = body,
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
               job.not_before = self.now() + delay
               if job.err then
                  self.stats.retries = self.stats.retries + 1
                  log(self, "warn", "bitrix24: retrying", { method = job.method, error = job.err.code,
                     attempt = job.attempt, delay = string_format("%.2f", delay) })
               else -- followed a redirect, or renewed the token: the portal ran nothing
                  log(self, "debug", "bitrix24: sending again", { method = job.method })
               end
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

-- request and call: the envelope | nil, err; a misuse raised at `level` (the public caller).
local function request(self, method, params, opts, level)
   check_method(method, level + 1)
   check_params(params, level + 1)
   opts = opts or {}
   local job = new_job(method, encode_params(params, level + 1), opts.safe or is_read(method))
   run(self, { job })
   if job.env then return job.env end
   return nil, job.err
end

-- client:request(method, params, opts) → the whole envelope {result, total, next, time} | nil, err.
-- opts.safe = true lets a write be sent again after an ambiguous failure.
function _M.request(self, method, params, opts)
   local env, err = request(self, method, params, opts, 2)
   return env, err
end

-- client:call(method, params, opts) → result | nil, err
function _M.call(self, method, params, opts)
   local env, err = request(self, method, params, opts, 2)
   if not env then return nil, err end
   return env.result
end

-- Batches --------------------------------------------------------------------------------------

local label_order = commands.label_order
local collect_refs = commands.collect_refs
local section_value = commands.section_value
local plan_resend = commands.plan_resend
local resolve_refs = commands.resolve_refs
local cdata_digits = commands.cdata_digits
local LUAJIT = commands.LUAJIT

local function command_of(spec, level, trusted)
   local method, params
   if type(spec) == "table" then
      method, params = spec[1] or spec.method, spec[2] or spec.params
   end
   check_method(method, level + 1)
   check_params(params, level + 1)
   if not trusted then encode_params(params, level + 1) end -- refuses what cannot be sent
   return method, params
end

-- Prepares one batch: { order = {labels…}, methods and params by label, list, halt, safe }.
local function prepare_batch(cmds, opts, level)
   if type(cmds) ~= "table" then error("bitrix24.client: batch expects a table of commands", level + 1) end
   local order, methods, params = {}, {}, {}
   local is_list = cmds[1] ~= nil
   if is_list then
      for i, spec in ipairs(cmds) do
         local label = "c" .. (i - 1)
         order[i] = label
         methods[label], params[label] = command_of(spec, level + 1, opts and opts.trusted)
      end
   else
      local refs = {}
      for label, spec in pairs(cmds) do
         if type(label) ~= "string" or label == "" or string_find(label, "[%[%]%s&=?]") then
            error("bitrix24.client: batch labels must be non-empty strings without brackets", level + 1)
         end
         methods[label], params[label] = command_of(spec, level + 1, opts and opts.trusted)
         refs[label] = collect_refs(params[label], {})
      end
      order = label_order(methods, refs)
   end
   if #order == 0 then error("bitrix24.client: an empty batch", level + 1) end
   if #order > BATCH_MAX then
      error("bitrix24.client: a batch holds at most 50 commands (use call_many)", level + 1)
   end
   return { order = order, methods = methods, params = params, list = is_list,
            halt = opts and opts.halt, safe = opts and opts.safe }
end

-- The job sending the commands `order` of a batch with their params (label → params).
local function batch_job(_, prep, order, params)
   local parts = {}
   local idempotent = true
   for i, label in ipairs(order) do
      local method, p = prep.methods[label], params[label]
      if not is_read(method) then idempotent = false end
      if LUAJIT and p then p = cdata_digits(p) end
      local q = (p and next(p) ~= nil) and core.form_encode(p) or ""
      parts[i] = json_encode(label) .. ":" .. json_encode(q ~= "" and (method .. "?" .. q) or method)
   end
   local head = '{"halt":' .. (prep.halt and "1" or "0")
   local job = new_job("batch", head .. ',"cmd":{' .. table_concat(parts, ",") .. "}}", prep.safe or idempotent)
   job.order, job.sends = order, 1
   return job
end

local SUB_RETRYABLE = { QUERY_LIMIT_EXCEEDED = true, OPERATION_TIME_LIMIT = true }

-- Reads a batch answer into st, by label: result, error (a bitrix24.Error), total, next, time.
-- Returns the labels blocked by OPERATION_TIME_LIMIT and the label of the first error.
local function absorb_answer(self, prep, job, st)
   local r = type(job.env.result) == "table" and job.env.result or {}
   local blocked, halted_at = {}, nil
   for _, label in ipairs(job.order) do
      local method = prep.methods[label]
      local time = section_value(r.result_time, label)
      note_time(self, method, time, true)
      st.total[label], st.next[label], st.time[label] =
         section_value(r.result_total, label), section_value(r.result_next, label), time
      st.result[label], st.error[label] = nil, nil
      local e = section_value(r.result_error, label)
      local has_result = type(r.result) == "table" and (r.result[label] ~= nil or
         (r.result[1] ~= nil and string_match(label, "^%d+$") and r.result[tonumber(label) + 1] ~= nil))
      if e ~= nil then
         local code = type(e) == "table" and tostring(e.error or "") or tostring(e)
         local upper = string_upper(code)
         st.error[label] = Error.new{ code = code, method = method, label = label,
            description = self.mask(type(e) == "table" and e.error_description or nil),
            retryable = SUB_RETRYABLE[upper] or (upper == "INTERNAL_SERVER_ERROR" and is_read(method)) or false }
         if upper == "OPERATION_TIME_LIMIT" then blocked[#blocked + 1] = label end
         halted_at = halted_at or label
      elseif has_result then
         local v = section_value(r.result, label)
         st.result[label] = v == nil and null or v
      else
         st.error[label] = Error.new{ code = "NOT_RUN", method = method, label = label,
            description = halted_at and ("not run: the batch halted at " .. halted_at) or "no result" }
      end
   end
   return blocked, halted_at
end

-- After an answer with blocked commands: the job sending them again once their methods' blocks
-- have lifted, or nil when the waits for this batch would pass max_wait.
local function resend_blocked(self, prep, job, st, blocked, halted_at)
   local wait, method = 0, nil
   for _, label in ipairs(blocked) do
      local d = operating_delay(self, prep.methods[label])
      if d > wait then wait, method = d, prep.methods[label] end
   end
   if job.waited + wait > self.max_wait then return nil end
   local labels, set = plan_resend(prep, job, st, blocked, halted_at)
   if #labels == 0 then return nil end
   local params = {}
   for _, label in ipairs(labels) do params[label] = resolve_refs(prep.params[label], st, set) end
   local again = batch_job(self, prep, labels, params)
   again.index, again.sends, again.waited = job.index, job.sends + 1, job.waited + wait
   again.not_before = self.now() + wait
   self.stats.retries = self.stats.retries + 1
   log(self, "warn", "bitrix24: retrying", { method = method, error = "OPERATION_TIME_LIMIT",
      attempt = job.sends, delay = string_format("%.2f", wait), commands = #labels })
   return again
end

-- Sends each command table of list as one batch, all at once within the limiter: outcomes[i] =
-- { results, errors, meta } (by label, or by position for a list of commands), or { err } when
-- the batch failed whole. The portal neither blocks nor bills `batch` itself; a command of a
-- blocked method gets OPERATION_TIME_LIMIT in result_error and did not run. Such commands are
-- sent again, in a batch of their own, once their method's operating_reset_at has passed (known
-- from the `time` of earlier answers, result_time included, else operating_wait later), while
-- the waits for the batch stay within max_wait in all; the other commands' answers are kept.
local function run_batches(self, list, opts, level)
   local preps, states, round = {}, {}, {}
   for i, cmds in ipairs(list) do
      preps[i] = prepare_batch(cmds, opts, level + 1)
      states[i] = { result = {}, error = {}, total = {}, next = {}, time = {} }
      round[i] = batch_job(self, preps[i], preps[i].order, preps[i].params)
      round[i].index = i
   end
   local whole = {}
   while #round > 0 do
      run(self, round)
      local again = {}
      for _, job in ipairs(round) do
         local i = job.index
         local prep, st = preps[i], states[i]
         if job.env then
            local blocked, halted_at = absorb_answer(self, prep, job, st)
            if #blocked > 0 then again[#again + 1] = resend_blocked(self, prep, job, st, blocked, halted_at) end
         elseif job.sends == 1 then
            whole[i] = job.err
         else
            -- the sending again failed whole: its commands get its error, the others keep theirs
            for _, label in ipairs(job.order) do st.result[label], st.error[label] = nil, job.err end
         end
      end
      round = again
   end
   local outcomes = {}
   for i, prep in ipairs(preps) do
      if whole[i] then
         outcomes[i] = { err = whole[i] }
      else
         local st = states[i]
         local results, errors, meta, failed = {}, {}, {}, false
         for n, label in ipairs(prep.order) do
            local key = prep.list and n or label
            results[key] = st.result[label]
            if st.error[label] then errors[key], failed = st.error[label], true end
            meta[key] = { total = st.total[label], next = st.next[label], time = st.time[label] }
         end
         outcomes[i] = { results = results, errors = failed and errors or nil, meta = meta }
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

-- list methods only read: their batches may be sent again; their parameters were checked by
-- list/all (trusted)
local READS = { safe = true, trusted = true }

-- The client's side of bitrix24.export, its only way in (see export.lua): batches, request,
-- backoff, sleep, attempts and parallel of this client.
function _M._runner(self)
   return {
      batches = function(list) return run_batches(self, list, READS, 1) end,
      request = function(method, params) return self:request(method, params) end,
      backoff = function(n) return backoff(self, n) end,
      sleep = self.sleep,
      now = self.now,
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
   encode_params(params, 2) -- refuses what cannot be sent, before any request
   return export.list(self:_runner(), method, params, opts)
end

-- client:all(method, params, opts) → every row | nil, err
function _M.all(self, method, params, opts)
   check_method(method, 2)
   check_params(params, 2)
   encode_params(params, 2) -- refuses what cannot be sent, before any request
   return export.all(self:_runner(), method, params, opts)
end

-- The default transport outside nginx, for callers of the former client.http_transport.
function _M.http_transport(opts)
   return require("bitrix24.transport.curl").new(opts)
end

return _M
