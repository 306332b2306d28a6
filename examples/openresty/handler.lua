-- The router nginx.conf serves at /bitrix24/events (required as "handler" through
-- lua_package_path): deliveries are verified by the application token and answered at once;
-- the handlers then run in an ngx.timer. On ONCRMLEADADD the lead is fetched with crm.lead.get
-- through the REST client, which inside nginx uses bitrix24.transport.ngx and so never blocks
-- the worker. Lines go to nginx's error log.
local bitrix24 = require "bitrix24"

local function env(name)
   local v = os.getenv(name)
   if v == nil or v == "" then
      error("set " .. name .. " (and name it in an `env " .. name .. ";` line of nginx.conf)", 0)
   end
   return v
end

local client = bitrix24.client{ url = env("B24_WEBHOOK_URL") }
local router = bitrix24.router{ token = env("B24_APP_TOKEN"), client = client }

router:on("*", function(event, ctx)
   ctx.log("info", "event", { event = event.name, id = event.id or "?", domain = event.domain or "?" })
end)

router:on("ONCRMLEADADD", function(event, ctx)
   ctx.log("info", "fetching lead", { id = event.id })
   local lead, err = event:fetch(ctx.client)
   if not lead then error("crm.lead.get " .. tostring(event.id) .. ": " .. tostring(err), 0) end
   ctx.log("info", "lead fetched", { id = lead.ID, title = lead.TITLE })
end)

return router
