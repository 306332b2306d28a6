-- bitrix24.webhook: what a user pastes as an incoming-webhook URL, read the way the portal shows
-- it, reduced to the base the client calls, or refused in one line that says what is wrong.
--
-- The portal's form for a webhook (Developer resources → Other → Incoming webhook) shows
-- https://PORTAL/rest/USER/CODE/ and, as an example call, https://PORTAL/rest/USER/CODE/profile.json
-- or …/CODE/crm.lead.add: all of them, with or without the trailing slash, name the same webhook.
-- The code is the secret: it never appears in an error of this module (the masked form,
-- …/rest/USER/***/, does).
local string_match = string.match
local string_find = string.find
local string_lower = string.lower
local string_sub = string.sub

local _M = {}

local EXAMPLE = "https://your-portal.bitrix24.com/rest/1/<code>/"

-- The URL with a webhook code (and any user:password@) in it hidden.
local function masked(url)
   url = url:gsub("^(%a[%w+.-]*://)[^/?#]*@", "%1***@", 1)
   return (url:gsub("(/rest/[^/]+/)[^/?#]+", "%1***", 1))
end

-- A refused URL as an error shows it: its origin (no user:password) and its path only when
-- that is "/" (a code may sit anywhere in a path this module cannot read).
local function shown(url)
   local origin, path = string_match(masked(url), "^([^/]*//[^/?#]*)(.*)$")
   if not origin then return "the URL" end
   if path == "" or path == "/" then return origin .. path end
   return origin .. "/…"
end

local function refuse(url, why)
   return nil, ("%s is not an incoming-webhook URL: %s; a webhook URL looks like %s"):format(
      shown(url), why, EXAMPLE)
end

-- parse(url [, endpoint_ok]) → { base, origin, user, code, masked } | nil, message
-- base is origin .. "/rest/USER/CODE/". With endpoint_ok (a client given an OAuth access
-- token), an application's REST endpoint https://PORTAL/rest/ is taken too (user, code nil).
function _M.parse(url, endpoint_ok)
   if type(url) ~= "string" or url == "" then return nil, "no webhook URL given; it looks like " .. EXAMPLE end
   local scheme, host, path = string_match(url, "^(%a[%w+.-]*)://([^/?#]*)(.*)$")
   if not scheme then return refuse(url, "it has no http:// or https:// and host") end
   scheme = string_lower(scheme)
   if scheme ~= "https" and scheme ~= "http" then return refuse(url, "its scheme is " .. scheme) end
   if host == "" or string_find(host, "@", 1, true) then
      return refuse(url, host == "" and "it has no host" or "it carries a user name or password")
   end
   if string_find(path, "[?#]") then return refuse(url, "it has a query or fragment") end
   local origin = scheme .. "://" .. host
   if endpoint_ok and (path == "/rest" or path == "/rest/") then
      return { base = origin .. "/rest/", origin = origin, masked = origin .. "/rest/" }
   end
   if path == "" or path == "/" then return refuse(url, "it is the portal's address, without /rest/USER/CODE/") end
   local user, code, rest = string_match(path, "^/rest/([^/]*)/?([^/]*)(.*)$")
   if not user then return refuse(url, "its path does not start with /rest/") end
   if user == "" or not string_match(user, "^%d+$") then
      return refuse(url, "the part after /rest/ must be the user's number")
   end
   if code == "" then return refuse(url, "there is no webhook code after /rest/" .. user .. "/") end
   if not string_match(code, "^[%w_-]+$") then return refuse(url, "the webhook code has characters no code has") end
   -- what may follow the code: nothing, "/", or one method (profile.json, crm.lead.add, …)
   if rest ~= "" and rest ~= "/" and not string_match(rest, "^/[%a][%w_.]*/?$") then
      return refuse(url, "after the code comes at most one method name")
   end
   local base = origin .. "/rest/" .. user .. "/" .. code .. "/"
   return {
      base = base, origin = origin, user = user, code = code,
      masked = origin .. "/rest/" .. user .. "/***/",
   }
end

_M.masked = masked

-- The Bitrix24 cloud zone of a host (its part from "bitrix24." on: "bitrix24.ru",
-- "bitrix24.com.br"), or nil for a host of no cloud zone (an on-premise portal).
local function zone(host)
   host = string_lower((host:gsub(":%d+$", "")))
   return string_match(host, "%.(bitrix24%.%a+%.%a+)$") or string_match(host, "%.(bitrix24%.%a+)$")
end

-- redirect(hook, location) → the base to follow a 3xx to, or nil, why. hook is parse's table
-- (the webhook the request went to), location the Location header (absolute, or a path). The
-- code is in the path, so a redirect is followed only when it keeps https, keeps the path
-- /rest/USER/CODE/… and goes to the same host or another host of the same Bitrix24 cloud zone (a
-- renamed portal); a plain-http webhook (a local portal) only to its own host. why names the
-- new location with the code masked.
function _M.redirect(hook, location)
   if type(location) ~= "string" or location == "" then return nil, "a redirect without a Location" end
   if string_sub(location, 1, 1) == "/" and string_sub(location, 2, 2) ~= "/" then
      location = hook.origin .. location
   end
   local scheme, host, path = string_match(location, "^(%a[%w+.-]*)://([^/?#]*)([^?#]*)")
   local where = "the portal redirects to " .. shown(location)
   if not scheme then return nil, where .. ", not a URL" end
   scheme = string_lower(scheme)
   local prefix = "/rest/" .. (hook.user or "") .. "/" .. (hook.code or "") .. "/"
   if not hook.code or string_sub(path, 1, #prefix) ~= prefix then
      return nil, where .. ", away from this webhook's /rest/ path: not followed (the code is in the path)"
   end
   local origin = scheme .. "://" .. host
   local old_scheme, old_host = string_match(hook.origin, "^(%a[%w+.-]*)://(.*)$")
   if origin == hook.origin then return hook.base end
   if scheme ~= "https" then return nil, where .. ", not https: not followed" end
   -- the same host over https (an upgrade from http too), or another host of the zone from https
   local same_zone = zone(host) ~= nil and zone(host) == zone(old_host) and string_lower(old_scheme) == "https"
   if not (string_lower(host) == string_lower(old_host) or same_zone) then
      return nil, where .. ", another site: not followed (the webhook URL may have changed: copy it again "
         .. "from the portal)"
   end
   return origin .. prefix
end

return _M
