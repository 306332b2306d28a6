-- b24.emulator.events: the outgoing webhooks of the emulated portal (protocol.md §6). Every
-- add/update/delete POSTs an event, form-encoded field by field in the order a real portal writes
-- it (shared/vectors/events/webhook-*.form: keys with bare brackets, values urlencoded), with the
-- configured application token, to each --events-to URL, through the post service the host
-- injects (b24 emulate: b24.emulator.post, a fire-and-forget queue). Deliveries are never
-- retried; failures are logged with the URL reduced to its origin.
local core = require "bitrix24.core"

local error = error
local pcall = pcall
local ipairs = ipairs
local tostring = tostring
local setmetatable = setmetatable
local string_format = string.format
local string_gsub = string.gsub
local string_byte = string.byte
local string_match = string.match
local string_sub = string.sub
local table_concat = table.concat
local os_time = os.time

local _M = {}
local mt = { __index = _M }

local FORM = "application/x-www-form-urlencoded"
local USER_AGENT = "Bitrix24 Webhook Engine"
_M.DEFAULT_TOKEN = "emu0dev0application0token000000"
_M.DEFAULT_DOMAIN = "emulator.bitrix24.test"
local SERVER_ENDPOINT = "https://oauth.bitrix.info/rest/"

-- PHP urlencode: alphanumerics and -_. stay, a space becomes +, the rest %XX.
local function urlencode(s)
   s = string_gsub(s, "[^%w%-_%. ]", function(c) return string_format("%%%02X", string_byte(c)) end)
   return (string_gsub(s, " ", "+"))
end
_M.urlencode = urlencode

-- The origin of a URL (scheme://host:port), enough to tell deliveries apart in a log without
-- printing a path or query that may hold a secret.
local function origin(url)
   return (string_match(url, "^(%a[%w+.-]*://[^/?#]+)") or "?") .. "/…"
end
_M.origin = origin

-- The CRM payload: data[FIELDS][ID].
function _M.crm_data(id)
   return { { "[FIELDS][ID]", tostring(id) } }
end

-- The task payload of protocol.md §6 for "ADD", "UPDATE" or "DELETE".
function _M.task_data(action, id)
   id = tostring(id)
   if action == "ADD" then
      return { { "[FIELDS_BEFORE]", "undefined" }, { "[FIELDS_AFTER][ID]", id },
               { "[IS_ACCESSIBLE_BEFORE]", "N" }, { "[IS_ACCESSIBLE_AFTER]", "undefined" } }
   elseif action == "UPDATE" then
      return { { "[FIELDS_BEFORE][ID]", id }, { "[FIELDS_AFTER][ID]", id },
               { "[IS_ACCESSIBLE_BEFORE]", "undefined" }, { "[IS_ACCESSIBLE_AFTER]", "undefined" } }
   end
   return { { "[FIELDS_BEFORE][ID]", id }, { "[FIELDS_AFTER]", "undefined" },
            { "[IS_ACCESSIBLE_BEFORE]", "undefined" }, { "[IS_ACCESSIBLE_AFTER]", "N" } }
end

-- The body of one delivery: event, event_handler_id, data[…], ts, auth[…] in a portal's order.
function _M:body(name, handler_id, data, ts)
   local out = { "event=" .. urlencode(name), "event_handler_id=" .. urlencode(tostring(handler_id)) }
   for _, pair in ipairs(data) do out[#out + 1] = "data" .. pair[1] .. "=" .. urlencode(pair[2]) end
   out[#out + 1] = "ts=" .. urlencode(tostring(ts))
   local auth = {
      { "domain", self.domain }, { "client_endpoint", "https://" .. self.domain .. "/rest/" },
      { "server_endpoint", SERVER_ENDPOINT }, { "member_id", self.member_id },
      { "application_token", self.token },
   }
   for _, pair in ipairs(auth) do out[#out + 1] = "auth[" .. pair[1] .. "]=" .. urlencode(pair[2]) end
   return table_concat(out, "&")
end

-- Hands one body to the post service; a refusal (or a raise) is logged, never passed on.
function _M:deliver(url, body)
   local headers = { ["Content-Type"] = FORM, ["User-Agent"] = USER_AGENT }
   local ok, queued, reason = pcall(self.post, url, body, headers)
   if not ok then reason = queued end
   if not ok or not queued then
      self.log("warn", "event not queued", { url = origin(url), error = tostring(reason) })
   end
end

-- Posts event `name` with data (from crm_data or task_data) to every URL.
function _M:emit(name, data)
   if #self.urls == 0 then return end
   local ts = os_time()
   for i, url in ipairs(self.urls) do
      self:deliver(url, self:body(name, self.handler_base + i, data, ts))
   end
end

-- opts: urls (list), token, domain, member_id, post (fn(url, body, headers) -> true | nil, reason;
-- needed when there are urls), log (fn(level, msg, fields)). Raises error(msg, 0) for urls
-- without a post service.
function _M.new(opts)
   local urls = opts.urls or {}
   if #urls > 0 and not opts.post then
      error("--events-to needs a host that posts events (b24 emulate, or a post service)", 0)
   end
   local domain = opts.domain or _M.DEFAULT_DOMAIN
   return setmetatable({
      urls = urls,
      token = opts.token or _M.DEFAULT_TOKEN,
      domain = domain,
      member_id = opts.member_id or string_sub(core.sha256("member:" .. domain, "hex"), 1, 32),
      post = opts.post,
      log = opts.log,
      handler_base = 0,
   }, mt)
end

return _M
