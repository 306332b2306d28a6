-- `b24 emulate --app CLIENT_ID:SECRET` as an OAuth portal, over real HTTP: the install delivery
-- (--install-to, emulator.app.install), the token endpoint (/oauth/token/: rotation, a spent
-- refresh token, a wrong secret, a missing parameter), REST with auth= (valid, expired after
-- emulator.tokens.expire, unknown), app.info, event.bind/get/unbind and an online event received
-- by a loopback receiver with the application's auth fields, and a webhook's event.bind 403.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local cjson = require "cjson"

local CLIENT_ID = "local.spec0app0000001.12345678"
local SECRET = "spec0client0secret0000000000000000000000000000001"

local recorder = require("helpers.recorder").start

-- The field names of a form body, in their order.
local function names(body)
   local out = {}
   for pair in body:gmatch("[^&]+") do out[#out + 1] = pair:match("^[^=]*") end
   return out
end

-- GET /oauth/token/ with the query fields q: status, decoded body.
local function token(srv, q)
   local parts = {}
   for _, k in ipairs({ "grant_type", "client_id", "client_secret", "refresh_token" }) do
      if q[k] then parts[#parts + 1] = k .. "=" .. q[k] end
   end
   local res = assert(srv:request{ method = "GET", path = "/oauth/token/?" .. table.concat(parts, "&") })
   return res.status, cjson.decode(res.body)
end

local function refresh(srv, refresh_token, secret)
   return token(srv, { grant_type = "refresh_token", client_id = CLIENT_ID, client_secret = secret or SECRET,
                       refresh_token = refresh_token })
end

local rest = emu.rest

describe("emulator as an OAuth portal", function()
   local rec, srv, install
   setup(function()
      rec = recorder()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET,
                                  "--install-to", rec:url("/install"), "--token-ttl", "3600" } }
      -- the first request served tells the portal its address and posts the install
      assert.are.equal(200, (emu.call(srv, "emulator.oauth.stats")))
      install = rec.delivery("ONAPPINSTALL")
   end)
   teardown(function()
      if srv then srv:stop() end
      if rec then rec:stop() end
   end)

   it("posts ONAPPINSTALL to --install-to with every field, form-encoded like an app event", function()
      assert.are.equal("/install", install.path)
      assert.are.equal("application/x-www-form-urlencoded", install.content_type)
      assert.are.same({ "event", "data%5BVERSION%5D", "data%5BACTIVE%5D", "data%5BINSTALLED%5D",
         "data%5BLANGUAGE_ID%5D", "ts", "auth%5Baccess_token%5D", "auth%5Bexpires%5D", "auth%5Bexpires_in%5D",
         "auth%5Bscope%5D", "auth%5Bdomain%5D", "auth%5Bserver_endpoint%5D", "auth%5Bstatus%5D",
         "auth%5Bclient_endpoint%5D", "auth%5Bmember_id%5D", "auth%5Buser_id%5D", "auth%5Brefresh_token%5D",
         "auth%5Bapplication_token%5D" }, names(install.body))
      local f = install.form
      assert.are.same({ VERSION = "1", ACTIVE = "Y", INSTALLED = "Y", LANGUAGE_ID = "en" }, f.data)
      local host = "127.0.0.1:" .. srv.port
      assert.are.equal(host, f.auth.domain)
      assert.are.equal("http://" .. host .. "/rest/", f.auth.client_endpoint)
      assert.are.equal("http://" .. host .. "/rest/", f.auth.server_endpoint)
      assert.are.equal("L", f.auth.status)
      assert.are.equal("3600", f.auth.expires_in)
      assert.are.equal("1", f.auth.user_id)
      assert.matches("^%x+$", f.auth.member_id)
      assert.is_true(tonumber(f.auth.expires) >= os.time() + 3500)
      assert.is_true(#f.auth.access_token >= 32 and #f.auth.refresh_token >= 32 and #f.auth.application_token >= 32)
      assert.matches("crm", f.auth.scope)
   end)

   it("renews tokens at /oauth/token/: a rotated pair, the old refresh token spent", function()
      local status, body = refresh(srv, install.form.auth.refresh_token)
      assert.are.equal(200, status)
      assert.are_not.equal(install.form.auth.access_token, body.access_token)
      assert.are_not.equal(install.form.auth.refresh_token, body.refresh_token)
      assert.are.equal(3600, body.expires_in)
      assert.is_true(body.expires >= os.time() + 3500)
      assert.are.equal("http://127.0.0.1:" .. srv.port .. "/rest/", body.client_endpoint)
      assert.are.equal(install.form.auth.member_id, body.member_id)
      assert.are.equal("L", body.status)
      assert.are.equal(1, body.user_id)
      assert.is_nil(body.application_token)
      -- the spent one
      local again, err = refresh(srv, install.form.auth.refresh_token)
      assert.are.equal(400, again)
      assert.are.equal("invalid_grant", err.error)
      -- the new one works, once
      assert.are.equal(200, (refresh(srv, body.refresh_token)))
      -- an access token issued before a refresh stays valid until its own expiry
      local ok = rest(srv, "profile", install.form.auth.access_token)
      assert.are.equal(200, ok)
   end)

   it("answers invalid_client for a wrong secret and invalid_request for a missing parameter", function()
      local status, body = refresh(srv, "whatever", "wrong0secret")
      assert.are.equal(401, status)
      assert.are.equal("invalid_client", body.error)
      assert.is_nil(body.error_description:find(SECRET, 1, true))
      status, body = token(srv, { grant_type = "refresh_token", client_id = CLIENT_ID, client_secret = SECRET })
      assert.are.equal(400, status)
      assert.are.equal("invalid_request", body.error)
      status, body = token(srv, { client_id = CLIENT_ID, client_secret = SECRET, refresh_token = "x" })
      assert.are.equal(400, status)
      assert.are.equal("invalid_request", body.error)
   end)

   it("runs REST methods with auth= in the JSON body, a form field, the query or a Bearer header", function()
      -- the install's access token: valid until its expiry, refreshes or not
      local access = install.form.auth.access_token
      local status, body = rest(srv, "crm.lead.add", access, { fields = { TITLE = "by the app" } })
      assert.are.equal(200, status)
      local id = body.result
      local res = assert(srv:request{ method = "POST", path = "/rest/crm.lead.get.json",
         headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
         body = "id=" .. id .. "&auth=" .. access })
      assert.are.equal(200, res.status)
      assert.are.equal("by the app", cjson.decode(res.body).result.TITLE)
      res = assert(srv:request{ method = "GET", path = "/rest/crm.lead.get?id=" .. id .. "&auth=" .. access })
      assert.are.equal(200, res.status)
      res = assert(srv:request{ method = "GET", path = "/rest/crm.lead.get?id=" .. id,
                                headers = { Authorization = "Bearer " .. access } })
      assert.are.equal(200, res.status)
      -- a batch runs its commands as the application
      status, body = rest(srv, "batch", access, { cmd = { a = "crm.lead.get?id=" .. id, b = "app.info" } })
      assert.are.equal(200, status)
      assert.are.equal("by the app", body.result.result.a.TITLE)
      assert.are.equal(CLIENT_ID, body.result.result.b.CODE)
      -- without any auth: NO_AUTH_FOUND, as before
      res = assert(srv:request{ method = "GET", path = "/rest/crm.lead.get?id=" .. id })
      assert.are.equal(401, res.status)
      assert.are.equal("NO_AUTH_FOUND", cjson.decode(res.body).error)
   end)

   it("answers app.info as the application (rest_provider.php appInfo)", function()
      assert.are.equal(200, (emu.call(srv, "emulator.app.install", { url = rec:url("/install") })))
      local auth = rec.delivery("ONAPPINSTALL", 2).form.auth
      local status, body = rest(srv, "app.info", auth.access_token)
      assert.are.equal(200, status)
      local r = body.result
      assert.are.equal(CLIENT_ID, r.CODE)
      assert.are.equal(1, r.ID)
      assert.are.equal(1, r.VERSION)
      assert.are.equal("L", r.STATUS)
      assert.is_true(r.INSTALLED)
      assert.are.equal("N", r.PAYMENT_EXPIRED)
      assert.are.equal(cjson.null, r.DAYS)
      assert.are.equal("en", r.LANGUAGE_ID)
      assert.are.equal("en_pro", r.LICENSE)
      assert.are.equal("pro", r.LICENSE_TYPE)
      assert.are.equal("pro", r.LICENSE_FAMILY)
      -- the webhook keeps its own answer
      local _, hook = emu.call(srv, "app.info")
      assert.is_nil(hook.result.CODE)
      assert.is_table(hook.result.SCOPE)
      -- the install kept the application token
      assert.are.equal(install.form.auth.application_token, auth.application_token)
   end)

   it("answers expired_token after emulator.tokens.expire and invalid_token for an unknown token", function()
      assert.are.equal(200, (emu.call(srv, "emulator.app.install", { url = rec:url("/install") })))
      local auth = rec.delivery("ONAPPINSTALL", 3).form.auth
      assert.are.equal(200, (rest(srv, "profile", auth.access_token)))
      local _, before = emu.call(srv, "emulator.oauth.stats")
      local status, body = emu.call(srv, "emulator.tokens.expire")
      assert.are.equal(200, status)
      assert.is_true(body.result.expired >= 1)
      status, body = rest(srv, "profile", auth.access_token)
      assert.are.equal(401, status)
      assert.are.same({ error = "expired_token", error_description = "The access token provided has expired" }, body)
      status, body = rest(srv, "profile", "no0such0token")
      assert.are.equal(401, status)
      assert.are.equal("invalid_token", body.error)
      -- its refresh token still renews, and the new access token works
      local rs, fresh = refresh(srv, auth.refresh_token)
      assert.are.equal(200, rs)
      assert.are.equal(200, (rest(srv, "profile", fresh.access_token)))
      local _, after = emu.call(srv, "emulator.oauth.stats")
      assert.are.equal(before.result.expired_token + 1, after.result.expired_token)
      assert.are.equal(before.result.invalid_token + 1, after.result.invalid_token)
      assert.are.equal(before.result.refreshes + 1, after.result.refreshes)
   end)

   it("binds, lists and unbinds the application's events, and delivers them with its auth", function()
      assert.are.equal(200, (emu.call(srv, "emulator.app.install", { url = rec:url("/install") })))
      local auth = rec.delivery("ONAPPINSTALL", 4).form.auth
      local handler = rec:url("/events")
      local status, body = rest(srv, "event.bind", auth.access_token, { event = "onCrmDealAdd", handler = handler })
      assert.are.equal(200, status)
      assert.is_true(body.result)
      status, body = rest(srv, "event.bind", auth.access_token, { event = "ONCRMDEALADD", handler = handler })
      assert.are.equal(400, status)
      assert.are.equal("ERROR_CORE", body.error)
      assert.matches("already binded", body.error_description)
      status, body = rest(srv, "event.bind", auth.access_token, { event = "ONNOSUCHEVENT", handler = handler })
      assert.are.equal(400, status)
      assert.are.equal("ERROR_EVENT_NOT_FOUND", body.error)
      status, body = rest(srv, "event.bind", auth.access_token, { event = "ONCRMDEALADD" })
      assert.are.equal(400, status)
      assert.are.equal("ERROR_ARGUMENT", body.error)
      assert.are.equal("HANDLER", body.argument) -- rest/lib/Exceptions/ArgumentException.php
      status, body = rest(srv, "event.bind", auth.access_token, { event = "ONCRMDEALADD",
                                                                   handler = "http://localhost/x" })
      assert.are.equal(400, status)
      assert.are.equal("ERROR_WRONG_HANDLER_URL", body.error)
      status, body = rest(srv, "event.bind", auth.access_token, { event = "ONCRMLEADADD", event_type = "offline" })
      assert.are.equal(200, status)
      assert.is_true(body.result)
      status, body = rest(srv, "event.get", auth.access_token)
      assert.are.equal(200, status)
      assert.are.same({ { event = "ONCRMDEALADD", handler = handler, auth_type = "0", offline = 0 },
                        { event = "ONCRMLEADADD", connector_id = "", offline = 1 } }, body.result)
      -- a change made by the webhook reaches the application's handler
      local _, added = emu.call(srv, "crm.deal.add", { fields = { TITLE = "for the app" } })
      local d = rec.delivery("ONCRMDEALADD")
      assert.are.equal("/events", d.path)
      assert.are.same({ "event", "event_handler_id", "data%5BFIELDS%5D%5BID%5D", "ts", "auth%5Baccess_token%5D",
         "auth%5Bexpires%5D", "auth%5Bexpires_in%5D", "auth%5Bscope%5D", "auth%5Bdomain%5D",
         "auth%5Bserver_endpoint%5D", "auth%5Bstatus%5D", "auth%5Bclient_endpoint%5D", "auth%5Bmember_id%5D",
         "auth%5Buser_id%5D", "auth%5Bapplication_token%5D" }, names(d.body))
      assert.are.equal(emu.str(added.result), d.form.data.FIELDS.ID)
      assert.are.equal(auth.application_token, d.form.auth.application_token)
      assert.are.equal(auth.member_id, d.form.auth.member_id)
      assert.are.equal(auth.client_endpoint, d.form.auth.client_endpoint)
      assert.are.equal("1", d.form.auth.user_id)
      assert.is_nil(d.form.auth.refresh_token)
      -- the delivered access token is a current one
      assert.are.equal(200, (rest(srv, "profile", d.form.auth.access_token)))
      status, body = rest(srv, "event.unbind", auth.access_token, { event = "ONCRMDEALADD", handler = handler })
      assert.are.equal(200, status)
      assert.are.same({ count = 1 }, body.result)
      status, body = rest(srv, "event.unbind", auth.access_token, { event = "ONCRMLEADADD", event_type = "offline" })
      assert.are.equal(200, status)
      assert.are.same({ count = 1 }, body.result)
      status, body = rest(srv, "event.get", auth.access_token)
      assert.are.equal(200, status)
      assert.are.same({}, body.result)
   end)

   it("gives a new application token only when emulator.app.install asks for one", function()
      assert.are.equal(200, (emu.call(srv, "emulator.app.install", { url = rec:url("/install"), new_token = true })))
      local auth = rec.delivery("ONAPPINSTALL", 5).form.auth
      assert.are_not.equal(install.form.auth.application_token, auth.application_token)
      assert.are.equal(200, (refresh(srv, auth.refresh_token)))
   end)

   it("answers a webhook's event.bind 403 WRONG_AUTH_TYPE", function()
      local status, body = emu.call(srv, "event.bind", { event = "ONCRMDEALADD", handler = rec:url("/events") })
      assert.are.equal(403, status)
      assert.are.equal("WRONG_AUTH_TYPE", body.error)
      status = emu.call(srv, "event.get")
      assert.are.equal(403, status)
   end)
end)

describe("emulator as an OAuth portal behind --public-url", function()
   local rec, srv
   setup(function()
      rec = recorder()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET, "--app-code", "vendor.app",
                                  "--token-ttl", "7200", "--public-url", "https://portal.example.test:8443/",
                                  "--install-to", rec:url("/a"), "--install-to", rec:url("/b") } }
   end)
   teardown(function()
      if srv then srv:stop() end
      if rec then rec:stop() end
   end)

   it("names the public URL in deliveries and token answers, answers --app-code, lives --token-ttl", function()
      assert.are.equal(200, (emu.call(srv, "emulator.oauth.stats")))
      local first, second = rec.delivery("ONAPPINSTALL", 1), rec.delivery("ONAPPINSTALL", 2)
      assert.are.same({ "/a", "/b" }, { first.path, second.path })
      local auth = first.form.auth
      assert.are.equal("portal.example.test:8443", auth.domain)
      assert.are.equal("https://portal.example.test:8443/rest/", auth.client_endpoint)
      assert.are.equal("7200", auth.expires_in)
      -- each install has its own token pair, one application token
      assert.are_not.equal(auth.refresh_token, second.form.auth.refresh_token)
      assert.are.equal(auth.application_token, second.form.auth.application_token)
      local status, body = refresh(srv, second.form.auth.refresh_token)
      assert.are.equal(200, status)
      assert.are.equal("https://portal.example.test:8443/rest/", body.client_endpoint)
      assert.are.equal("https://portal.example.test:8443/rest/", body.server_endpoint)
      assert.are.equal("portal.example.test:8443", body.domain)
      assert.are.equal(7200, body.expires_in)
      local _, info = rest(srv, "app.info", body.access_token)
      assert.are.equal("vendor.app", info.result.CODE)
   end)
end)

describe("emulator without --app", function()
   local srv
   setup(function()
      srv = b24.emulate{ args = { "--code", emu.CODE } }
   end)
   teardown(function()
      if srv then srv:stop() end
   end)

   it("knows no token, serves no /oauth/token/ and no control methods", function()
      local status, body = rest(srv, "profile", "any0token")
      assert.are.equal(401, status)
      assert.are.equal("invalid_token", body.error)
      local res = assert(srv:request{ method = "GET", path = "/oauth/token/?grant_type=refresh_token" })
      assert.are.equal(404, res.status)
      status, body = emu.call(srv, "emulator.tokens.expire")
      assert.are.equal(400, status)
      assert.are.equal("NO_APPLICATION", body.error)
   end)

   it("refuses --install-to without --app and never echoes a bad --app secret", function()
      local out, code = b24.exec(b24.quote(b24.bin) .. " emulate --install-to http://x.test/")
      assert.are.equal(2, code)
      assert.matches("needs %-%-app", out)
      out, code = b24.exec(b24.quote(b24.bin) .. " emulate --app 'local.x:top secret!'")
      assert.are.equal(2, code)
      assert.is_nil(out:find("top secret", 1, true))
   end)
end)

describe("two emulated portals sharing one OAuth server (--oauth-server)", function()
   -- the OAuth server is portal A (an emulator with --app); portal B mints and checks its tokens
   -- there, as every cloud portal does at oauth.bitrix.info
   local rec, a, b, install_a, install_b
   setup(function()
      rec = recorder()
      a = b24.emulate{ args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET, "--member-id", "member0a",
                                "--install-to", rec:url("/a") } }
      b = b24.emulate{ args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET, "--member-id", "member0b",
                                "--oauth-server", a.base, "--install-to", rec:url("/b") } }
      assert.are.equal(200, (emu.call(a, "emulator.oauth.stats")))
      assert.are.equal(200, (emu.call(b, "emulator.oauth.stats")))
      local first, second = rec.delivery("ONAPPINSTALL", 1), rec.delivery("ONAPPINSTALL", 2)
      if first.path == "/b" then first, second = second, first end
      install_a, install_b = first.form.auth, second.form.auth
   end)
   teardown(function()
      if b then b:stop() end
      if a then a:stop() end
      if rec then rec:stop() end
   end)

   it("answers a refresh of B's token at A's /oauth/token/ with B's member_id and endpoints", function()
      local rest_b = "http://127.0.0.1:" .. b.port .. "/rest/"
      assert.are.equal("member0b", install_b.member_id)
      assert.are.equal(rest_b, install_b.client_endpoint)
      local status, body = refresh(a, install_b.refresh_token)
      assert.are.equal(200, status)
      assert.are.equal("member0b", body.member_id)
      assert.are.equal(rest_b, body.client_endpoint)
      assert.are.equal(rest_b, body.server_endpoint)
      assert.are.equal("127.0.0.1:" .. b.port, body.domain)
      assert.is_nil(body.application_token)
      -- the token A minted for B works on B (app.info as the application) and nowhere else
      local got, info = rest(b, "app.info", body.access_token)
      assert.are.equal(200, got)
      assert.are.equal(CLIENT_ID, info.result.CODE)
      local other, err = rest(a, "profile", body.access_token)
      assert.are.equal(401, other)
      assert.are.equal("invalid_token", err.error)
      -- spent by its use, as any refresh token
      local again, spent = refresh(a, install_b.refresh_token)
      assert.are.equal(400, again)
      assert.are.equal("invalid_grant", spent.error)
      -- A's own refresh still names A
      local sa, own = refresh(a, install_a.refresh_token)
      assert.are.equal(200, sa)
      assert.are.equal("member0a", own.member_id)
      assert.are.equal(401, (rest(b, "profile", own.access_token)))
      assert.are.equal(200, (rest(a, "profile", own.access_token)))
   end)

   it("serves no /oauth/token/ on B, keeps one application token per portal", function()
      local res = assert(b:request{ method = "GET", path = "/oauth/token/?grant_type=refresh_token" })
      assert.are.equal(404, res.status)
      assert.are_not.equal(install_a.application_token, install_b.application_token)
      -- B's events carry tokens that A minted for B
      assert.are.equal(200, (rest(b, "profile", install_b.access_token)))
   end)

   it("expires only B's tokens with B's emulator.tokens.expire, counted on B", function()
      assert.are.equal(200, (emu.call(b, "emulator.app.install", { url = rec:url("/b") })))
      local auth_b = rec.delivery("ONAPPINSTALL", 3).form.auth
      assert.are.equal(200, (emu.call(a, "emulator.app.install", { url = rec:url("/a") })))
      local auth_a = rec.delivery("ONAPPINSTALL", 4).form.auth
      local status, body = emu.call(b, "emulator.tokens.expire")
      assert.are.equal(200, status)
      assert.is_true(body.result.expired >= 1)
      local s, err = rest(b, "profile", auth_b.access_token)
      assert.are.equal(401, s)
      assert.are.equal("expired_token", err.error)
      assert.are.equal(200, (rest(a, "profile", auth_a.access_token)))
      local _, stats = emu.call(b, "emulator.oauth.stats")
      assert.is_true(stats.result.expired_token >= 1)
      -- its refresh token, at the shared server, gives B a working token again
      local rs, fresh = refresh(a, auth_b.refresh_token)
      assert.are.equal(200, rs)
      assert.are.equal(200, (rest(b, "profile", fresh.access_token)))
   end)

   it("answers the portals' calls only with the application's credentials, never echoing them", function()
      assert.are.equal(200, (emu.call(b, "emulator.app.install", { url = rec:url("/b") })))
      local auth_b = rec.delivery("ONAPPINSTALL", 5).form.auth
      local res = assert(a:request{ method = "POST", path = "/oauth/emulator/check/",
         headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
         body = "client_id=" .. CLIENT_ID .. "&client_secret=wrong0secret&token=" .. install_b.access_token
            .. "&member_id=member0b" })
      assert.are.equal(401, res.status)
      assert.are.equal("invalid_client", cjson.decode(res.body).error)
      assert.is_nil(res.body:find("wrong0secret", 1, true))
      res = assert(a:request{ method = "POST", path = "/oauth/emulator/check/",
         headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
         body = "client_id=" .. CLIENT_ID .. "&client_secret=" .. SECRET .. "&token=" .. auth_b.access_token
            .. "&member_id=member0b" })
      assert.are.equal(200, res.status)
      assert.is_true(cjson.decode(res.body).result)
      assert.is_nil((a:log() .. b:log()):find(SECRET, 1, true))
   end)

   it("refuses --oauth-server without --app; a portal whose server is down answers 500, logged", function()
      local out, code = b24.exec(b24.quote(b24.bin) .. " emulate --oauth-server http://127.0.0.1:9/")
      assert.are.equal(2, code)
      assert.matches("needs %-%-app", out)
      local lone = b24.emulate{ args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET,
                                         "--oauth-server", "http://127.0.0.1:" .. b24.free_port() } }
      local status, body = rest(lone, "profile", install_b.access_token)
      assert(lone:wait_log("the OAuth server failed"))
      lone:stop()
      assert.are.equal(500, status)
      assert.are.equal("INTERNAL_SERVER_ERROR", body.error)
      assert.is_nil(lone:log():find(SECRET, 1, true))
   end)
end)
