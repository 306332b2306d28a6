-- bitrix24.app: a local or marketplace application on any number of portals. The install
-- delivery (ONAPPINSTALL) is verified before anything is stored; each portal's tokens and
-- application token live in a store (bitrix24.appstore: memory for a script, SQLite or a
-- process-wide store under `b24 serve`); app:client(portal) is a REST client that renews its
-- access token on expired_token, single-flight per portal across threads and processes.
--   local app = bitrix24.app{ client_id = "local.…", client_secret = os.getenv("B24_CLIENT_SECRET") }
--   local router = app:router()          -- installs, and events checked against each portal's token
--   router:on("ONCRMDEALADD", function(event, ctx) local b24 = app:client(event.member_id) … end)
--
-- Facts (bitrix24/b24restdocs settings/oauth/*.md, api-reference/common/events/on-app-install.md;
-- yuliai/bitrix-modules rest/classes/general/rest_provider.php appInfo, rest/lib/app.php):
-- - an install POSTs auth[access_token], auth[refresh_token], auth[member_id], auth[domain],
--   auth[client_endpoint], auth[server_endpoint], auth[application_token], …; the later online
--   events of that portal carry the same application_token;
-- - only the OAuth server renews tokens; a refresh token is spent by its use (the answer holds
--   the next one), so two workers refreshing one portal at once lose the race's loser's token:
--   the refresh here holds a lease (a store row with holder and expiry, committed before the
--   HTTP call) and re-reads the record after taking it;
-- - app.info with an application's token answers the application's CODE: the client_id for a
--   local application (rest/lib/app.php sets CODE = client_id), the marketplace code otherwise.
--
-- How an install is verified, since it carries no secret we know: its refresh token is renewed
-- at the OAuth server we trust (opts.oauth_server, https://oauth.bitrix.info by default: never
-- the server the delivery names) with our client_secret, which only works for a real token of
-- our application; the server's answer must name the delivery's member_id and client_endpoint;
-- then the portal is called back with the fresh token (app.info) and must answer as our
-- application. Only then is the record stored (a re-install replaces the old one), so a forged
-- install, for a new portal or a known one, stores and changes nothing.
local core = require "bitrix24.core"
local Error = require "bitrix24.error"
local appstore = require "bitrix24.appstore"
local oauth = require "bitrix24.oauth"
local log_module = require "bitrix24.log"

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local error = error
local tostring = tostring
local tonumber = tonumber
local require = require
local setmetatable = setmetatable
local string_lower = string.lower
local string_match = string.match
local string_upper = string.upper
local math_min = math.min

local _M = {}
local App = {}
local mt = { __index = App }

-- The client options an app passes on to each portal's client.
local CLIENT_OPTIONS = { "limit", "retries", "connect_retries", "backoff", "max_wait", "operating_wait",
                         "parallel", "random", "auth_connector" }

local function check_string(opts, name, required)
   local v = opts[name]
   if v == nil and not required then return nil end
   if type(v) ~= "string" or v == "" then
      error("bitrix24.app: bad option '" .. name .. "' (a non-empty string expected)", 3)
   end
   return v
end

-- bitrix24.app{ client_id, client_secret, store, code, oauth_server, transport, log, lease,
-- refresh_wait, client = { client options } } → app. store: a bitrix24.appstore interface (a
-- memory store by default); code: what app.info answers as CODE (client_id by default, the
-- marketplace code for a marketplace application); oauth_server: the OAuth server trusted to
-- renew tokens (scheme://host); lease: seconds a refresh may hold its portal (30); refresh_wait:
-- seconds a client waits for another worker's refresh (60). Raises on misuse.
function _M.new(opts)
   if type(opts) ~= "table" then error("bitrix24.app: an options table expected", 2) end
   local client_id = check_string(opts, "client_id", true)
   local client_secret = check_string(opts, "client_secret", true)
   local server = opts.oauth_server or oauth.SERVER
   local origin = type(server) == "string" and oauth.origin(server) or nil
   if not origin or origin ~= (string_lower(server):gsub("/+$", "")) then
      error("bitrix24.app: bad option 'oauth_server' (scheme://host[:port] expected)", 2)
   end
   local store = opts.store or appstore.memory()
   for _, m in ipairs({ "get", "put", "swap", "lease", "release", "delete", "list" }) do
      local ok, f = pcall(function() return store[m] end)
      if not ok or type(f) ~= "function" then
         error("bitrix24.app: bad option 'store' (get, put, swap, lease, release, delete, list expected)", 2)
      end
   end
   if opts.log ~= nil and type(opts.log) ~= "function" then
      error("bitrix24.app: bad option 'log' (a function(level, msg, fields) expected)", 2)
   end
   local bitrix24 = require "bitrix24"
   local transport = opts.transport or bitrix24.transport(opts.client or {})
   local holder, herr = core.random_bytes(12, "hex")
   if not holder then error("bitrix24.app: " .. herr, 2) end
   return setmetatable({
      client_id = client_id,
      client_secret = client_secret,
      code = check_string(opts, "code") or client_id,
      oauth_server = oauth.origin(server),
      store = store,
      transport = transport,
      log = opts.log or log_module.default,
      lease_seconds = opts.lease or 30,
      refresh_wait = opts.refresh_wait or 60,
      client_opts = opts.client or {},
      holder = holder,
      now = transport.now or core.now,
      sleep = transport.sleep or core.sleep,
      mask = Error.masker({ client_secret }),
   }, mt)
end

local function log(self, level, msg, fields)
   pcall(self.log, level, msg, fields)
end

-- A client for endpoint and token on the app's transport (no refresh, few retries): for the
-- install's call back.
local function bare_client(self, endpoint, token)
   return require("bitrix24.client").new{ url = endpoint, auth = token, transport = self.transport,
                                         retries = 2, connect_retries = 2, log = self.log }
end

-- What makes an install's auth fields usable, before anything is asked: nil or the reason.
local function check_install(auth)
   if type(auth) ~= "table" then return "no auth fields" end
   for _, k in ipairs({ "member_id", "domain", "client_endpoint", "access_token", "refresh_token",
                        "application_token" }) do
      if type(auth[k]) ~= "string" or auth[k] == "" or #auth[k] > appstore.MAX_FIELD then
         return "auth[" .. k .. "] is missing or malformed"
      end
   end
   if not string_match(auth.member_id, "^[%w_-]+$") or #auth.member_id > 64 then
      return "auth[member_id] is malformed"
   end
   if not string_match(auth.domain, "^[%w][%w.-]*[%w](:?%d*)$") or #auth.domain > 253 then
      return "auth[domain] is not a host name"
   end
   local scheme, host = string_match(auth.client_endpoint, "^(https?)://([^/?#]+)/rest/$")
   if not scheme or string_lower(host) ~= string_lower(auth.domain) then
      return "auth[client_endpoint] is not https://DOMAIN/rest/ of auth[domain]"
   end
   return nil
end

-- Verifies an install (ONAPPINSTALL; event is bitrix24.event's) and stores the portal: the
-- record | nil, reason (a sentence with no secret in it). See the top of this file.
function App:install(event)
   local auth = type(event) == "table" and event.auth or nil
   local why = check_install(auth)
   if why then return nil, why end
   local tokens, err = oauth.refresh{ server = self.oauth_server, client_id = self.client_id,
      client_secret = self.client_secret, refresh_token = auth.refresh_token, transport = self.transport }
   if not tokens then
      log(self, "warn", "bitrix24.app: install not verified", { member_id = auth.member_id, error = err.code })
      return nil, "the OAuth server refused its refresh token (" .. tostring(err.code) .. ")"
   end
   if tokens.member_id ~= auth.member_id then
      return nil, "the OAuth server names another portal than the install"
   end
   if string_lower(tostring(tokens.client_endpoint)) ~= string_lower(auth.client_endpoint) then
      return nil, "the OAuth server names another REST endpoint than the install"
   end
   local info, ierr = bare_client(self, tokens.client_endpoint, tokens.access_token):call("app.info")
   if type(info) ~= "table" then
      return nil, "the portal did not answer app.info (" .. tostring(ierr and ierr.code) .. ")"
   end
   if info.CODE ~= self.code then return nil, "the portal's app.info names another application" end
   local record = {
      member_id = auth.member_id, domain = string_lower(auth.domain), client_id = self.client_id,
      client_endpoint = tokens.client_endpoint, server_endpoint = tokens.server_endpoint,
      access_token = tokens.access_token, refresh_token = tokens.refresh_token,
      expires_at = tokens.expires_at, application_token = auth.application_token,
      scope = tokens.scope or auth.scope, user_id = tokens.user_id or auth.user_id,
   }
   if type(record.server_endpoint) ~= "string" then record.server_endpoint = nil end
   if type(record.scope) ~= "string" then record.scope = nil end
   if type(record.user_id) ~= "string" then record.user_id = nil end
   local version, perr = self.store:put(record)
   if not version then
      log(self, "error", "bitrix24.app: the install could not be stored", { member_id = auth.member_id,
                                                                          error = tostring(perr) })
      return nil, "the portal could not be stored"
   end
   log(self, "info", "bitrix24.app: installed", { member_id = record.member_id, domain = record.domain })
   record.version = version
   return record
end

-- The error of a portal that left the store meanwhile (uninstalled).
function _M.gone()
   return Error.new{ code = "not_installed", description = "the portal is gone from the store (uninstalled)" }
end

-- The portal's record for a member_id or a domain | nil, err (code not_installed).
function App:portal(key)
   if type(key) ~= "string" or key == "" then error("bitrix24.app: a member_id or domain expected", 2) end
   local record = self.store:get(key) or self.store:get(string_lower(key))
   if not record then
      return nil, Error.new{ code = "not_installed",
                             description = "no portal " .. key .. " has installed the application" }
   end
   return record
end

-- A fresh access token of a portal after `stale` was refused as expired | nil, err. Single
-- flight: whoever holds the portal's lease renews; the others wait until the record's token
-- changes (bounded by refresh_wait). A token already renewed by someone else is just taken.
function App:refresh(member_id, stale)
   local store = self.store
   local deadline = self.now() + self.refresh_wait
   local pause = 0.02
   while true do
      local record = store:get(member_id)
      if not record then return nil, _M.gone() end
      if record.access_token ~= stale then return record.access_token end
      local held = store:lease(member_id, self.holder, self.lease_seconds)
      if held then
         local token, err = self:renew(member_id, stale)
         store:release(member_id, self.holder)
         return token, err
      end
      if self.now() >= deadline then
         return nil, Error.new{ code = "refresh_timeout", retryable = true,
                                description = "another worker's token refresh did not finish in time" }
      end
      self.sleep(pause)
      pause = math_min(pause * 2, 0.5)
   end
end

-- The access token stored once the portal's refresh token is no longer `spent` (another worker
-- renewed it), polling until refresh_wait passes | nil.
function App:await_rotation(member_id, spent)
   local deadline = self.now() + self.refresh_wait
   local pause = 0.02
   while true do
      local record = self.store:get(member_id)
      if not record then return nil end
      if record.refresh_token ~= spent then return record.access_token end
      if self.now() >= deadline then return nil end
      self.sleep(pause)
      pause = math_min(pause * 2, 0.5)
   end
end

-- The renewal itself, under the lease: re-read (someone may have finished just before the lease
-- was ours), refresh at the OAuth server, store with compare-and-set.
function App:renew(member_id, stale)
   local store = self.store
   local record = store:get(member_id)
   if not record then return nil, _M.gone() end
   if record.access_token ~= stale then return record.access_token end
   local tokens, err = oauth.refresh{ server = self.oauth_server, client_id = self.client_id,
      client_secret = self.client_secret, refresh_token = record.refresh_token, transport = self.transport }
   if not tokens then
      -- spent meanwhile by a worker whose lease ran out under it (a refresh slower than the
      -- lease): its tokens are the good ones, stored as soon as its answer comes
      if err.code == "invalid_grant" then
         local token = self:await_rotation(member_id, record.refresh_token)
         if token then return token end
      end
      log(self, "error", "bitrix24.app: token refresh failed", { member_id = member_id, error = err.code })
      err.description = self.mask(err.description)
      return nil, err
   end
   local fields = { access_token = tokens.access_token, refresh_token = tokens.refresh_token,
                    expires_at = tokens.expires_at }
   if type(tokens.client_endpoint) == "string" and tokens.client_endpoint ~= "" then
      fields.client_endpoint = tokens.client_endpoint
   end
   local version = store:swap(member_id, record.version, fields)
   if not version then
      -- the record changed under the lease (a re-install): the new tokens are valid all the same
      log(self, "warn", "bitrix24.app: the portal changed during a refresh", { member_id = member_id })
   end
   log(self, "info", "bitrix24.app: access token renewed", { member_id = member_id })
   return tokens.access_token
end

-- A REST client of a portal (member_id or domain) | nil, err: its endpoint, its access token,
-- renewed on expired_token through app:refresh. opts: client options over the app's `client`.
function App:client(key, opts)
   local record, err = self:portal(key)
   if not record then return nil, err end
   local o = {}
   for _, k in ipairs(CLIENT_OPTIONS) do o[k] = self.client_opts[k] end
   for k, v in pairs(opts or {}) do o[k] = v end
   o.url, o.auth, o.transport = record.client_endpoint, record.access_token, self.transport
   o.log = o.log or self.log
   local member_id = record.member_id
   o.refresh = function(stale) return self:refresh(member_id, stale) end
   return require("bitrix24.client").new(o)
end

-- A router for the application's deliveries: ONAPPINSTALL verified by app:install, every other
-- delivery checked against the application token stored for its portal, and ONAPPUNINSTALL
-- removing the portal (before the handlers registered after it). opts: bitrix24.router options
-- (not token/tokens).
function App:router(opts)
   local o = {}
   for k, v in pairs(opts or {}) do o[k] = v end
   local offline = o.offline
   o.offline = nil
   if o.token ~= nil or o.tokens ~= nil then
      error("bitrix24.app: the app's router takes its tokens from the store", 2)
   end
   local store = self.store
   o.tokens = function(member_id, domain)
      local record = (member_id and store:get(member_id)) or (domain and store:get(string_lower(domain)))
      return record and record.application_token or nil
   end
   o.install = function(event)
      local record, why = self:install(event)
      if not record then return nil, why end
      return true
   end
   o.log = o.log or self.log
   local router = require("bitrix24.router").new(o)
   -- an uninstalled portal's tokens are void: it leaves the store (its token was checked)
   router:on("ONAPPUNINSTALL", function(event)
      if event.member_id then self.store:delete(event.member_id) end
      log(self, "info", "bitrix24.app: uninstalled", { member_id = event.member_id, domain = event.domain })
   end)
   if offline ~= nil then
      -- the offline queue pulled into the host's inbox (bitrix24.offline); its deliveries are
      -- this router's, dispatched like online ones
      if type(offline) ~= "table" then error("bitrix24.app: bad option 'offline' (a table expected)", 2) end
      local o2 = {}
      for k, v in pairs(offline) do o2[k] = v end
      if o2.auth_connector == nil then o2.auth_connector = self.client_opts.auth_connector end
      router.offline = require("bitrix24.offline").attach(self, router, o2)
   end
   return router
end

-- The events the application is bound to on a portal: event.get | nil, err.
function App:bindings(key)
   local client, err = self:client(key)
   if not client then return nil, err end
   return client:call("event.get")
end

-- Binds the portal's events (a list of names) to handler (the URL the portal posts to);
-- idempotent: what is bound already is left as it is. opts.type = "offline" binds offline
-- events (no handler). → the names bound now | nil, err.
function App:bind(key, events, handler, opts)
   if type(events) ~= "table" then error("bitrix24.app: a list of event names expected", 2) end
   if type(handler) == "table" then handler, opts = nil, handler end -- bind(portal, events, { offline = true })
   opts = opts or {}
   if opts.offline then opts.type = "offline" end
   local client, err = self:client(key)
   if not client then return nil, err end
   local bound, berr = client:call("event.get")
   if bound == nil then return nil, berr end
   local have = {}
   for _, b in ipairs(type(bound) == "table" and bound or {}) do
      if type(b) == "table" and type(b.event) == "string" then
         -- rest/lib/api/event.php eventGet: offline is 1 for an offline binding, 0 otherwise
         local off = (b.offline == 1 or b.offline == "1" or b.offline == true) and "1" or ""
         have[string_upper(b.event) .. "|" .. (off == "1" and "" or tostring(b.handler or "")) .. "|" .. off] = true
      end
   end
   local offline = opts.type == "offline"
   local done = {}
   for _, name in ipairs(events) do
      local upper = string_upper(name)
      local key2 = upper .. "|" .. (offline and "" or tostring(handler)) .. "|" .. (offline and "1" or "")
      if not have[key2] then
         local params = { event = upper, handler = handler, event_type = offline and "offline" or nil }
         local ok, cerr = client:call("event.bind", params)
         if ok == nil and not (cerr and string_match(tostring(cerr.description), "already")) then
            return nil, cerr
         end
         done[#done + 1] = upper
      end
   end
   return done
end

-- Unbinds the portal's events (a list of names) from handler; what is not bound is no error.
-- → the count the portal reports | nil, err.
function App:unbind(key, events, handler, opts)
   if type(events) ~= "table" then error("bitrix24.app: a list of event names expected", 2) end
   opts = opts or {}
   local client, err = self:client(key)
   if not client then return nil, err end
   local count = 0
   for _, name in ipairs(events) do
      local got, cerr = client:call("event.unbind", { event = string_upper(name), handler = handler,
         event_type = opts.type == "offline" and "offline" or nil })
      if got == nil then return nil, cerr end
      count = count + (type(got) == "table" and tonumber(got.count) or 0)
   end
   return count
end

_M.memory_store = appstore.memory

return _M
