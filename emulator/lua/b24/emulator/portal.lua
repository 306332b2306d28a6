-- b24.emulator.portal: one emulated Bitrix24 portal in memory behind incoming-webhook URLs
-- (protocol.md §1–§6). portal:handle(request) answers a request as the portal's REST server does:
-- routing and credentials, the limits, the methods (crm, tasks, user.current and user.admin, batch), simulated
-- time and faults, persistence after a change. Simulated time (latency, row and count costs, slow
-- faults) is returned as a 4th result { delay = seconds }, a reset fault as { close = true }.
local core = require "bitrix24.core"
local bitrix24_log = require "bitrix24.log"
local crm = require "b24.emulator.crm"
local crm_item = require "b24.emulator.crm_item"
local tasks = require "b24.emulator.tasks"
local task_comments = require "b24.emulator.task_comments"
local batch = require "b24.emulator.batch"
local methods = require "b24.emulator.methods"
local events = require "b24.emulator.events"
local oauth = require "b24.emulator.oauth"
local offline = require "b24.emulator.offline"
local faults = require "b24.emulator.faults"
local limits = require "b24.emulator.limits"
local persist = require "b24.emulator.persist"
local request_of = require "b24.emulator.request"
local json = require "b24.emulator.json"
local xml = require "b24.emulator.xml"
local dates = require "b24.emulator.dates"

local type = type
local pcall = pcall
local pairs = pairs
local ipairs = ipairs
local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local string_sub = string.sub
local string_match = string.match
local string_lower = string.lower
local table_concat = table.concat
local os_time = os.time
local equal = core.equal
local now = core.now
local respond = json.respond
local respond_error = json.respond_error

local _M = {}
local mt = { __index = _M }

_M.DEFAULT_CODE = "emu0dev0code0000"

local NOT_FOUND = { status = 404, error = "ERROR_METHOD_NOT_FOUND", error_description = "Method not found!" }
-- rest/classes/general/rest_util.php CRestUtil::checkAuth: no handler of OnRestCheckAuth found
-- credentials (a path without USER/CODE); rest/lib/oauthexception.php makes it a 401.
local NO_AUTH = { status = 401, error = "NO_AUTH_FOUND", error_description = "Wrong authorization data" }
local UNAUTHORIZED = { status = 401, error = "INVALID_CREDENTIALS", error_description = "Invalid request credentials" }
-- rest/classes/general/rest.php CRestServer::processCall: LoadLimiter::is throws this RestException
-- with STATUS_TO_MANY_REQUESTS ("429 Too Many Requests"); an error answer carries no time.
local BLOCKED = { status = 429, error = "OPERATION_TIME_LIMIT",
                  error_description = "Method is blocked due to operation time limit." }
local INTERNAL = { status = 500, error = "INTERNAL_SERVER_ERROR", error_description = "Internal server error" }
local TOO_MANY = { status = 503, error = "QUERY_LIMIT_EXCEEDED", error_description = "Too many requests" }
-- a token on a portal without --app: no application issued it (rest/lib/oauth/auth.php Auth::check
-- asks the OAuth server, which knows no such token)
local INVALID_TOKEN = { status = 401, error = "invalid_token",
                        error_description = "The access token provided is invalid" }
-- the emulator's control methods on a portal without --app
local NO_APP = { status = 400, error = "NO_APPLICATION",
                 error_description = "The emulator has no application (start it with --app CLIENT_ID:SECRET)" }

-- Creates a portal. opts (the snake_case form of the emulator's options): user_id, code,
-- seed_leads, seed_tasks, seed_deals, seed_contacts, seed_companies, timezone ("+03:00": the
-- portal's time zone, as ±HH:MM), enterprise, latency_ms, row_cost_us, count_cost_us, faults (string or
-- table), slow_delay (seconds a slow fault adds), method_latency and method_stall (rules of
-- b24.emulator.faults parse_methods: answers held per method), time_scale (speeds up the clock of the leaky
-- bucket and of the operating window), operating_limit (seconds per method per window),
-- operating_window (the window's seconds on that clock, 600: ten baskets of a tenth),
-- events_to (list of URLs), events (events_to index -> the --events patterns of that target),
-- token, domain, member_id, data (a JSON file to persist to), app ({ client_id, secret }: the
-- installed application, b24.emulator.oauth), app_code, token_ttl, oauth_latency_ms (the OAuth
-- server's answers are held that long, after the tokens are issued), install_to (list of URLs),
-- public_url (the base URL deliveries name; the first request's Host otherwise), oauth_server
-- (the base URL of another emulator that mints and checks the app's tokens; oauth_request, fn(req)
-- → res | nil, err, the HTTP client it is asked with), offline_extended
-- (the feature rest_offline_extended: true by default), offline_retention (seconds an offline
-- row is kept, b24.emulator.offline.RETENTION by default); and the
-- host's services: log (fn(level, msg, fields); stderr by default), post (fn(url, body, headers)
-- -> true | nil, reason; needed for events_to); for specs: clock (scaled seconds), random (a
-- [0,1) function). Raises error(msg, 0) for bad options or an unusable --data file.
function _M.new(opts)
   opts = opts or {}
   local mono0, wall0 = now(), os_time()
   local scale = tonumber(opts.time_scale) or 1
   local clock = opts.clock or function() return (now() - mono0) * scale end
   local wall = function() return wall0 + (now() - mono0) end
   local log = opts.log or bitrix24_log.stderr
   local self = setmetatable({
      user_id = tonumber(opts.user_id) or 1,
      code = opts.code or _M.DEFAULT_CODE,
      latency = (tonumber(opts.latency_ms) or 0) / 1000,
      oauth_latency = (tonumber(opts.oauth_latency_ms) or 0) / 1000,
      row_cost = (tonumber(opts.row_cost_us) or 0) / 1e6,
      count_cost = (tonumber(opts.count_cost_us) or 0) / 1e6,
      slow_delay = tonumber(opts.slow_delay) or 10,
      faults = faults.new(opts.faults, opts.random),
      holds = faults.holds(opts.method_latency, opts.method_stall),
      limits = limits.new{ enterprise = opts.enterprise, operating_limit = tonumber(opts.operating_limit),
                           operating_window = tonumber(opts.operating_window),
                           clock = clock, wall = wall, scale = scale },
      wall = wall,
      timezone = opts.timezone or "+03:00",
      log = log,
      data_path = opts.data,
      stores = {}, methods = {},
      sim = 0, t_wall = 0, t_mono = 0, dirty = false,
   }, mt)
   local dice = self.faults
   self.events = events.new{ urls = opts.events_to, subscriptions = opts.events, token = opts.token,
                             domain = opts.domain, member_id = opts.member_id, post = opts.post, log = log,
                             drop = function() return dice:roll("drop") end,
                             app_auth = function(user_id) return self:app_auth(user_id) end }
   self.public_url = opts.public_url
   if opts.app and opts.oauth_server then
      -- another emulator mints and checks this portal's tokens, as oauth.bitrix.info does for
      -- every cloud portal (b24.emulator.oauth remote)
      local session
      self.app = oauth.remote{ url = opts.oauth_server, client_id = opts.app.client_id, secret = opts.app.secret,
                               code = opts.app_code, log = log, identity = function() return self:identity() end,
                               request = opts.oauth_request or function(req)
                                  session = session or core.http{ timeout = 30, connect_timeout = 5 }
                                  return session:request(req)
                               end }
   elseif opts.app then
      self.app = oauth.new{ client_id = opts.app.client_id, secret = opts.app.secret, code = opts.app_code,
                            ttl = opts.token_ttl, clock = clock, wall = wall, scale = scale }
   end
   if opts.app then
      if opts.install_to and #opts.install_to > 0 then
         if not opts.post then error("--install-to needs a host that posts (b24 emulate, or a post service)", 0) end
         self.pending_installs, self.install_urls = opts.install_to, opts.install_to
      end
   end
   -- the application's offline queue and its bindings, kept with --data (b24.emulator.offline)
   self.offline = offline.new{ retention = opts.offline_retention, wall = wall }
   self.offline.extended = opts.offline_extended ~= false
   self.events.offline = function(name, data, binding) self.offline:raise(self, name, data, binding) end
   self.stores.offline = self.offline
   self.stores.bindings = offline.bindings_store(self.events)
   crm.register(self, self.methods)
   crm_item.register(self, self.methods)
   tasks.register(self, self.methods)
   task_comments.register(self, self.methods)
   methods.register(self, self.methods)
   offline.register(self, self.methods)
   self.methods.batch = batch.run
   local loaded = self.data_path and persist.load(self.data_path, self.stores)
   if not loaded then
      if opts.seed_leads and tonumber(opts.seed_leads) > 0 then crm.seed_leads(self, tonumber(opts.seed_leads)) end
      if opts.seed_tasks and tonumber(opts.seed_tasks) > 0 then tasks.seed(self, tonumber(opts.seed_tasks)) end
      for _, kind in ipairs(crm.SEEDED) do
         local n = tonumber(opts["seed_" .. kind.plural])
         if n and n > 0 then crm.seed(self, kind.entity, n) end
      end
      if self.data_path then
         local ok, err = self:save()
         if not ok then error("cannot write the --data file: " .. err, 0) end
      end
   end
   return self
end

-- Writes the --data file: true | nil, err.
function _M:save()
   local ok, err = persist.save(self.data_path, self.stores)
   if not ok then return nil, err end
   self.dirty = false
   return true
end

-- Called by methods on every add/update/delete: raises the event (sent after the answer, once
-- per request for identical ones), marks the state for saving. extra (optional): further data,
-- the FIELDS of a CRM event ({ ENTITY_TYPE_ID = 128 } for a smart-process item) or a task
-- comment's { TASK_ID = … }.
function _M:changed(event, id, extra)
   self.dirty = true
   local data
   if string_sub(event, 1, 13) == "ONTASKCOMMENT" then
      data = events.comment_data(string_sub(event, 14), id, extra and extra.TASK_ID)
   elseif string_sub(event, 1, 6) == "ONTASK" then
      data = events.task_data(string_sub(event, 7), id)
   else
      data = events.crm_data(id, extra)
   end
   self.events:emit(event, data)
   -- crm/lib/Service/Factory/Dynamic.php configureAddOperation, getUpdateOperation,
   -- getDeleteOperation: an item's change sends the common event and its type's own
   -- (eventmanager.php getItemEventNameWithEntityTypeId: ONCRMDYNAMICITEMADD_128), same data
   local type_id = extra and extra.ENTITY_TYPE_ID
   if type_id and string_match(event, "^ONCRMDYNAMICITEM%u+$") then
      self.events:emit(event .. "_" .. tostring(type_id), data)
   end
end

-- The ISO-8601 date of unix time t (now by default) in the portal's time zone, as portals
-- print it (b24.emulator.dates).
function _M:date(t)
   return dates.format(t or self.wall(), self.timezone)
end

-- The request's timeline: real time since it began plus the simulated seconds so far.
function _M:timeline()
   return self.t_wall + (now() - self.t_mono) + self.sim
end

-- Runs one method: result, meta ({total, next, rows, counted}), time | nil, err [, time]. A
-- blocked method answers BLOCKED without running and without time (rest.php
-- CRestServer::processCall throws before the call). Simulated costs (row_cost per row returned,
-- count_cost per row counted) add to processing and to the request's delay; the processing of a
-- call that returned is billed to the method's operating budget (batch is not billed); a failed
-- call is not (processCall's LoadLimiter::registerEnding follows the callback, which threw).
function _M:call(name, params)
   local fn = self.methods[name]
   local budget = self.limits
   if budget:blocked(name) then return nil, BLOCKED end
   local start = self:timeline()
   local sim0, mono = self.sim, now()
   local ok, result, meta = pcall(fn, self, params)
   local real = now() - mono
   if ok and type(meta) == "table" then
      self.sim = self.sim + (meta.rows or 0) * self.row_cost + (meta.counted or 0) * self.count_cost
   end
   local processing = real + (self.sim - sim0)
   if ok and result ~= nil then budget:bill(name, processing) end
   local operating, reset_at = budget:operating_of(name, self.hit_clock)
   local finish = start + processing
   local time = { start = start, finish = finish, duration = processing, processing = processing,
                  date_start = self:date(start), date_finish = self:date(finish),
                  operating = operating, operating_reset_at = reset_at }
   if not ok then
      self.log("error", "emulator method raised", { method = name, error = tostring(result) })
      return nil, INTERNAL, time
   end
   if result == nil then return nil, meta, time end
   if type(meta) ~= "table" then meta = {} end
   return result, meta, time
end

-- Adds the held time and the fault options to a response: status, headers, body, extra.
local function finish_response(delay, status, headers, body, close)
   local extra
   if delay > 0 then extra = { delay = delay } end
   if close then extra = extra or {}; extra.close = true end
   return status, headers, body, extra
end

-- Answers a request table (method, path, query, headers with lower-case names, body,
-- remote_addr): status, headers, body [, { delay = seconds, close = true }].
function _M:handle(request)
   -- rest/include.php OnBeforeProlog: a preflight under /rest/ gets CRestUtil::sendHeaders and
   -- an empty body, before any routing or credentials
   if request_of.is_preflight(request) then return 200, json.CORS, "" end
   if request_of.wants_xml(request.path) then return xml.answer(self:answer(request)) end
   return self:answer(request)
end

-- handle() before the transport: the JSON answer. The events the request raised leave once it
-- is computed (rest/lib/event/sender.php: Buffer per hit, Sender::send as a background job).
-- The first request served tells the portal its address (unless --public-url) and proves it
-- listens: the --install-to deliveries leave after its answer.
function _M:answer(request)
   if not self.public_url and not self.learned_url then
      local host = (request.headers or {}).host
      if type(host) == "string" and string_match(host, "^[%w%.%-%[%]:]+$") then
         self.learned_url = "http://" .. string_lower(host)
      end
   end
   self.auth_connector = nil
   self.events:begin()
   self.offline:begin()
   local status, headers, body, extra = self:reply(request)
   self.events:flush()
   -- ONOFFLINEEVENT after the hit's offline rows (rest/lib/event/provideroffline.php finalize)
   self.offline:notify(self)
   local installs = self.pending_installs
   if installs then
      self.pending_installs = nil
      for _, url in ipairs(installs) do self:install(url) end
   end
   return status, headers, body, extra
end

-- The portal as an application's deliveries and token answers name it: public (the base URL,
-- no trailing slash), domain (its host[:port]), member_id, user_id.
function _M:identity()
   local public = self.public_url or self.learned_url or ("https://" .. self.events.domain)
   return { public = public, domain = string_match(public, "^%a[%w+.-]*://([^/?#]+)") or self.events.domain,
            member_id = self.events.member_id, user_id = self.user_id }
end

-- The auth pairs of an application's event delivery (rest/lib/event/sender.php: a fresh access
-- token for the binding's user, or the one who raised the event; no refresh token).
function _M:app_auth(user_id)
   local who = self:identity()
   if user_id and user_id > 0 then who.user_id = user_id end
   return self.app:auth_fields(self.app:issue(false), who)
end

-- Posts ONAPPINSTALL to url with a fresh token pair (its refresh token valid), the application
-- token kept unless new_token (api-reference/common/events/on-app-install.md: data[VERSION],
-- data[ACTIVE], data[INSTALLED], data[LANGUAGE_ID], ts, auth[…] with the refresh token), encoded
-- as the application's events are (b24.emulator.events app_body).
function _M:install(url, new_token)
   local app = self.app
   if new_token then app.application_token = app.random(16) end
   local urlencode = events.urlencode
   local out = { "event=ONAPPINSTALL" }
   for _, pair in ipairs({ { "VERSION", "1" }, { "ACTIVE", "Y" }, { "INSTALLED", "Y" }, { "LANGUAGE_ID", "en" } }) do
      out[#out + 1] = urlencode("data[" .. pair[1] .. "]") .. "=" .. pair[2]
   end
   out[#out + 1] = "ts=" .. tostring(os_time())
   for _, pair in ipairs(app:auth_fields(app:issue(true), self:identity())) do
      out[#out + 1] = urlencode("auth[" .. pair[1] .. "]") .. "=" .. urlencode(pair[2])
   end
   self.events:deliver(url, table_concat(out, "&"), "ONAPPINSTALL")
end

-- The emulator's own methods, for specs and demos (no platform has them), called with the
-- webhook: emulator.app.install { url, new_token } posts an install now (to url, else to every
-- --install-to); emulator.tokens.expire makes every access token issued so far expire;
-- emulator.oauth.stats counts the OAuth outcomes since the start; emulator.offline.stats the
-- offline queue's (b24.emulator.offline control_stats); emulator.holds.set replaces the held
-- answers.
local CONTROL = {}
CONTROL["emulator.app.install"] = function(p, params)
   local urls = {}
   if type(params.url) == "string" and params.url ~= "" then
      if not string_match(params.url, "^[hH][tT][tT][pP][sS]?://[^/%s]+") then
         return nil, { status = 400, error = "ERROR_ARGUMENT", error_description = "url: an http(s) URL expected" }
      end
      urls[1] = params.url
   else
      urls = p.install_urls or {}
   end
   if #urls == 0 then
      return nil, { status = 400, error = "ERROR_ARGUMENT", error_description = "url: required (no --install-to)" }
   end
   local new_token = params.new_token
   new_token = new_token == true or new_token == "true" or new_token == "1" or new_token == "Y" or new_token == 1
   for i, url in ipairs(urls) do p:install(url, new_token and i == 1) end
   return { posted = #urls }
end
CONTROL["emulator.tokens.expire"] = function(p)
   return { expired = p.app:expire_all() }
end
CONTROL["emulator.oauth.stats"] = function(p)
   local out = {}
   for k, v in pairs(p.app.stats) do out[k] = v end
   return out
end

-- emulator.holds.set { latency = "METHOD[@N]=MS,…", stall = … }: the held answers from now on
-- (as --method-latency and --method-stall; an absent one is none), each call counted afresh
CONTROL["emulator.holds.set"] = function(p, params)
   local rules = {}
   local function bad(text) return nil, { status = 400, error = "ERROR_ARGUMENT", error_description = text } end
   for _, kind in ipairs({ "latency", "stall" }) do
      local spec = params[kind]
      if spec ~= nil and type(spec) ~= "string" then return bad(kind .. ": METHOD[@N]=MS,… expected") end
      local got, err = faults.parse_methods(spec)
      if not got then return bad(kind .. ": " .. err) end
      rules[kind] = got
   end
   p.holds = faults.holds(rules.latency, rules.stall)
   return { latency = #rules.latency, stall = #rules.stall }
end

CONTROL["emulator.offline.stats"] = function(p)
   return p.offline:control_stats()
end

-- Answers a control method (CONTROL) called with the webhook.
function _M:control(name, request)
   if not self.app then return respond_error(NO_APP) end
   local params = request_of.parameters(request)
   local result, err = CONTROL[name](self, params)
   if result == nil then return respond_error(err) end
   return respond(200, { result = result })
end

-- answer() without the events: the JSON answer.
function _M:reply(request)
   local user, code, name = request_of.route(request.path)
   local params, caller
   if not user then
      local local_server = self.app and not self.app.is_remote
      local action = local_server and string_match(request.path or "", "^/oauth/emulator/(%a+)/?$")
      if action and request.method == "POST" then
         -- this emulator as the OAuth server of other emulated portals (--oauth-server)
         return respond(self.app:serve_portal(action, request_of.parameters(request)))
      end
      if local_server and string_match(request.path or "", "^/oauth/token/?$") then
         -- the OAuth server (oauth.bitrix.info) on the portal's listener
         -- issued now, answered oauth_latency later: a slow OAuth server, whose answer another
         -- worker's refresh may overtake
         local status, headers, body = respond(self.app:token(request_of.parameters(request), self:identity()))
         return status, headers, body, self.oauth_latency > 0 and { delay = self.oauth_latency } or nil
      end
      -- /rest/METHOD: rest.php CRestServer::processExecution looks the method up (404) before
      -- checkAuth; rest/lib/oauth/auth.php Auth::onRestCheckAuth takes the token from the
      -- request (getAuthKey), none is NO_AUTH_FOUND (rest_util.php CRestUtil::checkAuth)
      name = request_of.bare_method(request.path)
      if not name or not self.methods[name] then return respond_error(NOT_FOUND) end
      params = request_of.parameters(request)
      local key = oauth.key_of(request, params)
      if not key then return respond_error(NO_AUTH) end
      if not self.app then return respond_error(INVALID_TOKEN) end
      local ok, err = self.app:check(key)
      if not ok then return respond_error(err) end
      -- Auth's parameters_clear: the method never sees the token; auth_connector goes to the
      -- auth data (rest/lib/oauth/auth.php authQueryAdditional), read by the event methods and
      -- the offline queue's no-echo rule (rest/lib/event/provideroffline.php)
      params.auth, params.access_token = nil, nil
      local connector = params.auth_connector
      params.auth_connector = nil
      if connector ~= nil and type(connector) ~= "table" then self.auth_connector = tostring(connector) end
      caller = "oauth"
   else
      if CONTROL[name] then
         if tonumber(user) ~= self.user_id or #code ~= #self.code or not equal(code, self.code) then
            return respond_error(UNAUTHORIZED)
         end
         return self:control(name, request)
      end
      if not self.methods[name] then return respond_error(NOT_FOUND) end
      if tonumber(user) ~= self.user_id or #code ~= #self.code or not equal(code, self.code) then
         return respond_error(UNAUTHORIZED)
      end
      caller = "webhook"
   end
   local latency = self.latency
   if not self.limits:admit(request.remote_addr or "") then
      return finish_response(latency, respond_error(TOO_MANY))
   end
   if self.faults:roll(503) then return finish_response(latency, respond_error(TOO_MANY)) end
   if self.limits:blocked(name) then return finish_response(latency, respond_error(BLOCKED)) end
   local hold = self.holds:take(name)
   if hold and hold.stall then
      self.log("info", "emulator answer held", { method = name, call = hold.call, seconds = hold.seconds, ran = "no" })
      return finish_response(latency + hold.seconds, respond_error(TOO_MANY))
   end
   local arrival = self.wall()
   self.sim, self.t_wall, self.t_mono = 0, arrival + latency, now()
   self.request = request -- batch reads the order of its commands from the raw text
   self.hit_clock = self.limits.clock()
   self.caller = caller -- "webhook" or "oauth" (CRestServer::getAuthType), batch sub-calls included
   local result, meta, time = self:call(name, params or request_of.parameters(request))
   self.request, self.hit_clock, self.caller, self.auth_connector = nil, nil, nil, nil
   local delay = latency + self.sim
   if self.dirty and self.data_path then
      local ok, err = self:save()
      if not ok then
         self.log("error", "emulator cannot write the --data file", { error = tostring(err) })
         return finish_response(delay, respond_error(INTERNAL))
      end
   end
   -- faults after executing: the change stays applied, the client cannot know it
   local reset = self.faults:roll("reset")
   local failed = self.faults:roll(500)
   if self.faults:roll("slow") then delay = delay + self.slow_delay end
   if hold then
      -- logged once the call has run (its rows marked, its change made): the answer is on its way
      self.log("info", "emulator answer held", { method = name, call = hold.call, seconds = hold.seconds,
                                                 ran = "yes" })
      delay = delay + hold.seconds
   end
   -- a reset still carries the answer, for a host that cannot drop connections
   if failed then return finish_response(delay, respond_error(INTERNAL)) end
   if result == nil then
      local status, headers, body = respond_error(meta)
      return finish_response(delay, status, headers, body, reset)
   end
   time.start = arrival
   time.date_start = self:date(arrival)
   time.duration = time.finish - arrival
   local status, headers, body = respond(200, { result = result, total = meta.total, next = meta.next, time = time })
   return finish_response(delay, status, headers, body, reset)
end

return _M
