-- Copies each new CRM lead to an external system: on ONCRMLEADADD the lead is fetched through
-- the incoming webhook and POSTed as JSON {id, name, email, phone} (the first e-mail and phone)
-- with a Bearer token. Run it with the durable inbox, which retries a failed delivery:
--   B24_APP_TOKEN=… B24_WEBHOOK_URL=https://PORTAL/rest/1/CODE/ \
--   SYNC_URL=https://crm.example.com/api/leads SYNC_TOKEN=… \
--     b24 serve --inbox b24-inbox.sqlite --max-attempts 10 --retry-base 5 examples/lead_sync.lua
-- The external system failing (5xx, 408, 429, no connection) and the portal failing raise, so
-- the inbox runs the delivery again later (then keeps it as a dead letter); the external system
-- refusing the lead (another 4xx) is logged and not retried. Each POST carries an
-- Idempotency-Key (portal:lead:ID), since a retry may repeat one the system already took.
-- The tokens and the webhook code are never logged.
local bitrix24 = require "bitrix24"
local cjson = require("cjson.safe").new()

local function setting(name)
   local v = os.getenv(name)
   if v == nil or v == "" then error("lead_sync: set " .. name .. " (see examples/lead_sync.lua)", 0) end
   return v
end

local app_token = setting("B24_APP_TOKEN")   -- the outgoing webhook's application token
local webhook = setting("B24_WEBHOOK_URL")   -- the incoming webhook, for crm.lead.get
local sync_url = setting("SYNC_URL")
local sync_token = setting("SYNC_TOKEN")
if not sync_url:match("^https?://[^/]") then error("lead_sync: SYNC_URL is not an http(s) URL", 0) end

-- the inbox retries later: a few quick tries here are enough
local client = bitrix24.client{ url = webhook, retries = 3 }
local http = bitrix24.core.http{ connect_timeout = 5, timeout = 20 }
local router = bitrix24.router{ token = app_token, client = client }

-- The first VALUE of a multi-field (EMAIL, PHONE: { { ID, VALUE_TYPE, VALUE, TYPE_ID }, … }).
local function first(multi)
   if type(multi) ~= "table" then return cjson.null end
   for _, item in ipairs(multi) do
      if type(item) == "table" and type(item.VALUE) == "string" and item.VALUE ~= "" then return item.VALUE end
   end
   return cjson.null
end

local function full_name(lead)
   local parts = {}
   for _, field in ipairs{ "NAME", "SECOND_NAME", "LAST_NAME" } do
      local v = lead[field]
      if type(v) == "string" and v:match("%S") then parts[#parts + 1] = v end
   end
   if #parts == 0 then return cjson.null end
   return table.concat(parts, " ")
end

-- Transient: worth another try later.
local function transient(status)
   return status >= 500 or status == 408 or status == 429
end

router:on("ONCRMLEADADD", function(event, ctx)
   local lead, err = event:fetch(ctx.client)
   if lead == nil then
      if bitrix24.Error.is(err) and err.status == 400
         and tostring(err.description):lower():find("not found", 1, true) then
         -- deleted before we asked: another try gives the same answer
         ctx.log("warn", "lead_sync: lead gone before it was fetched", { id = event.id })
         return
      end
      -- anything else (the portal down, limits, a wrong webhook) is raised: retried, and after
      -- the last attempt kept in the dead letters for `b24 inbox retry --dead`
      error("lead_sync: lead " .. tostring(event.id) .. " not fetched: " .. tostring(err), 0)
   end
   local id = lead.ID or event.id
   local payload = {
      id = tonumber(id) or id,
      name = full_name(lead),
      email = first(lead.EMAIL),
      phone = first(lead.PHONE),
   }
   local res, msg, kind = http:request{
      method = "POST", url = sync_url, body = cjson.encode(payload),
      headers = {
         ["Content-Type"] = "application/json",
         ["Authorization"] = "Bearer " .. sync_token,
         ["Idempotency-Key"] = (event.member_id or event.domain or "portal") .. ":lead:" .. tostring(id),
      },
   }
   if res == nil then
      -- a transport failure (connect, timeout, …): raised, so the inbox tries again
      error("lead_sync: lead " .. tostring(id) .. " not synced: " .. tostring(kind) .. ": " .. tostring(msg), 0)
   end
   if transient(res.status) then
      error("lead_sync: lead " .. tostring(id) .. " not synced: HTTP " .. res.status, 0)
   end
   if res.status >= 300 then
      -- refused (a 4xx): the same lead would be refused again, so it is not retried
      ctx.log("error", "lead_sync: lead refused", { id = tostring(id), status = res.status })
      return
   end
   ctx.log("info", "lead_sync: lead synced", { id = tostring(id), status = res.status, attempt = ctx.attempt })
end)

return router
