-- A local Bitrix24 application that mirrors every new deal into an outside system, none missed:
-- on install it binds ONCRMDEALADD to the portal's offline queue and ONOFFLINEEVENT (the queue's
-- ring) to its own public URL; the puller (bitrix24.offline) takes the queue into the durable
-- inbox whenever it rings, and once a minute, also after the receiver was down. On each new deal
-- it fetches the deal with the portal's OAuth client and POSTs it as JSON to MIRROR_URL. Any
-- number of portals may install it; their tokens live in the inbox file of b24 serve
-- (b24.host.tokens), shared by every worker.
--   B24_CLIENT_ID=local.… B24_CLIENT_SECRET=… APP_PUBLIC_URL=https://app.example.com/ \
--   MIRROR_URL=https://erp.example.com/deals b24 serve examples/app.lua
-- In the local application's form: "Uses API only", the handler path APP_PUBLIC_URL (the install
-- arrives there), scope crm. B24_OAUTH_SERVER changes the OAuth server (https://oauth.bitrix.info;
-- a `b24 emulate --app` in tests). The outside system failing (5xx, no connection) raises, so the
-- durable inbox sends the deal again later; refusing it (another 4xx) is logged and not retried.
local bitrix24 = require "bitrix24"
local host = require "b24.host"
local cjson = require("cjson.safe").new()

local function setting(name, default)
   local v = os.getenv(name)
   if v == nil or v == "" then
      if default ~= nil then return default end
      error("app: set " .. name .. " (see examples/app.lua)", 0)
   end
   return v
end

local public_url = setting("APP_PUBLIC_URL")
local mirror_url = setting("MIRROR_URL")
if not mirror_url:match("^https?://[^/]") then error("app: MIRROR_URL is not an http(s) URL", 0) end

local app = bitrix24.app{
   client_id = setting("B24_CLIENT_ID"),
   client_secret = setting("B24_CLIENT_SECRET"),
   oauth_server = setting("B24_OAUTH_SERVER", "https://oauth.bitrix.info"),
   store = host.tokens(),
   log = host.log,
}
local http = bitrix24.core.http{ connect_timeout = 5, timeout = 20 }
local router = app:router{ offline = { host = host, interval = 60 } }

-- The install was verified and stored before this runs: bind what this app needs. Deals queue on
-- the portal (offline), and the queue's ring comes here.
router:on("ONAPPINSTALL", function(event)
   local queued = assert(app:bind(event.member_id, { "ONCRMDEALADD" }, { offline = true }))
   local rings = assert(app:bind(event.member_id, { "ONOFFLINEEVENT" }, public_url))
   host.log("info", "app: installed", { domain = event.domain, bound = #queued + #rings })
   router.offline:wake(event.member_id) -- deals made before the bind are not queued; from now on all are
end)

router:on("ONCRMDEALADD", function(event)
   local b24 = assert(app:client(event.member_id))
   local deal, err = b24:call("crm.deal.get", { id = event.id })
   if not deal then error("crm.deal.get failed: " .. tostring(err), 0) end
   local body = assert(cjson.encode({ portal = event.domain, id = deal.ID, title = deal.TITLE,
                                      stage = deal.STAGE_ID, amount = deal.OPPORTUNITY,
                                      currency = deal.CURRENCY_ID }))
   local res, msg = http:request{ url = mirror_url, method = "POST", body = body,
                                  headers = { ["Content-Type"] = "application/json" } }
   if not res then error("mirror failed: " .. tostring(msg), 0) end -- no connection: again later
   if res.status >= 500 then error("mirror failed: HTTP " .. res.status, 0) end
   if res.status >= 300 then
      host.log("warn", "app: mirror refused the deal", { id = deal.ID, status = res.status })
      return
   end
   host.log("info", "app: mirrored", { id = deal.ID, domain = event.domain })
end)

return router
