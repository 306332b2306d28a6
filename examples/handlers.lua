-- The handler `./dev run` serves: a Bitrix24 outgoing-webhook receiver for CRM leads, deals and
-- tasks. Deliveries are verified by their application token, stored durably by `b24 serve`
-- and answered at once; each event is then logged by a handler thread (retried if it fails).
--   B24_APP_TOKEN=<the token the portal shows> b24 serve examples/handlers.lua
local bitrix24 = require "bitrix24"

local token = os.getenv("B24_APP_TOKEN")
if not token or token == "" then
   error("set B24_APP_TOKEN to the application token of your outgoing webhook", 0)
end

local router = bitrix24.router{ token = token }

local function log_event(event, ctx)
   ctx.log("info", "event", { event = event.name, id = event.id or "?", domain = event.domain or "?",
                              ts = event.ts or "?", attempt = ctx.attempt })
end

for _, name in ipairs{
   "ONCRMLEADADD", "ONCRMLEADUPDATE", "ONCRMLEADDELETE",
   "ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE",
   "ONTASKADD", "ONTASKUPDATE", "ONTASKDELETE",
} do
   router:on(name, log_event)
end

return router
