-- bitrix24.hints: the errors of the REST API no retry can cure, and for each what the user
-- should do, in words (what CRest's messages do for PHP users). Codes and statuses from the
-- platform source (yuliai/bitrix-modules rest/classes/general/rest.php, rest/lib/restexception.php:
-- PORTAL_DELETED is thrown with STATUS_FORBIDDEN, 403; the docs say 500) and protocol.md §2.
local string_upper = string.upper
local string_match = string.match

local _M = {}

-- The scope a method needs, from its name (the portal's scopes: crm, task, user, im, …).
local SCOPES = {
   crm = "crm", tasks = "task", task = "task", user = "user", im = "im", imbot = "imbot",
   disk = "disk", sonet_group = "sonet_group", department = "department", calendar = "calendar",
   entity = "entity", lists = "lists", catalog = "catalog", sale = "sale", bizproc = "bizproc",
   telephony = "telephony", voximplant = "telephony", imopenlines = "imopenlines", log = "log",
   landing = "landing", documentgenerator = "documentgenerator", booking = "booking",
}

function _M.scope(method)
   local head = type(method) == "string" and string_match(method, "^([%a_]+)%.") or nil
   return head and SCOPES[head:lower()] or nil
end

-- code (upper case) → function(method) → the hint
local TERMINAL = {
   PORTAL_DELETED = function()
      return "the portal was deleted or moved: check its address in the webhook URL"
   end,
   INVALID_CREDENTIALS = function()
      return "the webhook's user number or code is wrong, or the webhook was deleted: copy its URL "
         .. "again from the portal (Developer resources > Other > Incoming webhook)"
   end,
   NO_AUTH_FOUND = function()
      return "the portal found no credentials in the request: check the webhook URL (a proxy that "
         .. "rewrites paths can drop them)"
   end,
   INSUFFICIENT_SCOPE = function(method)
      local scope = _M.scope(method)
      return "the webhook lacks the permission this method needs"
         .. (scope and (" (scope '" .. scope .. "')") or "")
         .. ": edit the webhook in the portal and tick it, then call again"
   end,
   ACCESS_DENIED = function()
      return "the webhook's user may not do this: give that user the rights, or use the webhook of "
         .. "a user who has them"
   end,
   WRONG_AUTH_TYPE = function()
      return "this method is for applications (OAuth), not for incoming webhooks"
   end,
   ERROR_METHOD_NOT_FOUND = function()
      return "the portal has no such method: check its spelling, that its module is installed, and "
         .. "that the URL is the webhook's (https://PORTAL/rest/USER/CODE/), not the portal's"
   end,
   OVERLOAD_LIMIT = function()
      return "the portal has blocked its REST API for overload: calls fail until it lifts the block; "
         .. "wait several minutes before trying again"
   end,
   EXPIRED_TOKEN = function()
      return "the access token has expired: refresh it"
   end,
   INVALID_TOKEN = function()
      return "the access token is not valid: get a new one"
   end,
}

-- Whether an error code is one no retry can cure.
function _M.terminal(code)
   return type(code) == "string" and TERMINAL[string_upper(code)] ~= nil
end

-- The hint for an error code and the method that got it, or nil.
function _M.hint(code, method)
   local f = type(code) == "string" and TERMINAL[string_upper(code)] or nil
   return f and f(method) or nil
end

return _M
