-- bitrix24.oauth: the Bitrix24 OAuth server, the only one who issues and renews an
-- application's tokens (settings/oauth/auto-renewal.md in bitrix24/b24restdocs): a GET of
-- {server}/oauth/token/?grant_type=refresh_token&client_id&client_secret&refresh_token answers
-- a new access_token (1 hour) and a new refresh_token (the old one is spent), with member_id,
-- client_endpoint, server_endpoint, scope, expires/expires_in, user_id; or an error:
-- invalid_grant (a spent or expired refresh token), invalid_client (wrong id or secret),
-- PAYMENT_REQUIRED, … (settings/oauth/error-codes.md). The secret and the tokens never appear in
-- an error.
local core = require "bitrix24.core"
local Error = require "bitrix24.error"

local type = type
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local string_match = string.match
local string_lower = string.lower
local string_format = string.format
local string_gsub = string.gsub
local string_byte = string.byte

local _M = {}

_M.SERVER = "https://oauth.bitrix.info"

-- RFC 3986 percent-encoding of a query value.
local function escape(s)
   return (string_gsub(s, "[^%w%-%._~]", function(c) return string_format("%%%02X", string_byte(c)) end))
end

-- The origin (scheme://host[:port]) of a URL, lower-cased, or nil.
function _M.origin(url)
   local o = type(url) == "string" and string_match(url, "^(%a[%w+.-]*://[^/?#]+)") or nil
   return o and string_lower(o) or nil
end

-- refresh{ server, client_id, client_secret, refresh_token, transport, timeout } → tokens | nil,
-- err. tokens: the server's answer (access_token, refresh_token, member_id, client_endpoint,
-- server_endpoint, scope, domain, user_id as a string, expires_in) with expires_at computed
-- (unix seconds, from `expires` or now + expires_in). err: a bitrix24.Error with the server's
-- code (invalid_grant, invalid_client, …), or "oauth_failed" for a transport failure or an
-- answer that is not tokens; retryable only for a transport failure or a 5xx.
function _M.refresh(opts)
   local masker = Error.masker({ opts.client_secret, opts.refresh_token })
   local url = opts.server .. "/oauth/token/?grant_type=refresh_token&client_id=" .. escape(opts.client_id)
      .. "&client_secret=" .. escape(opts.client_secret) .. "&refresh_token=" .. escape(opts.refresh_token)
   local res, msg, kind = opts.transport:request{ url = url, method = "GET", fresh = true,
      headers = { ["Accept"] = "application/json" }, timeout = opts.timeout }
   local where = _M.origin(opts.server) .. "/oauth/token/"
   if not res then
      return nil, Error.new{ code = "oauth_failed", retryable = true, url = where,
                             description = "the OAuth server cannot be reached: " .. masker(msg or kind) }
   end
   local ok, body = pcall(core.json_decode, res.body or "")
   if not ok or type(body) ~= "table" then
      return nil, Error.new{ code = "oauth_failed", status = res.status, url = where, retryable = res.status >= 500,
                             description = "the OAuth server's answer is not JSON" }
   end
   if body.error ~= nil then
      return nil, Error.new{ code = tostring(body.error), status = res.status, url = where,
                             retryable = res.status >= 500,
                             description = masker(body.error_description or body.error) }
   end
   if type(body.access_token) ~= "string" or body.access_token == "" or
      type(body.refresh_token) ~= "string" or body.refresh_token == "" then
      return nil, Error.new{ code = "oauth_failed", status = res.status, url = where,
                             description = "the OAuth server answered no tokens" }
   end
   local now = opts.now and opts.now() or os.time()
   body.expires_at = tonumber(body.expires) or (now + (tonumber(body.expires_in) or 3600))
   if body.user_id ~= nil then body.user_id = tostring(body.user_id) end
   return body
end

return _M
