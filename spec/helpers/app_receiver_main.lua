-- A `b24 serve` script for spec/app_spec.lua: an OAuth application's receiver. Its store is the
-- serve's inbox file (b24.host.tokens()), so `b24 run spec/helpers/app_run.lua` processes share
-- it. Config from the environment: APP_CLIENT_ID, APP_CLIENT_SECRET, APP_OAUTH (the OAuth
-- server: the emulator's base URL). Each ONCRMDEALADD is fetched with the portal's client and
-- logged as "deal seen" with its id and title.
local bitrix24 = require "bitrix24"
local host = require "b24.host"

local app = bitrix24.app{
   client_id = os.getenv("APP_CLIENT_ID"), client_secret = os.getenv("APP_CLIENT_SECRET"),
   oauth_server = os.getenv("APP_OAUTH"), store = host.tokens(), log = host.log,
}
local router = app:router()
router:on("ONAPPINSTALL", function(event)
   host.log("info", "app installed", { member_id = event.member_id })
end)
router:on("ONCRMDEALADD", function(event)
   local client = assert(app:client(event.member_id))
   local deal = assert(client:call("crm.deal.get", { id = event.id }))
   host.log("info", "deal seen", { id = deal.ID, title = deal.TITLE })
end)
return router
