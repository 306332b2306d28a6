-- bitrix24.app's checks that need no portal: an install whose auth fields cannot be a real one is
-- refused before anything is asked or stored, and bad options raise. (The checks that ask the
-- OAuth server and the portal run over real HTTP in spec/app_spec.lua.)
local bitrix24 = require "bitrix24"
local appstore = require "bitrix24.appstore"

-- an OAuth server nobody listens on: a check that reached it would fail differently
local NOWHERE = "http://127.0.0.1:9"

local function install_event(auth)
   local a = { member_id = "m0123456789abcdef", domain = "a.bitrix24.ru", access_token = "acc0token",
               refresh_token = "ref0token", application_token = "app0token",
               client_endpoint = "https://a.bitrix24.ru/rest/" }
   for k, v in pairs(auth) do
      if v == false then a[k] = nil else a[k] = v end
   end
   return { name = "ONAPPINSTALL", auth = a }
end

describe("bitrix24.app install checks", function()
   local store, app
   before_each(function()
      store = appstore.memory()
      app = bitrix24.app{ client_id = "local.x", client_secret = "spec0secret0value", store = store,
                          oauth_server = NOWHERE }
   end)

   local CASES = {
      { { refresh_token = false }, "auth%[refresh_token%] is missing" },
      { { application_token = "" }, "auth%[application_token%] is missing" },
      { { member_id = "m1; drop" }, "auth%[member_id%] is malformed" },
      { { domain = "-bad-" }, "auth%[domain%] is not a host name" },
      { { client_endpoint = "https://evil.example.com/rest/" }, "is not https://DOMAIN/rest/" },
      { { client_endpoint = "https://a.bitrix24.ru/rest/x" }, "is not https://DOMAIN/rest/" },
   }

   it("refuses malformed auth fields before asking anyone, storing nothing, naming no value", function()
      for _, c in ipairs(CASES) do
         local record, why = app:install(install_event(c[1]))
         assert.is_nil(record)
         assert.matches(c[2], why)
         assert.not_matches("token", why:gsub("auth%[%w+_token%]", ""), 1, true)
      end
      assert.same({}, store:list())
   end)

   it("refuses an event without auth fields", function()
      local record, why = app:install({ name = "ONAPPINSTALL" })
      assert.is_nil(record)
      assert.equal("no auth fields", why)
   end)

   it("reports an unreachable OAuth server as a refusal, not a raise, and stores nothing", function()
      local record, why = app:install(install_event({}))
      assert.is_nil(record)
      assert.matches("the OAuth server refused its refresh token %(oauth_failed%)", why)
      assert.same({}, store:list())
   end)

   it("raises on bad options", function()
      assert.has_error(function() bitrix24.app{ client_secret = "s" } end)
      assert.has_error(function() bitrix24.app{ client_id = "x", client_secret = "" } end)
      assert.has_error(function()
         bitrix24.app{ client_id = "x", client_secret = "s", oauth_server = "https://h/oauth" }
      end)
      assert.has_error(function() bitrix24.app{ client_id = "x", client_secret = "s", store = {} } end)
      assert.has_error(function() app:router{ token = "t" } end)
      assert.has_error(function() app:router{ offline = { host = {} } } end)
      -- the offline puller's options, checked before anything is registered with the host
      local host = { job = function() end, wake = function() end, inbox_put = function() end }
      for _, bad in ipairs{ { interval = 0 }, { interval = -1 }, { interval = 0 / 0 }, { interval = math.huge },
                            { backoff_cap = 0 }, { backoff_cap = "300" }, { client = 5 } } do
         bad.host = host
         local ok, err = pcall(app.router, app, { offline = bad })
         assert.is_false(ok)
         assert.matches("bad offline option", err)
      end
      assert.is_table(app:router{ offline = { host = host, interval = 5, backoff_cap = 60, client = { retries = 1 } } })
   end)

   it("gives no client for a portal not installed", function()
      local client, err = app:client("nobody.bitrix24.ru")
      assert.is_nil(client)
      assert.equal("not_installed", err.code)
   end)
end)
