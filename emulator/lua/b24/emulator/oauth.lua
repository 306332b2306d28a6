-- b24.emulator.oauth: the application installed on the emulated portal (`--app CLIENT_ID:SECRET`)
-- and the OAuth server that issues its tokens, served on the portal's own listener. The real
-- pair is oauth.bitrix.info (GET /oauth/token/, settings/oauth/auto-renewal.md in
-- bitrix24/b24restdocs) and the portal's token check (rest/lib/oauth/auth.php
-- Auth::onRestCheckAuth). Here one object holds both: the access tokens with their expiry on the
-- portal's clock (the one --time-scale speeds up), the refresh tokens (each spent by its use), the
-- application token, and counters for the specs. No token or secret is ever logged.
local core = require "bitrix24.core"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local string_match = string.match
local math_floor = math.floor
local math_huge = math.huge
local equal = core.equal
local random_bytes = core.random_bytes

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
   for token, deadline in pairs(self.refresh) do
      if deadline <= t then self.refresh[token] = nil end
   end
end

-- A new access token (and a refresh token with with_refresh): { access_token, refresh_token,
-- expires, expires_in }. expires is the unix second the token ends at on the real clock (ttl
-- portal seconds, ttl / scale real ones); expires_in the ttl, as the portal counts it.
function _M:issue(with_refresh)
   self.issued = self.issued + 1
   if self.issued % SWEEP_EVERY == 0 then self:sweep() end
   local t = self.clock()
   local access = self.random(16)
   self.access[access] = { deadline = t + self.ttl }
   local out = { access_token = access, expires_in = math_floor(self.ttl),
                 expires = math_floor(self.wall() + self.ttl / self.scale + 0.5) }
   if with_refresh then
      out.refresh_token = self.random(16)
      self.refresh[out.refresh_token] = t + REFRESH_TTL
   end
   return out
end

-- Makes every access token issued so far expire now (emulator.tokens.expire); the count.
function _M:expire_all()
   local n = 0
   for _, a in pairs(self.access) do
      if a.deadline > -math_huge then
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
-- cache until `expires`). portal: as for auth_fields.
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
   local deadline = self.refresh[refresh]
   if not deadline or deadline <= self.clock() then
      self.refresh[refresh] = nil
      self.stats.invalid_grant = self.stats.invalid_grant + 1
      return oauth_error(400, "invalid_grant", "Invalid refresh token")
   end
   self.refresh[refresh] = nil
   self.stats.refreshes = self.stats.refreshes + 1
   local tokens = self:issue(true)
   local body = {}
   for _, pair in ipairs(self:auth_fields(tokens, portal)) do body[pair[1]] = pair[2] end
   body.application_token = nil -- the OAuth server does not hand it out
   body.expires, body.expires_in = tokens.expires, tokens.expires_in
   body.user_id = tonumber(portal.user_id) or portal.user_id
   return 200, body
end

-- Checks an access token as rest/lib/oauth/auth.php Auth::onRestCheckAuth does: true | nil,
-- the error (a table for json.respond_error): an unknown token is invalid_token (the OAuth
-- server's check answers it; protocol.md §2), one past `expires` is expired_token.
function _M:check(token)
   local a = self.access[token]
   if not a then
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

return _M
