-- b24.emulator.oauth: the application installed on the emulated portal (`--app CLIENT_ID:SECRET`)
-- and the OAuth server that issues its tokens, served on the portal's own listener. The real
-- pair is oauth.bitrix.info (GET /oauth/token/, settings/oauth/auto-renewal.md in
-- bitrix24/b24restdocs) and the portal's token check (rest/lib/oauth/auth.php
-- Auth::onRestCheckAuth). Here one object holds both: the access tokens with their expiry on the
-- portal's clock (the one --time-scale speeds up), the refresh tokens (each spent by its use), the
-- application token, and counters for the specs. No token or secret is ever logged.
local core = require "bitrix24.core"
local json = require "b24.emulator.json"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local string_match = string.match
local string_lower = string.lower
local math_floor = math.floor
local math_huge = math.huge
local equal = core.equal
local random_bytes = core.random_bytes
local form_encode = core.form_encode

local _M = {}
local mt = { __index = _M }

-- The scopes the application was installed with (one for each module the emulator serves).
_M.SCOPE = "crm,department,im,task,user"
_M.DEFAULT_TTL = 3600
-- refresh tokens live 180 days (auto-renewal.md); on the portal's clock
local REFRESH_TTL = 180 * 86400
-- a sweep of expired tokens every this many issued
local SWEEP_EVERY = 1000

-- An OAuth error answer: status and the { error, error_description } body.
local function oauth_error(status, code, description)
   return status, { error = code, error_description = description }
end

-- "CLIENT_ID:SECRET" → client_id, secret | nil, what is wrong (never the secret).
function _M.parse_app(text)
   local client_id, secret = string_match(text, "^([^:]+):(.+)$")
   if not client_id then return nil, "CLIENT_ID:SECRET" end
   if not string_match(client_id, "^[%w_%.%-]+$") then return nil, "a CLIENT_ID of letters, digits, . - or _" end
   if not string_match(secret, "^[%w_%-]+$") then return nil, "a SECRET of letters, digits, - or _" end
   return client_id, secret
end

-- opts: client_id, secret, code (app.info's CODE; the client_id by default, as rest/lib/app.php
-- gives a local application), ttl (an access token's seconds on the portal's clock), clock
-- (scaled seconds, monotonic), wall (unix seconds), scale (the clock's speed), application_token,
-- random (fn(n) → n random bytes as hex; core.random_bytes by default).
function _M.new(opts)
   local random = opts.random or function(n) return random_bytes(n, "hex") end
   local self = setmetatable({
      client_id = opts.client_id,
      secret = opts.secret,
      code = opts.code or opts.client_id,
      ttl = tonumber(opts.ttl) or _M.DEFAULT_TTL,
      clock = opts.clock,
      wall = opts.wall,
      scale = tonumber(opts.scale) or 1,
      random = random,
      scope = _M.SCOPE,
      access = {}, refresh = {}, issued = 0,
      stats = { refreshes = 0, invalid_grant = 0, invalid_client = 0, expired_token = 0, invalid_token = 0 },
   }, mt)
   self.application_token = opts.application_token or random(16)
   return self
end

-- Forgets the tokens past their expiry (the OAuth server's storage drops them too).
function _M:sweep()
   local t = self.clock()
   for token, a in pairs(self.access) do
      if a.deadline <= t then self.access[token] = nil end
   end
   for token, r in pairs(self.refresh) do
      if r.deadline <= t then self.refresh[token] = nil end
   end
end

-- A new access token (and a refresh token with with_refresh): { access_token, refresh_token,
-- expires, expires_in }. expires is the unix second the token ends at on the real clock (ttl
-- portal seconds, ttl / scale real ones); expires_in the ttl, as the portal counts it. who: the
-- identity of another portal the tokens are for (as for auth_fields), nil for this one.
function _M:issue(with_refresh, who)
   self.issued = self.issued + 1
   if self.issued % SWEEP_EVERY == 0 then self:sweep() end
   local t = self.clock()
   local access = self.random(16)
   self.access[access] = { deadline = t + self.ttl, who = who }
   local out = { access_token = access, expires_in = math_floor(self.ttl),
                 expires = math_floor(self.wall() + self.ttl / self.scale + 0.5) }
   if with_refresh then
      out.refresh_token = self.random(16)
      self.refresh[out.refresh_token] = { deadline = t + REFRESH_TTL, who = who }
   end
   return out
end

-- Makes every access token issued so far expire now (emulator.tokens.expire); the count. With
-- member_id: only those issued for that other portal.
function _M:expire_all(member_id)
   local n = 0
   for _, a in pairs(self.access) do
      if a.deadline > -math_huge and (member_id == nil or (a.who and a.who.member_id == member_id)) then
         a.deadline = -math_huge
         n = n + 1
      end
   end
   return n
end

-- The auth fields of an answer or a delivery, in the order a portal writes them
-- (shared/vectors/events/app-oncrmcontactadd.form; rest/lib/event/sender.php leaves the
-- refresh token out unless sendRefreshToken): a list of { name, value } pairs. portal: domain,
-- public (the base URL), member_id, user_id.
function _M:auth_fields(tokens, portal)
   local rest = portal.public .. "/rest/"
   local out = {
      { "access_token", tokens.access_token }, { "expires", tostring(tokens.expires) },
      { "expires_in", tostring(tokens.expires_in) }, { "scope", self.scope }, { "domain", portal.domain },
      { "server_endpoint", rest }, { "status", "L" }, { "client_endpoint", rest },
      { "member_id", portal.member_id }, { "user_id", tostring(portal.user_id) },
   }
   if tokens.refresh_token then out[#out + 1] = { "refresh_token", tokens.refresh_token } end
   out[#out + 1] = { "application_token", self.application_token }
   return out
end

-- GET /oauth/token/ (the OAuth server; its answers as settings/oauth/auto-renewal.md and
-- error-codes.md show them): status, body table. params: the query's fields. Checked in the
-- order the OAuth2 servers check them: grant_type, the client's credentials, the refresh token.
-- A refresh token is spent by its use (a second use is invalid_grant); the access tokens issued
-- before stay valid until their own expiry (rest/lib/oauth/auth.php keeps a checked token in its
-- cache until `expires`). portal: as for auth_fields; a refresh token issued for another portal
-- (this emulator as that portal's --oauth-server) is answered with that portal's identity.
function _M:token(params, portal)
   local function text(k) local v = params[k]; return type(v) == "string" and v or nil end
   local grant = text("grant_type")
   if not grant or grant == "" then
      return oauth_error(400, "invalid_request", "The grant type was not specified in the request")
   end
   if grant ~= "refresh_token" then
      return oauth_error(400, "unsupported_grant_type", 'Grant type "' .. grant .. '" not supported')
   end
   local client_id, secret = text("client_id"), text("client_secret")
   if not client_id or client_id == "" or not secret or secret == "" then
      return oauth_error(400, "invalid_request", "Client credentials were not found in the headers or body")
   end
   if client_id ~= self.client_id or #secret ~= #self.secret or not equal(secret, self.secret) then
      self.stats.invalid_client = self.stats.invalid_client + 1
      return oauth_error(401, "invalid_client", "The client credentials are invalid")
   end
   local refresh = text("refresh_token")
   if not refresh or refresh == "" then
      return oauth_error(400, "invalid_request", 'Missing parameter: "refresh_token" is required')
   end
   local entry = self.refresh[refresh]
   if not entry or entry.deadline <= self.clock() then
      self.refresh[refresh] = nil
      self.stats.invalid_grant = self.stats.invalid_grant + 1
      return oauth_error(400, "invalid_grant", "Invalid refresh token")
   end
   self.refresh[refresh] = nil
   self.stats.refreshes = self.stats.refreshes + 1
   local tokens = self:issue(true, entry.who)
   portal = entry.who or portal
   local body = {}
   for _, pair in ipairs(self:auth_fields(tokens, portal)) do body[pair[1]] = pair[2] end
   body.application_token = nil -- the OAuth server does not hand it out
   body.expires, body.expires_in = tokens.expires, tokens.expires_in
   body.user_id = tonumber(portal.user_id) or portal.user_id
   return 200, body
end

-- Checks an access token as rest/lib/oauth/auth.php Auth::onRestCheckAuth does: true | nil,
-- the error (a table for json.respond_error): an unknown token is invalid_token (the OAuth
-- server's check answers it; protocol.md §2), one past `expires` is expired_token. member_id:
-- another portal asking (--oauth-server), nil for this one; a token is good only on the portal
-- it was issued for (the OAuth server answers a portal only for its own tokens).
function _M:check(token, member_id)
   local a = self.access[token]
   if not a or (a.who and a.who.member_id) ~= member_id then
      self.stats.invalid_token = self.stats.invalid_token + 1
      return nil, { status = 401, error = "invalid_token", error_description = "The access token provided is invalid" }
   end
   if a.deadline <= self.clock() then
      self.stats.expired_token = self.stats.expired_token + 1
      return nil, { status = 401, error = "expired_token",
                    error_description = "The access token provided has expired" }
   end
   return true
end

-- The access token of a request as rest/lib/oauth/auth.php Auth::getAuthKey finds it: an
-- "Authorization: Bearer …" header, else the parameter auth, else access_token (a scalar);
-- nil when there is none.
function _M.key_of(request, params)
   local header = (request.headers or {})["authorization"]
   if type(header) == "string" then
      local key = string_match(header, "^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(.*)$")
      if key then return key end
   end
   for _, k in ipairs({ "auth", "access_token" }) do
      local v = params[k]
      if v ~= nil and type(v) ~= "table" then return tostring(v) end
   end
   return nil
end

-- ---- one OAuth server for several emulated portals (--oauth-server) -----------------------------
-- Every cloud portal shares oauth.bitrix.info: it mints the application's tokens for each portal
-- and answers a refresh with that portal's member_id and endpoints, and a portal asks it whether
-- an access token is good (rest/lib/oauth/auth.php Auth::check → OAuthService's checkAuth). Here
-- an emulator started with --app is that server for the portals started with --oauth-server
-- pointing at it: they call POST /oauth/emulator/issue/, /check/ and /expire/ on it, with the
-- application's client_id and client_secret (form fields; no secret is logged or answered).

-- The identity a portal sends (portal[public], portal[domain], portal[member_id], portal[user_id])
-- | nil when it is not whole.
local function identity_of(v)
   if type(v) ~= "table" then return nil end
   for _, k in ipairs({ "public", "domain", "member_id" }) do
      if type(v[k]) ~= "string" or v[k] == "" then return nil end
   end
   return { public = v.public, domain = v.domain, member_id = v.member_id, user_id = tonumber(v.user_id) or 1 }
end

-- POST /oauth/emulator/ACTION/ from another emulated portal: status, body table. issue (portal,
-- refresh = 1 for a refresh token too) → the tokens; check (token, member_id) → { result = true }
-- or the error the portal answers; expire (member_id) → { expired = n }.
function _M:serve_portal(action, params)
   local function text(k) local v = params[k]; return type(v) == "string" and v or nil end
   local client_id, secret = text("client_id"), text("client_secret")
   if client_id ~= self.client_id or not secret or #secret ~= #self.secret or not equal(secret, self.secret) then
      self.stats.invalid_client = self.stats.invalid_client + 1
      return oauth_error(401, "invalid_client", "The client credentials are invalid")
   end
   if action == "issue" then
      local who = identity_of(params.portal)
      if not who then return oauth_error(400, "invalid_request", "portal: public, domain and member_id expected") end
      local tokens = self:issue(text("refresh") == "1", who)
      return 200, tokens
   elseif action == "check" then
      local ok, err = self:check(text("token") or "", text("member_id"))
      if not ok then return err.status, { error = err.error, error_description = err.error_description } end
      return 200, { result = true }
   elseif action == "expire" then
      local member_id = text("member_id")
      if not member_id then return oauth_error(400, "invalid_request", "member_id expected") end
      return 200, { expired = self:expire_all(member_id) }
   end
   return oauth_error(404, "not_found", "no such OAuth server action")
end

local Remote = {}
_M.Remote = Remote
Remote.auth_fields = _M.auth_fields

-- The application on a portal whose OAuth server is another emulator (--oauth-server URL): the
-- interface of _M.new (issue, check, expire_all, auth_fields, stats, application_token, code),
-- each token asked for or checked over HTTP. opts: url (the OAuth server's base URL),
-- client_id, secret, code, identity (fn() → this portal's identity, as for auth_fields),
-- request (fn(req) → res { status, body } | nil, err: the HTTP client), log, random.
function _M.remote(opts)
   local random = opts.random or function(n) return random_bytes(n, "hex") end
   local self = setmetatable({
      is_remote = true,
      url = string_match(opts.url, "^(.-)/*$") .. "/oauth/emulator/",
      client_id = opts.client_id, secret = opts.secret, code = opts.code or opts.client_id,
      identity = opts.identity, request = opts.request, log = opts.log, random = random, scope = _M.SCOPE,
      stats = { refreshes = 0, invalid_grant = 0, invalid_client = 0, expired_token = 0, invalid_token = 0 },
   }, { __index = Remote })
   -- each portal has its own application token (the install's auth[application_token])
   self.application_token = opts.application_token or random(16)
   return self
end

-- One action at the OAuth server: status, body table | nil, reason (no answer, or not JSON).
function Remote:ask(action, fields)
   fields.client_id, fields.client_secret = self.client_id, self.secret
   local res, err = self.request{ method = "POST", url = self.url .. action .. "/",
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }, body = form_encode(fields) }
   if not res then return nil, tostring(err) end
   local body = json.decode(res.body or "")
   if type(body) ~= "table" then return nil, "HTTP " .. tostring(res.status) .. " without a JSON body" end
   return res.status, body
end

-- Logs that the OAuth server failed an action (its origin, never a token or the secret).
function Remote:failed(action, why)
   if self.log then
      self.log("error", "emulator: the OAuth server failed", { action = action, error = why,
                                                               server = string_match(self.url, "^(%a+://[^/]+)") })
   end
end

-- Tokens for this portal from the OAuth server (see _M.issue). When it does not answer, the
-- failure is logged and a token no server knows is handed out (its use answers invalid_token).
function Remote:issue(with_refresh)
   local status, body = self:ask("issue", { refresh = with_refresh and 1 or 0, portal = self.identity() })
   if status == 200 and type(body.access_token) == "string" then
      return { access_token = body.access_token, refresh_token = body.refresh_token,
               expires = tonumber(body.expires) or 0, expires_in = tonumber(body.expires_in) or 0 }
   end
   self:failed("issue", status and ("HTTP " .. tostring(status)) or body)
   return { access_token = "unissued" .. self.random(12), expires = 0, expires_in = 0,
            refresh_token = with_refresh and ("unissued" .. self.random(12)) or nil }
end

-- An access token checked by the OAuth server for this portal: true | nil, the error to answer
-- (a 500 when the server does not answer: the portal cannot tell).
function Remote:check(token)
   local status, body = self:ask("check", { token = token, member_id = self.identity().member_id })
   if status == 200 and body.result == true then return true end
   if status and type(body.error) == "string" then
      local counter = string_lower(body.error)
      if self.stats[counter] then self.stats[counter] = self.stats[counter] + 1 end
      return nil, { status = status, error = body.error, error_description = body.error_description }
   end
   self:failed("check", status and ("HTTP " .. tostring(status)) or body)
   return nil, { status = 500, error = "INTERNAL_SERVER_ERROR", error_description = "Internal server error" }
end

-- Makes the OAuth server expire every access token it issued for this portal: the count.
function Remote:expire_all()
   local status, body = self:ask("expire", { member_id = self.identity().member_id })
   if status == 200 then return tonumber(body.expired) or 0 end
   self:failed("expire", status and ("HTTP " .. tostring(status)) or body)
   return 0
end

return _M
