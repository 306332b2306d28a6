-- Creates a CRM lead through an incoming webhook and prints its ID on stdout.
--   B24_WEBHOOK_URL=https://PORTAL.bitrix24.com/rest/USER_ID/CODE/ \
--     b24 run examples/create_lead.lua [TITLE] [NAME]
-- (or `lua5.4`/`luajit examples/create_lead.lua …` with the bitrix24 rock installed).
-- Exit status: 0 created, 1 the portal or the network refused (one readable line on stderr,
-- the webhook code masked), 2 usage (no B24_WEBHOOK_URL, or not a webhook URL).
local bitrix24 = require "bitrix24"

local function fail(status, msg)
   io.stderr:write(msg, "\n")
   io.stdout:flush()
   os.exit(status, true)
end

local USAGE = "usage: B24_WEBHOOK_URL=https://PORTAL/rest/USER_ID/CODE/ "
   .. "b24 run examples/create_lead.lua [TITLE] [NAME]"

local webhook = os.getenv("B24_WEBHOOK_URL")
if not webhook or webhook == "" then
   fail(2, "create_lead: B24_WEBHOOK_URL is not set (the incoming webhook of your portal)\n" .. USAGE)
end

local args = arg or {}
local title = args[1] or "Website enquiry"
local name = args[2]

-- bitrix24.client raises on a URL that is not http(s); that is a usage error here
local ok, client = pcall(bitrix24.client, { url = webhook, retries = 3 })
if not ok then
   fail(2, "create_lead: B24_WEBHOOK_URL is not an http(s) webhook URL\n" .. USAGE)
end

local fields = { TITLE = title, SOURCE_ID = "WEB" }
if name and name ~= "" then fields.NAME = name end

-- REGISTER_SONET_EVENT: the portal shows the new lead in its activity stream
local id, err = client:call("crm.lead.add", { fields = fields, params = { REGISTER_SONET_EVENT = "Y" } })
client:close()
if id == nil then
   -- tostring(err): "bitrix24: crm.lead.add: CODE: description (HTTP 401, https://…/rest/1/***/…)"
   fail(1, "create_lead: " .. tostring(err))
end

if type(id) == "number" and id == math.floor(id) then id = string.format("%d", id) end
print(tostring(id))
