-- bitrix24.event: one Bitrix24 outgoing-webhook delivery, decoded from its raw body (form or
-- JSON) into an event object, and the *.get call that fetches the object it is about. Failures
-- are `nil, bitrix24.Error` (code: what went wrong, description: the reason in words).
local core = require "bitrix24.core"
local Error = require "bitrix24.error"
local cjson = require("cjson.safe").new()

local type = type
local error = error
local pcall = pcall
local tostring = tostring
local setmetatable = setmetatable
local string_lower = string.lower
local string_upper = string.upper
local string_match = string.match
local string_sub = string.sub
local string_find = string.find
local form_decode = core.form_decode
local form_encode = core.form_encode

cjson.decode_invalid_numbers(false)

local _M = {}
local mt = { __index = _M } -- an event's own fields (name, id, data, …) never clash with these

local FORM = "application/x-www-form-urlencoded"
local JSON = "application/json"

local DEFAULT_LIMITS = { max_depth = 64, max_pairs = 10000, max_size = 1048576 }

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

-- "form", "json", or nil for a content type events do not come in.
function _M.content_kind(content_type)
   local media = media_type(content_type)
   if media == FORM then return "form" end
   if media == JSON then return "json" end
   return nil
end

-- "add", "update", "delete" or "other", from the tail of an event name (upper case).
function _M.kind(name)
   if type(name) ~= "string" then return "other" end
   if string_match(name, "ADD$") then return "add" end
   if string_match(name, "UPDATE$") then return "update" end
   if string_match(name, "DELETE$") then return "delete" end
   return "other"
end

-- The ID of the object an event is about: FIELDS.ID for CRM, FIELDS_AFTER.ID (tasks), then
-- FIELDS_BEFORE.ID (task deletes). Kept as sent, "undefined" included; nil when absent.
local function object_id(data)
   if type(data) ~= "table" then return nil end
   local sections = { "FIELDS", "FIELDS_AFTER", "FIELDS_BEFORE" }
   for i = 1, #sections do
      local section = data[sections[i]]
      if type(section) == "table" and type(section.ID) == "string" then return section.ID end
   end
   return nil
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
   local event = {
      name = string_upper(name),
      id = object_id(fields.data),
      data = fields.data,
      auth = auth,
      ts = type(ts) == "string" and ts or nil,
      domain = type(domain) == "string" and domain or nil,
      member_id = type(member_id) == "string" and member_id or nil,
      raw = raw,
   }
   return setmetatable(event, mt)
end

-- Decodes a JSON body into the table its form body would give: the JSON is form-encoded and the
-- form decoded again, so both kinds of body give equal events under the same limits.
local function decode_json(raw, limits)
   cjson.decode_max_depth((limits.max_depth or DEFAULT_LIMITS.max_depth) + 1)
   local value = cjson.decode(raw)
   if value == nil then return nil, "body is not valid JSON", "malformed" end
   if type(value) ~= "table" then return nil, "body is not a JSON object", "malformed" end
   local form_limits = {
      max_depth = limits.max_depth, max_pairs = limits.max_pairs,
      -- the form of a JSON body can be longer than the body itself: a form length limit
      -- would only reject what the raw size check already let through
      max_size = 2147483647,
   }
   -- form_encode raises only on values JSON cannot carry but cjson can give (1e999 is infinite)
   local ok, form = pcall(form_encode, value)
   if not ok then return nil, "body holds a number out of range", "malformed" end
   return form_decode(form, form_limits)
end

-- Decodes a raw body of the given Content-Type into an event.
-- limits: { max_depth, max_pairs, max_size } as form_decode takes them.
-- Returns event, or nil, err with err.code one of "unsupported" (content type), "too_large",
-- "too_many", "too_deep", "malformed".
function _M.parse(raw, content_type, limits)
   if type(raw) ~= "string" then error("bad argument #1 to 'parse' (string expected)", 2) end
   limits = limits or DEFAULT_LIMITS
   local content = _M.content_kind(content_type)
   if content == nil then return failure("unsupported", "content type is not form or JSON") end
   local fields, msg, kind
   if content == "form" then
      fields, msg, kind = form_decode(raw, limits)
   else
      if limits.max_size and #raw > limits.max_size then
         return failure("too_large", "body is over the size limit")
      end
      fields, msg, kind = decode_json(raw, limits)
   end
   if fields == nil then return failure(kind or "malformed", msg) end
   return _M.new(fields, raw)
end

-- The REST method and parameters that fetch the object of an event, or nil, err (code
-- "no_object" for a delete or an event without an object ID, "no_get_method" otherwise).
function _M.fetch_call(name, id)
   if type(name) ~= "string" then return failure("no_get_method", "no event name") end
   if _M.kind(name) == "delete" then return failure("no_object", name .. " is a delete: the object is gone") end
   if type(id) ~= "string" or id == "" or id == "undefined" then
      return failure("no_object", name .. " carries no object ID")
   end
   local entity = string_match(name, "^ONCRM(%u+)ADD$") or string_match(name, "^ONCRM(%u+)UPDATE$")
   if entity and CRM_GET[entity] then return CRM_GET[entity], { id = id } end
   if name == "ONTASKADD" or name == "ONTASKUPDATE" then return "tasks.task.get", { taskId = id } end
   return failure("no_get_method", "no get method known for " .. name)
end

-- event:fetch(client): fetches the object the event is about with client:call(method, params)
-- and returns what that returns; nil, err without calling for a delete or an event with no
-- known get method.
function _M.fetch(self, client)
   if type(client) ~= "table" and type(client) ~= "userdata" then
      error("bad argument #1 to 'fetch' (a REST client expected)", 2)
   end
   local method, params = _M.fetch_call(self.name, self.id)
   if method == nil then return nil, params end
   return client:call(method, params)
end

function mt.__tostring(self)
   return "bitrix24.event " .. tostring(self.name) .. " " .. tostring(self.id)
end

return _M
