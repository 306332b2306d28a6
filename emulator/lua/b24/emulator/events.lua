-- b24.emulator.events: the outgoing webhooks of the emulated portal (protocol.md §6). Every
-- add/update/delete raises an event; each --events-to target subscribed to it (all events unless
-- --events names some) gets a POST, form-encoded field by field in the order a real portal
-- writes it (shared/vectors/events/webhook-*.form: keys with bare brackets, values urlencoded),
-- with the configured application token, through the post service the host injects (b24
-- emulate: b24.emulator.post, a fire-and-forget queue). As rest/lib/event/sender.php does, the
-- events one request raises are buffered (rest/lib/event/buffer.php: an identical one is kept
-- once) and sent after the answer (a background job). Deliveries are never retried; failures
-- are logged with the URL reduced to its origin; a drop fault loses a delivery after logging it.
-- The application's bindings (event.bind with its token, `--app`) get the same events, encoded
-- as http_build_query writes them, with the application's auth fields (a fresh access token).
local core = require "bitrix24.core"
local documented = require "bitrix24.events"

local error = error
local pcall = pcall
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local setmetatable = setmetatable
local string_format = string.format
local string_gsub = string.gsub
local string_byte = string.byte
local string_match = string.match
local string_sub = string.sub
local string_upper = string.upper
local table_concat = table.concat
local table_sort = table.sort
local os_time = os.time

local _M = {}
local mt = { __index = _M }

local FORM = "application/x-www-form-urlencoded"
local USER_AGENT = "Bitrix24 Webhook Engine"
_M.DEFAULT_TOKEN = "emu0dev0application0token000000"
_M.DEFAULT_DOMAIN = "emulator.bitrix24.test"
local SERVER_ENDPOINT = "https://oauth.bitrix.info/rest/"
-- the documented names, sorted: the order in which a target's handlers get their ids
local SORTED = {}
for name in pairs(documented.names) do SORTED[#SORTED + 1] = name end
table_sort(SORTED)

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

-- An event name pattern of --events, upper-cased: "ONCRMLEADADD", or a prefix ending in "*"
-- ("ONCRMDEAL*", "*" for all). nil, err naming the pattern when no documented event
-- (bitrix24.events, ONCRMDYNAMICITEM…_<entityTypeId> included) has that name or prefix.
function _M.pattern(text)
   local name = string_upper(text)
   local prefix = string_match(name, "^(.-)%*$")
   if prefix then
      if string_match(prefix, "^ONCRMDYNAMICITEM%u+_%d*$") then return name end
      for _, known in ipairs(SORTED) do
         if string_sub(known, 1, #prefix) == prefix then return name end
      end
      return nil, "no documented event starts with '" .. prefix .. "' (in '" .. text .. "')"
   end
   if documented.known(name) then return name end
   local near = documented.nearest(name)
   return nil, "unknown event '" .. text .. "'" .. (near and " (did you mean " .. near .. "?)" or "")
end

-- True when event `name` matches one of patterns (nil: every event).
local function subscribed(patterns, name)
   if not patterns then return true end
   for _, p in ipairs(patterns) do
      local prefix = string_match(p, "^(.-)%*$")
      if prefix then
         if string_sub(name, 1, #prefix) == prefix then return true end
      elseif p == name then
         return true
      end
   end
   return false
end

-- The CRM payload: data[FIELDS][ID], then the extra FIELDS (ENTITY_TYPE_ID first, the rest by
-- name): crm/lib/integration/rest/eventmanager.php processItemEvent sends ID and ENTITY_TYPE_ID
-- for a smart-process item.
function _M.crm_data(id, extra)
   local out = { { "[FIELDS][ID]", tostring(id) } }
   if extra then
      local names = {}
      for k in pairs(extra) do if k ~= "ID" then names[#names + 1] = k end end
      table_sort(names, function(a, b)
         if a == "ENTITY_TYPE_ID" or b == "ENTITY_TYPE_ID" then return a == "ENTITY_TYPE_ID" end
         return a < b
      end)
      for _, k in ipairs(names) do out[#out + 1] = { "[FIELDS][" .. k .. "]", tostring(extra[k]) } end
   end
   return out
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

-- The task comment payload for "ADD", "UPDATE" or "DELETE" of comment id on task task_id, as
-- tasks/classes/general/commentitem.php CTaskCommentItem::onEventFilter builds it: an ADD (the
-- task chat's, FormV2Feature on, as portals run it: shared/vectors/events/
-- webhook-ontaskcommentadd.form) has FIELDS_AFTER ID 0, MESSAGE_ID and TASK_ID; an UPDATE or
-- DELETE has FIELDS_BEFORE ID and TASK_ID, and FIELDS_AFTER with ACTION EDIT or DEL.
function _M.comment_data(action, id, task_id)
   id, task_id = tostring(id), tostring(task_id)
   if action == "ADD" then
      return { { "[FIELDS_BEFORE]", "undefined" }, { "[FIELDS_AFTER][ID]", "0" },
               { "[FIELDS_AFTER][MESSAGE_ID]", id }, { "[FIELDS_AFTER][TASK_ID]", task_id },
               { "[IS_ACCESSIBLE_BEFORE]", "N" }, { "[IS_ACCESSIBLE_AFTER]", "undefined" } }
   end
   return { { "[FIELDS_BEFORE][ID]", id }, { "[FIELDS_BEFORE][TASK_ID]", task_id },
            { "[FIELDS_AFTER][ID]", id }, { "[FIELDS_AFTER][TASK_ID]", task_id },
            { "[FIELDS_AFTER][ACTION]", action == "UPDATE" and "EDIT" or "DEL" },
            { "[IS_ACCESSIBLE_BEFORE]", "undefined" }, { "[IS_ACCESSIBLE_AFTER]", "undefined" } }
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

-- The handler id of target's binding to event `name`, as b_rest_event's ID: one row per
-- (handler, event), numbered in the order the bindings were made (targets in option order, a
-- target's documented events by name); an event bound later (a smart process's
-- ONCRMDYNAMICITEMADD_<entityTypeId>) gets the next free id then.
function _M:handler_id(target, name)
   local id = target.ids[name]
   if not id then
      self.last_id = self.last_id + 1
      id = self.last_id
      target.ids[name] = id
   end
   return id
end

-- Hands one body to the post service; a refusal (or a raise) is logged, never passed on. A
-- drop fault logs the delivery as sent and loses it.
function _M:deliver(url, body, name)
   if self.drop and self.drop() then
      self.log("debug", "event sent; lost by the drop fault", { event = name, url = origin(url) })
      return
   end
   local headers = { ["Content-Type"] = FORM, ["User-Agent"] = USER_AGENT }
   local ok, queued, reason = pcall(self.post, url, body, headers)
   if not ok then reason = queued end
   if not ok or not queued then
      self.log("warn", "event not queued", { url = origin(url), error = tostring(reason) })
   end
end

-- The body of one delivery to an application's handler (event.bind): as a webhook's, with the
-- application's auth fields (app_auth: a fresh access token, sender.php) and keys encoded as
-- http_build_query writes them (shared/vectors/events/app-oncrmcontactadd.form: brackets as %5B %5D).
function _M:app_body(name, handler_id, data, ts, user_id)
   local out = { "event=" .. urlencode(name), "event_handler_id=" .. urlencode(tostring(handler_id)) }
   for _, pair in ipairs(data) do out[#out + 1] = urlencode("data" .. pair[1]) .. "=" .. urlencode(pair[2]) end
   out[#out + 1] = "ts=" .. urlencode(tostring(ts))
   for _, pair in ipairs(self.app_auth(user_id)) do
      out[#out + 1] = urlencode("auth[" .. pair[1] .. "]") .. "=" .. urlencode(pair[2])
   end
   return table_concat(out, "&")
end

-- An application's binding (event.bind; rest/lib/event.php EventTable): a row { id, event,
-- handler ("" for offline), user_id (0: whoever raised the event), offline, connector (the
-- auth_connector it was bound with, "" for none), options ({ minTimeout } for ONOFFLINEEVENT) },
-- its id from the sequence the --events-to targets use (b_rest_event's). nil when the same row
-- exists (EventTable::checkUniq: application, event, handler, user, connector).
function _M:bind(event, handler, user_id, offline, connector, options)
   connector = connector or ""
   for _, b in ipairs(self.bindings) do
      if b.event == event and b.handler == handler and b.user_id == user_id and (b.connector or "") == connector then
         return nil
      end
   end
   self.last_id = self.last_id + 1
   local b = { id = self.last_id, event = event, handler = handler, user_id = user_id, offline = offline,
               connector = connector, options = options }
   self.bindings[#self.bindings + 1] = b
   return b
end

-- Deletes the bindings of event and handler (user_id: only that user's; nil: any; connector:
-- only that connector's, for an offline one; nil: any): the count (rest/lib/api/event.php
-- eventUnbind).
function _M:unbind(event, handler, user_id, connector)
   local kept, n = {}, 0
   for _, b in ipairs(self.bindings) do
      if b.event == event and b.handler == handler and (user_id == nil or b.user_id == user_id)
         and (connector == nil or (b.connector or "") == connector) then
         n = n + 1
      else
         kept[#kept + 1] = b
      end
   end
   self.bindings = kept
   return n
end

-- The buffer's key of a delivery: rest/lib/event/buffer.php compares [CLIENT_ID, EVENT_HANDLER,
-- EVENT_NAME, authData, data, additional] (sender.php Sender::call), not the handler's ID nor
-- ts: one application, one token, so the handler's URL, the event and its data.
local function key_of(url, name, data, app)
   local parts = { app and "app" or "webhook", url, name }
   for _, pair in ipairs(data) do parts[#parts + 1] = pair[1] .. "=" .. pair[2] end
   return table_concat(parts, "\0")
end

-- Raises event `name` with data (from crm_data, task_data or comment_data): a delivery to each
-- subscribed target, kept in the request's buffer (once per key) while one is open (begin),
-- posted at once otherwise.
function _M:emit(name, data)
   if #self.targets == 0 and #self.bindings == 0 then return end
   local ts = os_time()
   local buffer = self.buffer
   for _, target in ipairs(self.targets) do
      if subscribed(target.patterns, name) then
         local delivery = { url = target.url, name = name, id = self:handler_id(target, name), data = data, ts = ts }
         if buffer then
            local key = key_of(target.url, name, data)
            if not buffer.seen[key] then
               buffer.seen[key] = true
               buffer[#buffer + 1] = delivery
            end
         else
            self:deliver(target.url, self:body(name, delivery.id, data, ts), name)
         end
      end
   end
   -- the application's handlers (sender.php Sender::call: EVENT_HANDLER not empty is an online
   -- delivery; an offline binding goes to the offline queue: self.offline, set by the portal)
   for _, b in ipairs(self.bindings) do
      if b.event == name and b.offline then
         if self.offline then self.offline(name, data, b) end
      elseif b.event == name then
         local delivery = { app = true, url = b.handler, name = name, id = b.id, data = data, ts = ts,
                            user_id = b.user_id }
         if buffer then
            local key = key_of(b.handler, name, data, true) .. "\0" .. tostring(b.user_id)
            if not buffer.seen[key] then
               buffer.seen[key] = true
               buffer[#buffer + 1] = delivery
            end
         else
            self:deliver(b.handler, self:app_body(name, b.id, data, ts, b.user_id), name)
         end
      end
   end
end

-- Opens the buffer of one request (rest/lib/event/buffer.php: one per hit, batch sub-calls
-- included).
function _M:begin()
   self.buffer = { seen = {} }
end

-- Sends what the request buffered, in the order raised, and closes the buffer (sender.php
-- Sender::send, the background job that runs after the answer).
function _M:flush()
   local buffer = self.buffer
   self.buffer = nil
   if not buffer then return end
   for _, d in ipairs(buffer) do
      if d.app then
         self:deliver(d.url, self:app_body(d.name, d.id, d.data, d.ts, d.user_id), d.name)
      else
         self:deliver(d.url, self:body(d.name, d.id, d.data, d.ts), d.name)
      end
   end
end

-- opts: urls (list), subscriptions (url index -> list of patterns; none: every event), token,
-- domain, member_id, post (fn(url, body, headers) -> true | nil, reason; needed when there are
-- urls), log (fn(level, msg, fields)), drop (fn() -> true when a delivery is lost), app_auth
-- (fn(user_id) -> the auth pairs of an application's delivery; needed for bindings). Raises
-- error(msg, 0) for urls without a post service or a bad pattern.
function _M.new(opts)
   local urls = opts.urls or {}
   if #urls > 0 and not opts.post then
      error("--events-to needs a host that posts events (b24 emulate, or a post service)", 0)
   end
   local domain = opts.domain or _M.DEFAULT_DOMAIN
   local self = setmetatable({
      targets = {},
      token = opts.token or _M.DEFAULT_TOKEN,
      domain = domain,
      member_id = opts.member_id or string_sub(core.sha256("member:" .. domain, "hex"), 1, 32),
      post = opts.post,
      log = opts.log,
      drop = opts.drop,
      app_auth = opts.app_auth,
      bindings = {},
      last_id = 0,
   }, mt)
   local subscriptions = opts.subscriptions or {}
   for i, url in ipairs(urls) do
      local patterns
      if subscriptions[i] then
         patterns = {}
         for j, text in ipairs(subscriptions[i]) do
            local p, err = _M.pattern(text)
            if not p then error("--events: " .. err, 0) end
            patterns[j] = p
         end
      end
      local target = { url = url, patterns = patterns, ids = {} }
      for _, name in ipairs(SORTED) do
         if subscribed(patterns, name) then self:handler_id(target, name) end
      end
      self.targets[i] = target
   end
   return self
end

return _M
