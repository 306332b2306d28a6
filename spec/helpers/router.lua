-- The router specs' fixtures: the captured deal and contact deliveries (../shared/vectors), the
-- Standard Webhooks vector, requests as a host hands them to router:accept, and recorders for
-- handler calls and log lines.
local core = require "bitrix24.core"
local cjson = require("cjson.safe").new()
local shared = require "helpers.shared"

local M = {}
local read = shared.read

M.FORM = "application/x-www-form-urlencoded"
M.JSON = "application/json"

M.VECTORS = shared.dir .. "/vectors/"
M.DEAL_JSON = read(M.VECTORS .. "events/webhook-oncrmdealadd.json")
M.DEAL = assert(cjson.decode(M.DEAL_JSON))
M.DEAL_FORM = core.form_encode(M.DEAL)
M.DEAL_TOKEN = M.DEAL.auth.application_token
M.DEAL_MEMBER = M.DEAL.auth.member_id
M.DEAL_DOMAIN = M.DEAL.auth.domain
M.CONTACT_FORM = read(M.VECTORS .. "events/app-oncrmcontactadd.form")
M.CONTACT_TOKEN = "3c6c9248ec54af6bea1159b43ee0ab32"
M.SW = assert(cjson.decode(read(M.VECTORS .. "hmac.json"))).standard_webhooks[1]
M.read = read

-- A POST request with the given body, content type (form by default) and extra headers.
function M.post(body, content_type, headers)
   local h = { ["content-type"] = content_type or M.FORM }
   for k, v in pairs(headers or {}) do h[k] = v end
   return { method = "POST", path = "/", query = "", headers = h, body = body, remote_addr = "127.0.0.1" }
end

-- A form body for an event with the deal vector's portal and token.
function M.body_of(name, id, ts, extra)
   local t = {
      event = name, data = { FIELDS = { ID = id } }, ts = ts or "1766047124",
      auth = { domain = M.DEAL_DOMAIN, member_id = M.DEAL_MEMBER, application_token = M.DEAL_TOKEN },
   }
   for k, v in pairs(extra or {}) do t[k] = v end
   return core.form_encode(t)
end

-- The "error" of a verdict's (or an answer's) JSON body.
function M.error_of(verdict_or_body)
   local body = type(verdict_or_body) == "table" and verdict_or_body.body or verdict_or_body
   local t = cjson.decode(body)
   return t and t.error
end

-- A recorder for handler calls: fn records (event, ctx) into calls.
function M.recorder()
   local r = { calls = {} }
   function r.fn(event, ctx)
      r.calls[#r.calls + 1] = { event = event, ctx = ctx }
   end
   return r
end

-- A log collaborator for the router's log option: records each line.
function M.log_recorder()
   local lines = {}
   return lines, function(level, msg, fields)
      lines[#lines + 1] = { level = level, msg = msg, fields = fields }
   end
end

return M
