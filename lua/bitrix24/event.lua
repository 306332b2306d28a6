-- bitrix24.event: one Bitrix24 outgoing-webhook delivery, decoded from its raw body (form or
-- JSON) into an event object, and the *.get call that fetches the object it is about. Failures
-- are `nil, bitrix24.Error` (code: what went wrong, description: the reason in words).
local core = require "bitrix24.core"
local Error = require "bitrix24.error"

local type = type
local error = error
local setmetatable = setmetatable
local string_lower = string.lower
local string_upper = string.upper
local string_match = string.match
local string_sub = string.sub
local string_find = string.find
local form_decode = core.form_decode
local json_decode = core.json_decode

local _M = {}
local mt = { __index = _M } -- an event's own fields (name, id, data, …) never clash with these

local FORM = "application/x-www-form-urlencoded"
local JSON = "application/json"

-- max_pairs: PHP's own default max_input_vars (php.ini), the most any PHP handler of these
-- events reads; a delivery has tens. It keeps a body of short keys from costing its table.
local DEFAULT_LIMITS = { max_depth = 64, max_pairs = 1000, max_size = 1048576 }

-- CRM entity of ONCRM<ENTITY>ADD|UPDATE|DELETE -> its get method; anything else is unknown,
-- so ONCRMDEALUSERFIELDADD and the like are never mistaken for a deal.
local CRM_GET = {
   LEAD = "crm.lead.get",
   DEAL = "crm.deal.get",
   CONTACT = "crm.contact.get",
   COMPANY = "crm.company.get",
   QUOTE = "crm.quote.get",
   INVOICE = "crm.invoice.get",
   ACTIVITY = "crm.activity.get",
   PRODUCT = "crm.product.get",
}

-- The media type of a Content-Type header value, lower case, without parameters.
local function media_type(content_type)
   if type(content_type) ~= "string" then return nil end
   local semicolon = string_find(content_type, ";", 1, true)
   if semicolon then content_type = string_sub(content_type, 1, semicolon - 1) end
   return string_lower(string_match(content_type, "^%s*(.-)%s*$"))
end

-- The last content type seen and its kind: a router asks three times a delivery (accept, the
-- token's scan, the parse), and a sender sends one value (docs/performance.md).
local last_type, last_kind

-- "form", "json", or nil for a content type events do not come in.
function _M.content_kind(content_type)
   if content_type == last_type and content_type ~= nil then return last_kind end
   local media = media_type(content_type)
   local kind = nil
   if media == FORM then
      kind = "form"
   elseif media == JSON then
      kind = "json"
   end
   if type(content_type) == "string" then last_type, last_kind = content_type, kind end
   return kind
end

-- Kinds of the names seen, so the three matches run once a name; bounded, as names come from
-- senders (verified ones, but a portal has hundreds of events at most).
local kinds, kinds_count = {}, 0

-- "add", "update", "delete" or "other", from the tail of an event name (upper case).
function _M.kind(name)
   if type(name) ~= "string" then return "other" end
   local kind = kinds[name]
   if kind then return kind end
   if string_match(name, "ADD$") then
      kind = "add"
   elseif string_match(name, "UPDATE$") then
      kind = "update"
   elseif string_match(name, "DELETE$") then
      kind = "delete"
   else
      kind = "other"
   end
   if kinds_count >= 1000 then kinds, kinds_count = {}, 0 end
   kinds[name], kinds_count = kind, kinds_count + 1
   return kind
end

-- The section naming the object an event is about: FIELDS for CRM, FIELDS_AFTER (tasks),
-- then FIELDS_BEFORE (task deletes); nil when none has an ID.
local SECTIONS = { "FIELDS", "FIELDS_AFTER", "FIELDS_BEFORE" }

local function object_fields(data)
   if type(data) ~= "table" then return nil end
   for i = 1, #SECTIONS do
      local section = data[SECTIONS[i]]
      if type(section) == "table" and type(section.ID) == "string" then return section end
   end
   return nil
end

local function string_or_nil(v)
   if type(v) == "string" then return v end
   return nil
end

-- id, task_id, entity_type_id of an event's object, kept as sent ("undefined" included).
-- A task comment (ONTASKCOMMENT*) is the comment: MESSAGE_ID where the portal sends it (its
-- ID is then "0"), else ID, with TASK_ID beside it; a smart-process item
-- (ONCRMDYNAMICITEM*) has the ENTITY_TYPE_ID its ID sequence belongs to.
local function object_of(name, data)
   local fields = object_fields(data)
   if fields == nil then return nil end
   if string_sub(name, 1, 13) == "ONTASKCOMMENT" then
      local message = string_or_nil(fields.MESSAGE_ID)
      local id = fields.ID
      if message and message ~= "" and message ~= "0" then id = message end
      return id, string_or_nil(fields.TASK_ID), nil
   end
   if string_sub(name, 1, 16) == "ONCRMDYNAMICITEM" then
      return fields.ID, nil, string_or_nil(fields.ENTITY_TYPE_ID)
   end
   return fields.ID, nil, nil
end

local function failure(code, description)
   return nil, Error.new{ code = code, description = description }
end

-- Builds the event object from a decoded delivery (the table form_decode gives) and its raw body;
-- nil, err (code "malformed") when the table is not an event.
function _M.new(fields, raw)
   if type(fields) ~= "table" then return failure("malformed", "body is not a table of fields") end
   local name = fields.event
   if name == nil then return failure("malformed", "no 'event' field in the body") end
   if type(name) ~= "string" or name == "" then return failure("malformed", "the 'event' field is not a name") end
   local auth = fields.auth
   if type(auth) ~= "table" then auth = {} end
   local domain, member_id = auth.domain, auth.member_id
   local ts = fields.ts
   name = string_upper(name)
   local id, task_id, entity_type_id = object_of(name, fields.data)
   local event = {
      name = name,
      id = id,
      task_id = task_id,
      entity_type_id = entity_type_id,
      data = fields.data,
      auth = auth,
      ts = type(ts) == "string" and ts or nil,
      domain = type(domain) == "string" and domain or nil,
      member_id = type(member_id) == "string" and member_id or nil,
      -- a row of the offline queue (bitrix24.offline): { id, message_id, process_id, timestamp }
      offline = type(fields.offline) == "table" and fields.offline or nil,
      -- a delivery bitrix24.reconcile synthesized for a change the push channel lost (reconciled=1)
      reconciled = (fields.reconciled == "1" or fields.reconciled == 1 or fields.reconciled == true) or nil,
      raw = raw,
   }
   return setmetatable(event, mt)
end

-- Whether raw is valid JSON that is no container (a number, string, true, false or null).
local function cjson_scalar(raw)
   return json_decode(raw, { max_size = #raw + 1 }) ~= nil
end

-- The decoders' options made for a limits table, by only and form: a router passes the same
-- limits with every delivery, so its options are built once, not twice a delivery. Weak keys:
-- a limits table dropped takes its options with it; one changed since is seen and made anew.
local options_cache = setmetatable({}, { __mode = "k" })

-- The decoders' options for limits (and only: the one top-level name to build).
local function options(limits, only, form)
   local slot = only or ""
   if form then slot = slot .. "|form" end
   local made = options_cache[limits]
   local opts = made and made[slot]
   if opts and opts.max_depth == (limits.max_depth or DEFAULT_LIMITS.max_depth)
      and opts.max_pairs == (limits.max_pairs or DEFAULT_LIMITS.max_pairs)
      and opts.max_size == (limits.max_size or DEFAULT_LIMITS.max_size)
      and opts.max_memory == limits.max_memory then
      return opts
   end
   opts = {
      form = form,
      only = only,
      max_depth = limits.max_depth or DEFAULT_LIMITS.max_depth,
      max_pairs = limits.max_pairs or DEFAULT_LIMITS.max_pairs,
      max_size = limits.max_size or DEFAULT_LIMITS.max_size,
      max_memory = limits.max_memory,
   }
   if not made then
      made = {}
      options_cache[limits] = made
   end
   made[slot] = opts
   return opts
end

-- Decodes a JSON body into the table its form body would give (form_decode of its
-- form_encode), with the limits applied while parsing, so both kinds of body give equal events
-- under the same limits and a JSON body never builds what it would then refuse.
local function decode_json(raw, limits, only)
   local value, msg, kind = json_decode(raw, options(limits, only, true))
   if value == nil then
      if kind == "malformed" then
         -- the form of a JSON scalar is refused as malformed too: say which it is
         local first = string_match(raw, "^[ \t\r\n]*(.)")
         if first and first ~= "{" and first ~= "[" and cjson_scalar(raw) then
            return nil, "body is not a JSON object", kind
         end
         return nil, "body is not valid JSON", kind
      end
      return nil, msg, kind
   end
   if type(value) ~= "table" then return nil, "body is not a JSON object", "malformed" end
   return value
end

-- The table of fields of a raw body of the given Content-Type (only: that top-level name
-- alone), or nil, err.
local function decode(raw, content_type, limits, only)
   local content = _M.content_kind(content_type)
   if content == nil then return failure("unsupported", "content type is not form or JSON") end
   local fields, msg, kind
   if content == "form" then
      fields, msg, kind = form_decode(raw, options(limits, only))
   else
      if limits.max_size and #raw > limits.max_size then
         return failure("too_large", "body is over the size limit")
      end
      fields, msg, kind = decode_json(raw, limits, only)
   end
   if fields == nil then return failure(kind or "malformed", msg) end
   return fields
end

-- The table of fields of a raw body of the given Content-Type, as parse decodes it under the
-- same limits (nil, err as parse fails): a router that decodes a small body once, before its
-- token, reads the auth fields (auth_of), the name (name_of) and the event (new) from it.
function _M.decode(raw, content_type, limits)
   if type(raw) ~= "string" then error("bad argument #1 to 'decode' (string expected)", 2) end
   return decode(raw, content_type, limits or DEFAULT_LIMITS)
end

-- The auth fields of a decoded body: a table, empty when it has none.
local function auth_of(fields)
   local auth = fields.auth
   if type(auth) ~= "table" then auth = {} end
   return auth
end
_M.auth_of = auth_of

-- The upper-cased event name of a decoded body, "" when it has none.
local function name_of(fields)
   local name = fields.event
   return type(name) == "string" and string_upper(name) or ""
end
_M.name_of = name_of

-- The auth fields of a raw body (a table, empty when it has none), exactly as parse would
-- find them (the decoders' `only`: the pairs or members of other top-level names are counted,
-- and checked as far as the limits go, but never built), so a token is checked before a
-- stranger's body costs more than its scan. nil, err as parse fails; where the whole body
-- breaks a limit this call does not see (the depth outside auth), parse refuses it later.
function _M.auth(raw, content_type, limits)
   if type(raw) ~= "string" then error("bad argument #1 to 'auth' (string expected)", 2) end
   local fields, err = decode(raw, content_type, limits or DEFAULT_LIMITS, "auth")
   if fields == nil then return nil, err end
   return auth_of(fields)
end

-- The event name of a raw body, from its `event` field alone (upper-cased; "" when it has
-- none), or nil, err as parse gives it: what a router needs to know before it checks a token.
function _M.name(raw, content_type, limits)
   if type(raw) ~= "string" then error("bad argument #1 to 'name' (string expected)", 2) end
   local fields, err = decode(raw, content_type, limits or DEFAULT_LIMITS, "event")
   if fields == nil then return nil, err end
   return name_of(fields)
end

-- Decodes a raw body of the given Content-Type into an event.
-- limits: { max_depth, max_pairs, max_size } as form_decode takes them.
-- Returns event, or nil, err with err.code one of "unsupported" (content type), "too_large",
-- "too_many", "too_deep", "malformed".
function _M.parse(raw, content_type, limits)
   if type(raw) ~= "string" then error("bad argument #1 to 'parse' (string expected)", 2) end
   local fields, err = decode(raw, content_type, limits or DEFAULT_LIMITS)
   if fields == nil then return nil, err end
   return _M.new(fields, raw)
end

-- The REST method and parameters that fetch the object of an event, and the key its result
-- wraps the object in (tasks.task.get answers {task = …}, crm.item.get {item = …}), or nil,
-- err (code "no_object" for a delete or an event without an object ID, "no_get_method"
-- otherwise). object: { entity_type_id, task_id } of the event (smart-process items and task
-- comments need them).
function _M.fetch_call(name, id, object)
   if type(name) ~= "string" then return failure("no_get_method", "no event name") end
   if _M.kind(name) == "delete" then return failure("no_object", name .. " is a delete: the object is gone") end
   if type(id) ~= "string" or id == "" or id == "undefined" then
      return failure("no_object", name .. " carries no object ID")
   end
   object = object or {}
   local entity = string_match(name, "^ONCRM(%u+)ADD$") or string_match(name, "^ONCRM(%u+)UPDATE$")
   if entity and CRM_GET[entity] then return CRM_GET[entity], { id = id } end
   if name == "ONTASKADD" or name == "ONTASKUPDATE" then return "tasks.task.get", { taskId = id }, "task" end
   if (name == "ONCRMDYNAMICITEMADD" or name == "ONCRMDYNAMICITEMUPDATE") and object.entity_type_id then
      return "crm.item.get", { entityTypeId = object.entity_type_id, id = id }, "item"
   end
   if (name == "ONTASKCOMMENTADD" or name == "ONTASKCOMMENTUPDATE") and object.task_id then
      return "task.commentitem.get", { TASKID = object.task_id, ITEMID = id }
   end
   return failure("no_get_method", "no get method known for " .. name)
end

-- event:fetch(client): the object the event is about, itself (a task as the task, a smart-
-- process item as the item), fetched with client:call; nil and the client's error when the
-- call fails; nil, err without calling for a delete or an event with no known get method; nil,
-- err (code "not_found") when the portal answers with no object (tasks.task.get gives [] for a
-- task that is gone or hidden).
function _M.fetch(self, client)
   if type(client) ~= "table" and type(client) ~= "userdata" then
      error("bad argument #1 to 'fetch' (a REST client expected)", 2)
   end
   local method, params, wrapper = _M.fetch_call(self.name, self.id, self)
   if method == nil then return nil, params end
   local result, err = client:call(method, params)
   if result == nil then return nil, err end
   if wrapper then
      local inner = type(result) == "table" and result[wrapper] or nil
      if type(inner) ~= "table" then
         return failure("not_found", method .. " gave no " .. wrapper .. " for " .. self.id)
      end
      result = inner
   end
   return result
end

return _M
