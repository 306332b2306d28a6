-- bitrix24.router: receives Bitrix24 outgoing-webhook deliveries. accept verifies and parses one
-- (the fast part, in the request path), dispatch runs the handlers of a stored delivery (in a
-- worker, maybe after a restart), handle does both with in-memory deduplication; handle_ngx
-- does it inside nginx (bitrix24.ngx). Failures are bitrix24.Error values: a refused request's
-- verdict carries one (verdict.err), as does dispatch's nil, err.
local core = require "bitrix24.core"
local event_module = require "bitrix24.event"
local Error = require "bitrix24.error"
local log_module = require "bitrix24.log"
local events_module = require "bitrix24.events"

local type = type
local error = error
local pairs = pairs
local pcall = pcall
local xpcall = xpcall
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local require = require
local string_lower = string.lower
local string_upper = string.upper
local string_sub = string.sub
local string_find = string.find
local string_match = string.match
local string_gmatch = string.gmatch
local table_concat = table.concat
local math_abs = math.abs
local math_floor = math.floor
local math_huge = math.huge
local os_time = os.time
local traceback = debug.traceback
local equal = core.equal
local sha256 = core.sha256
local hmac_sha256 = core.hmac_sha256
local base64_decode = core.base64_decode
local auth_of = event_module.auth_of
local name_of = event_module.name_of

local _M = {}
local mt = { __index = _M }

local SIGNATURE_HEADER = "X-Bitrix-Signature"
local STANDARD_WEBHOOKS_TOLERANCE = 300
local DEDUP_TTL = 86400
local DEDUP_MAX = 100000
local MAX_BODY = 1048576
-- below ngx_lua's default lua_max_running_timers (256): past that nginx drops a timer with
-- only an alert in its log, which would lose an event already answered 200
local MAX_RUNNING = 200
local JSON_TYPE = "application/json"
-- The largest body accept decodes whole before checking its token (a delivery is 1-4 KiB): a
-- stranger's body that size costs its table, at most 16x it (docs/api.md), before the 401.
local WHOLE_FIRST_MAX = 16384

local OK_BODY = '{"success":true}'
local DUPLICATE_BODY = '{"success":true,"duplicate":true}'
local HANDLER_FAILED_BODY = '{"error":"handler failed"}'

local function json_headers()
   return { ["Content-Type"] = JSON_TYPE }
end

-- The verdict refusing a request for err (a bitrix24.Error with status): that status, and
-- {"error": err.description} as the body. Hosts answering for the router use it too.
function _M.refusal(err)
   local ok, body = pcall(core.json_encode, { error = err.description }, { empty = "object" })
   if not ok then body = '{"error":"refused"}' end -- a description json_encode refuses (not UTF-8)
   return { status = err.status, headers = json_headers(), body = body, err = err }
end

local function refuse(status, code, description)
   return _M.refusal(Error.new{ code = code, status = status, description = description })
end

-- The verdict for a duplicate delivery: 200 {"success":true,"duplicate":true}.
function _M.duplicate()
   return { status = 200, headers = json_headers(), body = DUPLICATE_BODY }
end

-- A request header by its lower-case name; hosts other than b24 may keep the sender's case.
local function header(headers, name)
   if type(headers) ~= "table" then return nil end
   local value = headers[name]
   if value == nil then
      for k, v in pairs(headers) do
         if type(k) == "string" and string_lower(k) == name then
            value = v
            break
         end
      end
   end
   if type(value) == "table" then value = value[1] end -- ngx.req.get_headers gives repeats as a list
   if type(value) ~= "string" then return nil end
   return value
end

-- Constant-time comparison of two strings of any lengths: their digests are compared, so the
-- time does not tell the length of the expected value either.
local function same_secret(expected_digest, got)
   return equal(expected_digest, sha256(got, "raw"))
end

local function check_string(opts, name)
   local v = opts[name]
   if v ~= nil and (type(v) ~= "string" or v == "") then
      error("bad option '" .. name .. "' (a non-empty string expected)", 3)
   end
   return v
end

local function check_number(opts, name, default, what)
   local v = opts[name]
   if v == nil then return default end
   if type(v) ~= "number" or v < 0 or v ~= v or v == math_huge then
      error("bad option '" .. name .. "' (" .. (what or "a non-negative number") .. " expected)", 3)
   end
   return v
end

local function check_seconds(opts, name, default)
   return check_number(opts, name, default, "a number of seconds")
end

-- The standard-webhooks key: the base64 after "whsec_" (the prefix is optional).
local function standard_webhooks_key(secret)
   local b64 = string_match(secret, "^whsec_(.+)$") or secret
   local key = base64_decode(b64)
   if key == nil or key == "" then
      error("bad option 'standard_webhooks_secret' (whsec_ followed by base64 expected)", 3)
   end
   return key
end

local memory_store = require("bitrix24.dedup").new
local default_store -- installed by a host (use_store)

-- use_store(factory): routers this Lua state creates from now on without a store option take
-- factory(dedup_max) as theirs (b24 serve installs its process-wide store); nil removes it.
function _M.use_store(factory)
   if factory ~= nil and type(factory) ~= "function" then
      error("bad argument #1 to 'use_store' (a function(dedup_max) expected)", 2)
   end
   default_store = factory
end

-- Creates a router. Options: token | tokens ({ [member_id or domain] = token }), secret +
-- signature_header, standard_webhooks_secret, max_age, insecure, dedup_ttl, dedup_max, key,
-- max_body, limits ({ max_depth, max_pairs }), store (where dedup keys live: an object with
-- begin and finish as the in-memory one has; by default that of use_store, else one per router),
-- shared_dict (handle_ngx: the lua_shared_dict whose store every nginx worker shares, instead
-- of one store per worker), now, client (ctx.client), log (a
-- function(level, msg, fields): ctx.log and the router's own lines; bitrix24.log.default (the
-- host's writer, else stderr), or bitrix24.ngx.log in handle_ngx, when nil), max_running
-- (handle_ngx: at most this many nginx timers running or pending in the worker when an event
-- comes, else 503; 200), reconcile (bitrix24.reconcile: the entity kinds a pass lists and its
-- options; router:reconcile_once() runs a pass, and b24 serve runs them as a job with host = …).
-- Raises on misuse, including no verification unless insecure = true.
function _M.new(opts)
   if opts == nil then opts = {} end
   if type(opts) ~= "table" then error("bad argument #1 to 'router' (table of options expected)", 2) end
   local token = check_string(opts, "token")
   local secret = check_string(opts, "secret")
   local signature_header = check_string(opts, "signature_header") or SIGNATURE_HEADER
   local sw_secret = check_string(opts, "standard_webhooks_secret")
   local tokens, token_of
   if type(opts.tokens) == "function" then
      if token then error("give 'token' or 'tokens', not both", 2) end
      token_of = opts.tokens
   elseif opts.tokens ~= nil then
      if type(opts.tokens) ~= "table" then
         error("bad option 'tokens' (a table of member_id or domain -> token, or a function, expected)", 2)
      end
      if token then error("give 'token' or 'tokens', not both", 2) end
      tokens = {}
      local n = 0
      for portal, t in pairs(opts.tokens) do
         if type(portal) ~= "string" or portal == "" or type(t) ~= "string" or t == "" then
            error("bad option 'tokens' (non-empty string keys and tokens expected)", 2)
         end
         tokens[string_lower(portal)] = sha256(t, "raw")
         n = n + 1
      end
      if n == 0 then error("bad option 'tokens' (no portal in it)", 2) end
   end
   if opts.insecure ~= nil and type(opts.insecure) ~= "boolean" then
      error("bad option 'insecure' (a boolean expected)", 2)
   end
   if opts.install ~= nil and type(opts.install) ~= "function" then
      error("bad option 'install' (a function(event) expected)", 2)
   end
   if not (token or tokens or token_of or secret or sw_secret) and not opts.insecure then
      error("router with no verification: give token, tokens, secret or standard_webhooks_secret"
            .. " (or insecure = true to accept unverified deliveries)", 2)
   end
   if opts.key ~= nil and type(opts.key) ~= "function" then
      error("bad option 'key' (a function expected)", 2)
   end
   if opts.store ~= nil and type(opts.store) ~= "table" and type(opts.store) ~= "userdata" then
      error("bad option 'store' (an object with begin and finish expected)", 2)
   end
   if opts.now ~= nil and type(opts.now) ~= "function" then
      error("bad option 'now' (a function expected)", 2)
   end
   if opts.log ~= nil and type(opts.log) ~= "function" then
      error("bad option 'log' (a function(level, msg, fields) expected)", 2)
   end
   local max_body = check_number(opts, "max_body", MAX_BODY)
   if max_body < 1 or max_body ~= math_floor(max_body) then
      error("bad option 'max_body' (a whole number of bytes from 1 expected)", 2)
   end
   local limits = { max_size = math_floor(max_body) } -- an integer, as form_decode wants
   if opts.limits ~= nil then
      if type(opts.limits) ~= "table" then error("bad option 'limits' (a table expected)", 2) end
      limits.max_depth = opts.limits.max_depth
      limits.max_pairs = opts.limits.max_pairs
   end
   -- form_decode raises on bad limits: let it do so now rather than on the first delivery
   local ok, err = pcall(core.form_decode, "", limits)
   if not ok then error("bad option 'limits' (" .. tostring(err) .. ")", 2) end
   local dedup_max = check_number(opts, "dedup_max", DEDUP_MAX)
   local shared_dict = check_string(opts, "shared_dict")
   local max_running = check_number(opts, "max_running", MAX_RUNNING)
   if max_running < 1 or max_running ~= math_floor(max_running) then
      error("bad option 'max_running' (a whole number from 1 expected)", 2)
   end
   local self = {
      token_digest = token and sha256(token, "raw"),
      tokens = tokens,
      token_of = token_of,
      install = opts.install,
      secret = secret,
      signature_header = string_lower(signature_header),
      signature_header_name = signature_header,
      sw_key = sw_secret and standard_webhooks_key(sw_secret),
      max_age = check_seconds(opts, "max_age", nil),
      dedup_ttl = check_seconds(opts, "dedup_ttl", DEDUP_TTL),
      dedup_max = dedup_max,
      max_running = max_running,
      key_function = opts.key,
      shared_dict = shared_dict,
      max_body = max_body,
      limits = limits,
      now = opts.now or os_time,
      client = opts.client,
      log = opts.log,
      handlers = {},
      store = opts.store or (default_store and default_store(dedup_max)) or memory_store(dedup_max),
   }
   setmetatable(self, mt)
   if opts.reconcile ~= nil then
      -- the raw token (or tokens) goes into synthesized bodies only, never into a log
      self.reconciler = require("bitrix24.reconcile").attach(self, opts.reconcile, opts.token or opts.tokens)
   end
   return self
end

-- One reconciliation pass (bitrix24.reconcile) now: its summary { requests, seconds, entities,
-- counts, failed } | nil, err. Raises when the router has no reconcile option.
function _M.reconcile_once(self)
   if not self.reconciler then error("router:reconcile_once: the router has no 'reconcile' option", 2) end
   return self.reconciler:pass()
end

-- Registers fn(event, ctx) for an event name (case-insensitive), a prefix ending in "*", or "*".
function _M.on(self, pattern, fn)
   if type(pattern) ~= "string" or pattern == "" then
      error("bad argument #1 to 'on' (event name or pattern expected)", 2)
   end
   if type(fn) ~= "function" then error("bad argument #2 to 'on' (function expected)", 2) end
   pattern = string_upper(pattern)
   local star = string_find(pattern, "*", 1, true)
   local entry = { fn = fn, pattern = pattern }
   if star then
      if star ~= #pattern then
         error("bad argument #1 to 'on' ('*' only at the end of a pattern)", 2)
      end
      entry.prefix = string_sub(pattern, 1, -2)
   else
      entry.name = pattern
      if not events_module.known(pattern) and log_module.once("router:on " .. pattern) then
         local near = events_module.nearest(pattern)
         pcall(self.log or log_module.default, "warn",
               "router:on: no Bitrix24 event has this name; its handler runs only for deliveries of it",
               { event = pattern, did_you_mean = near })
      end
   end
   self.handlers[#self.handlers + 1] = entry
   return self
end

local function matches(entry, name)
   if entry.name then return entry.name == name end
   return string_sub(name, 1, #entry.prefix) == entry.prefix
end

-- The hex HMAC-SHA256 check of the raw body; nil when it passes, else the reason.
local function check_hmac(self, headers, raw)
   local got = header(headers, self.signature_header)
   if got == nil or got == "" then
      return "missing signature header " .. self.signature_header_name
   end
   got = string_lower(string_match(got, "^%s*(.-)%s*$"))
   got = string_match(got, "^sha256=(.*)$") or got
   local expected = hmac_sha256(self.secret, raw, "hex")
   if not equal(expected, got) then return "signature does not match the body" end
   return nil
end

-- The Standard Webhooks check (webhook-id, webhook-timestamp, webhook-signature); nil when it
-- passes, else the reason.
local function check_standard_webhooks(self, headers, raw)
   local id = header(headers, "webhook-id")
   local timestamp = header(headers, "webhook-timestamp")
   local signatures = header(headers, "webhook-signature")
   if not id or not timestamp or not signatures then
      return "missing webhook-id, webhook-timestamp or webhook-signature header"
   end
   local ts = string_match(timestamp, "^%s*(%d+)%s*$")
   if not ts or #ts > 15 then return "webhook-timestamp is not a number of seconds" end
   if math_abs(self.now() - tonumber(ts)) > STANDARD_WEBHOOKS_TOLERANCE then
      return "webhook-timestamp is outside the 5-minute tolerance"
   end
   local expected = hmac_sha256(self.sw_key, id .. "." .. ts .. "." .. raw, "raw")
   local matched = false
   -- every v1 signature is compared, so the time does not tell which one matched
   -- (a repeated header reaches us joined with ", ", hence the trailing commas dropped)
   for item in string_gmatch(signatures, "%S+") do
      local value = string_match(item, "^v1,([^,]+),?$")
      local got = value and base64_decode(value)
      if got and equal(expected, got) then matched = true end
   end
   if not matched then return "no webhook-signature matches the body" end
   return nil
end

local function string_or_nil(v)
   if type(v) == "string" then return v end
   return nil
end

-- The application token check of a body's auth fields against token or tokens; nil when it
-- passes, else the reason.
local function check_token(self, auth)
   local expected = self.token_digest
   if self.token_of then
      local member_id, domain = string_or_nil(auth.member_id), string_or_nil(auth.domain)
      local ok, t = pcall(self.token_of, member_id, domain)
      if not ok then return "the token store failed", 503 end
      if type(t) ~= "string" or t == "" then return "unknown portal" end
      expected = sha256(t, "raw")
   elseif self.tokens then
      local member_id, domain = string_or_nil(auth.member_id), string_or_nil(auth.domain)
      expected = (member_id and self.tokens[string_lower(member_id)])
         or (domain and self.tokens[string_lower(domain)])
      if not expected then return "unknown portal" end
   end
   local got = auth.application_token
   if type(got) ~= "string" or got == "" then return "missing application token" end
   if not same_secret(expected, got) then return "wrong application token" end
   return nil
end

local function check_age(self, event)
   local ts = event.ts and string_match(event.ts, "^%d+$")
   if not ts or #ts > 15 then return "missing or malformed ts" end
   local age = self.now() - tonumber(ts)
   if age > self.max_age then return "delivery is older than max_age" end
   if -age > self.max_age then return "delivery ts is in the future" end
   return nil
end

-- Whether an ID names one object, so a key made from it tells deliveries apart.
local function usable_id(id)
   return type(id) == "string" and string_match(id, "^[1-9]%d*$") ~= nil
end

-- The default dedup key: portal|NAME|object, the object being the event's ID (with the smart
-- process's ENTITY_TYPE_ID before it for dynamic items, the task's ID for task comments), and
-- the body's digest for events without a usable ID. No ts: two updates of one object in one
-- second are byte-identical, so what a repeat means is the store's business (work-queue
-- semantics), not the key's.
function _M.default_key(event)
   local portal = event.member_id or event.domain or "-"
   if event_module.kind(event.name) ~= "other" and usable_id(event.id) then
      local object = event.id
      if event.entity_type_id ~= nil then
         if not usable_id(event.entity_type_id) then return "sha256:" .. sha256(event.raw) end
         object = event.entity_type_id .. "|" .. object
      end
      if event.task_id ~= nil then
         if not usable_id(event.task_id) then return "sha256:" .. sha256(event.raw) end
         object = event.task_id .. "|" .. object
      end
      return portal .. "|" .. event.name .. "|" .. object
   end
   return "sha256:" .. sha256(event.raw)
end

local function key_of(self, event)
   if not self.key_function then return _M.default_key(event) end
   local key = self.key_function(event)
   if type(key) ~= "string" or key == "" then
      error("the router's key function returned " .. type(key) .. ", a non-empty string expected", 0)
   end
   return key
end

-- A part of a body: of(whole) from its decoded table when accept has one, else scan(raw, …),
-- which builds that part alone (nil, err as parse fails).
local function from_whole(whole, of, scan, raw, content_type, limits)
   if whole then return of(whole) end
   return scan(raw, content_type, limits)
end

-- The refusal of a body that does not parse (err: event.parse's).
local function unparsable(err)
   if err.code == "too_large" then return refuse(413, "too_large", "request body too large") end
   return refuse(400, err.code, err.description)
end

-- Verifies and parses one request. Returns a verdict table: status, headers, body, and for a
-- status 200 also event, key (the dedup key), kind ("add", "update", "delete", "other") and
-- dedup (what a repeat of the key means: "duplicate" for adds and deletes, "merge" otherwise:
-- merged into a pending delivery of the key, or one more run after a started one), else
-- err (a bitrix24.Error: code, status, and the body's reason as description). Never runs a handler.
function _M.accept(self, request)
   if type(request) ~= "table" then error("bad argument #1 to 'accept' (request table expected)", 2) end
   local method = request.method
   if type(method) ~= "string" or string_upper(method) ~= "POST" then
      local v = refuse(405, "method_not_allowed", "POST expected")
      v.headers.Allow = "POST"
      return v
   end
   local headers = request.headers
   local content_type = header(headers, "content-type")
   if not event_module.content_kind(content_type) then
      return refuse(415, "unsupported",
                    "content type application/x-www-form-urlencoded or application/json expected")
   end
   local raw = request.body
   if raw == nil then raw = "" end
   if type(raw) ~= "string" then error("bad request body (string expected)", 2) end
   if #raw > self.max_body then return refuse(413, "too_large", "request body too large") end
   -- signatures first, over the raw bytes, before anything parses them
   if self.secret then
      local why = check_hmac(self, headers, raw)
      if why then return refuse(401, "unverified", why) end
   end
   if self.sw_key then
      local why = check_standard_webhooks(self, headers, raw)
      if why then return refuse(401, "unverified", why) end
   end
   -- A small body is decoded whole once, before its token: a stranger's costs at most that
   -- (WHOLE_FIRST_MAX bounds it), and the name, the auth fields and the event come from the one
   -- table. A larger one, or one that breaks a limit (whole is then nil), goes the token-first
   -- way: its auth fields alone are built, as the whole parse would build them, so a stranger's
   -- body costs no more than its scan, and a body without the right token is 401 even when its
   -- other fields would be 400, whichever way it went.
   local whole = #raw <= WHOLE_FIRST_MAX and event_module.decode(raw, content_type, self.limits) or nil
   -- an application's install carries no token we know yet: the install option verifies it
   -- (bitrix24.app calls the OAuth server and the portal back) before anything is stored
   local installing = false
   if self.install then
      local name, err = from_whole(whole, name_of, event_module.name, raw, content_type, self.limits)
      if not name then return unparsable(err) end
      installing = name == "ONAPPINSTALL"
   end
   if (self.token_digest or self.tokens or self.token_of) and not installing then
      local auth, err = from_whole(whole, auth_of, event_module.auth, raw, content_type, self.limits)
      if not auth then return unparsable(err) end
      local why, status = check_token(self, auth)
      if why then return refuse(status or 401, status and "unavailable" or "unverified", why) end
   end
   local event, err
   if whole then
      event, err = event_module.new(whole, raw)
   else
      event, err = event_module.parse(raw, content_type, self.limits)
   end
   if not event then return unparsable(err) end
   if installing then
      local ok, done, why = pcall(self.install, event)
      if not ok then return refuse(500, "install_failed", "the install could not be checked") end
      if not done then return refuse(401, "unverified", "install not verified: " .. tostring(why)) end
   end
   if self.max_age then
      local why = check_age(self, event)
      if why then return refuse(401, "unverified", why) end
   end
   local kind = event_module.kind(event.name)
   return {
      status = 200, headers = json_headers(), body = OK_BODY,
      event = event, key = key_of(self, event), kind = kind, dedup = _M.dedup_of(kind),
   }
end

-- The message of an error value, and the traceback of where it was raised.
local function error_with_traceback(e)
   local msg = e
   if type(e) ~= "string" then
      local m = getmetatable(e)
      if m and m.__tostring then
         msg = tostring(e)
      else
         msg = "(error object is a " .. type(e) .. " value)"
      end
   end
   return { message = msg, traceback = traceback(msg, 2) }
end

local function default_ctx(self)
   return { attempt = 1, log = self.log or log_module.default, client = self.client }
end

-- Runs every handler matching the stored delivery's event, in registration order, each under
-- xpcall. stored = { body = raw, headers = { ["content-type"] = … } }, as accept took them; it is
-- parsed again but not verified again. ctx (made when nil) gets the router's client and log when
-- it has none. Returns true, or nil and a bitrix24.Error: code "handler_failed" with every
-- failure and its traceback in the description (the handlers after a failing one still run), or
-- the reason a stored delivery cannot be run. The error's description has each failure's
-- message; its traceback field has them with their tracebacks (a host logs those at debug).
-- On success the second result is the number of handlers the event matched (0: none ran).
function _M.dispatch(self, stored, ctx)
   if type(stored) ~= "table" then error("bad argument #1 to 'dispatch' (stored request expected)", 2) end
   if ctx == nil then
      ctx = default_ctx(self)
   else -- a host passes attempt and log; the REST client is the script's
      if ctx.client == nil then ctx.client = self.client end
      if ctx.log == nil then ctx.log = self.log or log_module.default end
   end
   local raw = stored.body
   if type(raw) ~= "string" then
      return nil, Error.new{ code = "malformed", description = "stored delivery has no body" }
   end
   local event = stored.event
   if event == nil then
      local err
      event, err = event_module.parse(raw, header(stored.headers, "content-type"), self.limits)
      if not event then
         return nil, Error.new{ code = err.code, description = "stored delivery does not parse: " .. err.description }
      end
   end
   local failures, tracebacks
   local matched = 0
   local handlers = self.handlers
   for i = 1, #handlers do
      local entry = handlers[i]
      if matches(entry, event.name) then
         matched = matched + 1
         -- xpcall passes the arguments (Lua 5.2+, LuaJIT): no closure made per handler run
         local ok, err = xpcall(entry.fn, error_with_traceback, event, ctx)
         if not ok then
            local what = "handler " .. i .. " (" .. entry.pattern .. ") for " .. event.name .. " failed: "
            if type(err) ~= "table" then -- a memory error skips the message handler
               err = { message = tostring(err), traceback = tostring(err) }
            end
            failures, tracebacks = failures or {}, tracebacks or {}
            failures[#failures + 1] = what .. err.message
            tracebacks[#tracebacks + 1] = what .. err.traceback
         end
      end
   end
   if failures then
      return nil, Error.new{ code = "handler_failed", description = table_concat(failures, "\n"),
                             traceback = table_concat(tracebacks, "\n") }
   end
   if self.reconciler then
      -- the object's mark: the time of the last delivery handled for it (bitrix24.reconcile); a
      -- mark that fails to be kept only makes a later pass commit the change once more
      local ok, err = pcall(self.reconciler.handled, self.reconciler, event)
      if not ok then pcall(ctx.log, "warn", "bitrix24.reconcile: mark not kept", { error = tostring(err) }) end
   end
   return true, matched
end

_M.memory_store = memory_store

-- What deduplication does with a repeat of a key: "duplicate" for adds and deletes (an object
-- is created and deleted once), "merge" for everything else (merged into a pending run, or one
-- more run after the one going on).
function _M.dedup_of(kind)
   if kind == "add" or kind == "delete" then return "duplicate" end
   return "merge"
end

-- Claims verdict's key (router:accept's) for a run of the handlers, in the router's store.
-- Returns "run" (run them, then router:finish), "duplicate", "merged" or "rerun" (answer at
-- once: the run going on runs once more). A store may block here (b24 serve --sync waits for
-- the run going on, then returns "run").
function _M.begin(self, verdict)
   return self.store:begin(verdict.key, verdict.dedup, self.now(), self.dedup_ttl, verdict.event)
end

-- Ends a run begun with router:begin; true when the handlers must run once more (and the
-- event to run them on, when the store knows a later one).
function _M.finish(self, verdict, ok)
   return self.store:finish(verdict.key, verdict.dedup, ok and true or false, self.now(), self.dedup_ttl)
end

-- The claim of a key with duplicate semantics (the form of begin before merges): true to run.
function _M.claim(self, key)
   return self.store:begin(key, "duplicate", self.now(), self.dedup_ttl) == "run"
end

-- Settles a key claimed with claim: remembered for dedup_ttl when ok, else forgotten.
function _M.settle(self, key, ok)
   self.store:finish(key, "duplicate", ok, self.now(), self.dedup_ttl)
end

local MERGED_BODY = '{"success":true,"merged":true}'

-- The answer body and log message of a delivery not run by itself.
local NOT_RUN = {
   duplicate = { DUPLICATE_BODY, "duplicate delivery" },
   merged = { MERGED_BODY, "delivery merged into a pending run" },
   rerun = { OK_BODY, "delivery arrived while its object's handlers ran: one more run after them" },
}
_M.NOT_RUN = NOT_RUN

-- Logs a delivery that was not run by itself, with its object (never the token).
function _M.log_not_run(log, outcome, event)
   pcall(log, "info", NOT_RUN[outcome][2], { event = event.name, id = event.id, task_id = event.task_id,
                                             entity_type_id = event.entity_type_id })
end

-- Logs a refused request at info: its status and reason (the answer's, never a secret).
function _M.log_refusal(log, verdict)
   local err = verdict.err
   pcall(log, "info", "delivery refused", { status = verdict.status, reason = err and err.description })
end

-- Runs the handlers of an accepted verdict whose key router:begin gave "run", as many times as
-- router:finish asks. Returns true, or nil and the last failure (each failure is logged).
function _M.run_verdict(self, verdict, ctx)
   local event = verdict.event
   local all_ok, last_err = true, nil
   local again, later
   repeat
      local ok, res, err = pcall(self.dispatch, self, { body = event.raw, event = event }, ctx)
      if not (ok and res) then
         all_ok, last_err = false, ok and err or Error.new{ code = "handler_failed", description = tostring(res) }
         pcall(ctx.log, "error", "handler failed", { event = event.name, id = event.id,
                                                     error = last_err.description })
         if last_err.traceback then
            pcall(ctx.log, "debug", "handler failure traceback", { event = event.name, id = event.id,
                                                                   traceback = last_err.traceback })
         end
      elseif err == 0 then
         pcall(ctx.log, "info", "delivery matched no handler", { event = event.name, id = event.id })
      end
      again, later = self:finish(verdict, ok and res)
      if later then event = later end
   until not again
   if all_ok then return true end
   return nil, last_err
end

-- accept, deduplication and dispatch in one call, for hosts without an inbox.
-- Returns status, headers, body.
function _M.handle(self, request)
   local verdict = self:accept(request)
   local ctx = default_ctx(self)
   if verdict.status ~= 200 then
      _M.log_refusal(ctx.log, verdict)
      return verdict.status, verdict.headers, verdict.body
   end
   local outcome = self:begin(verdict)
   if outcome ~= "run" then
      _M.log_not_run(ctx.log, outcome, verdict.event)
      return 200, json_headers(), NOT_RUN[outcome][1]
   end
   -- the verdict's own headers table (made for this delivery) is the answer's
   if not self:run_verdict(verdict, ctx) then return 500, verdict.headers, HANDLER_FAILED_BODY end
   return 200, verdict.headers, OK_BODY
end

-- Inside nginx (content_by_lua*): reads the request (413 over max_body), answers at once, and
-- runs the handlers of an accepted, new event after the response in an ngx.timer, with the
-- in-memory deduplication of handle (bitrix24.ngx.handle). ctx.log is the router's log or
-- bitrix24.ngx.log. Returns the status answered.
function _M.handle_ngx(self)
   return require("bitrix24.ngx").handle(self, { max_body = self.max_body, max_running = self.max_running,
                                                 log = self.log, shared_dict = self.shared_dict })
end

return _M
