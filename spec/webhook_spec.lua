-- bitrix24.webhook: every form of a webhook URL the portal shows is reduced to its base, any
-- other URL is refused in one line, and the code never appears in a message.
local webhook = require "bitrix24.webhook"

local CODE = "progwebhook00001"

describe("bitrix24.webhook.parse", function()
   it("reduces every form the portal shows to the base URL", function()
      local base = "https://portal.bitrix24.ru/rest/1/" .. CODE .. "/"
      for _, url in ipairs{
         "https://portal.bitrix24.ru/rest/1/" .. CODE,
         "https://portal.bitrix24.ru/rest/1/" .. CODE .. "/",
         "https://portal.bitrix24.ru/rest/1/" .. CODE .. "/profile.json",
         "https://portal.bitrix24.ru/rest/1/" .. CODE .. "/crm.lead.add",
         "https://portal.bitrix24.ru/rest/1/" .. CODE .. "/crm.lead.add.json/",
         "HTTPS://portal.bitrix24.ru/rest/1/" .. CODE .. "/",
      } do
         local w = assert(webhook.parse(url))
         assert.equal(base, w.base, url)
         assert.equal(CODE, w.code)
         assert.equal("1", w.user)
         assert.equal("https://portal.bitrix24.ru", w.origin)
         assert.equal("https://portal.bitrix24.ru/rest/1/***/", w.masked)
      end
      local local_one = assert(webhook.parse("http://127.0.0.1:8080/rest/17/abc"))
      assert.equal("http://127.0.0.1:8080/rest/17/abc/", local_one.base)
   end)

   it("refuses anything else in one line that says what is wrong, never with the code", function()
      local cases = {
         { "https://portal.bitrix24.ru", "portal's address" },
         { "https://portal.bitrix24.ru/", "portal's address" },
         { "portal.bitrix24.ru/rest/1/" .. CODE .. "/", "no http" },
         { "ftp://portal.bitrix24.ru/rest/1/" .. CODE .. "/", "scheme is ftp" },
         { "https:///rest/1/" .. CODE .. "/", "no host" },
         { "https://user:" .. CODE .. "@portal.bitrix24.ru/rest/1/x/", "user name or password" },
         { "https://portal.bitrix24.ru/crm/deal/", "does not start with /rest/" },
         { "https://portal.bitrix24.ru/rest/", "user's number" },
         { "https://portal.bitrix24.ru/rest/admin/" .. CODE .. "/", "user's number" },
         { "https://portal.bitrix24.ru/rest/1/", "no webhook code" },
         { "https://portal.bitrix24.ru/rest/1/" .. CODE .. "/crm.lead.add/x", "at most one method" },
         { "https://portal.bitrix24.ru/rest/1/" .. CODE .. "/?x=1", "query" },
         { "https://portal.bitrix24.ru/rest/1/co$de/", "characters no code has" },
      }
      for _, c in ipairs(cases) do
         local w, err = webhook.parse(c[1])
         assert.is_nil(w, c[1])
         assert.matches(c[2], err, 1, true)
         assert.matches("a webhook URL looks like https://your-portal.bitrix24.com/rest/1/<code>/", err, 1, true)
         assert.not_matches(CODE, err, 1, true)
         assert.not_matches("\n", err, 1, true)
      end
      assert.matches("no webhook URL given", select(2, webhook.parse(nil)), 1, true)
   end)

   it("takes an application's REST endpoint only when asked (a client with an access token)", function()
      assert.is_nil(webhook.parse("https://portal.bitrix24.ru/rest/"))
      local w = assert(webhook.parse("https://portal.bitrix24.ru/rest/", true))
      assert.equal("https://portal.bitrix24.ru/rest/", w.base)
      assert.is_nil(w.code)
   end)
end)

describe("bitrix24.webhook.redirect", function()
   local hook = assert(webhook.parse("https://old.bitrix24.ru/rest/1/" .. CODE .. "/"))

   it("follows a renamed portal in the same cloud zone, keeping the path", function()
      assert.equal("https://new.bitrix24.ru/rest/1/" .. CODE .. "/",
         webhook.redirect(hook, "https://new.bitrix24.ru/rest/1/" .. CODE .. "/crm.lead.get"))
      assert.equal(hook.base, webhook.redirect(hook, "/rest/1/" .. CODE .. "/crm.lead.get"))
      local br = assert(webhook.parse("https://a.bitrix24.com.br/rest/1/" .. CODE .. "/"))
      assert.equal("https://b.bitrix24.com.br/rest/1/" .. CODE .. "/",
         webhook.redirect(br, "https://b.bitrix24.com.br/rest/1/" .. CODE .. "/x"))
   end)

   it("never hands the code to another site, to http or to another path, and says where, masked", function()
      local cases = {
         { "https://evil.example.com/rest/1/" .. CODE .. "/crm.lead.get", "another site" },
         { "https://new.bitrix24.com/rest/1/" .. CODE .. "/crm.lead.get", "another site" }, -- another zone
         { "http://new.bitrix24.ru/rest/1/" .. CODE .. "/crm.lead.get", "not https" },
         { "https://new.bitrix24.ru/auth/?backurl=/rest/", "away from this webhook's /rest/ path" },
         { "https://new.bitrix24.ru/rest/2/" .. CODE .. "/x", "away from this webhook's /rest/ path" },
         { "", "without a Location" },
      }
      for _, c in ipairs(cases) do
         local base, why = webhook.redirect(hook, c[1])
         assert.is_nil(base, c[1])
         assert.matches(c[2], why, 1, true)
         assert.not_matches(CODE, why, 1, true)
      end
   end)

   it("lets a local plain-http portal redirect only to itself, or to https on the same host", function()
      local local_hook = assert(webhook.parse("http://127.0.0.1:8080/rest/1/abc/"))
      assert.equal(local_hook.base, webhook.redirect(local_hook, "http://127.0.0.1:8080/rest/1/abc/m"))
      assert.equal("https://127.0.0.1:8080/rest/1/abc/",
         webhook.redirect(local_hook, "https://127.0.0.1:8080/rest/1/abc/m"))
      assert.is_nil(webhook.redirect(local_hook, "https://p.bitrix24.ru/rest/1/abc/m"))
      local cloud_http = assert(webhook.parse("http://old.bitrix24.ru/rest/1/abc/"))
      assert.is_nil(webhook.redirect(cloud_http, "https://new.bitrix24.ru/rest/1/abc/m"))
      assert.equal("https://old.bitrix24.ru/rest/1/abc/",
         webhook.redirect(cloud_http, "https://old.bitrix24.ru/rest/1/abc/m"))
   end)
end)

describe("bitrix24.hints", function()
   local hints = require "bitrix24.hints"

   it("knows the errors no retry cures, whatever their case, and says what to do", function()
      for _, code in ipairs{ "PORTAL_DELETED", "ACCESS_DENIED", "insufficient_scope", "NO_AUTH_FOUND",
                             "OVERLOAD_LIMIT", "INVALID_CREDENTIALS", "WRONG_AUTH_TYPE",
                             "ERROR_METHOD_NOT_FOUND", "expired_token" } do
         assert.is_true(hints.terminal(code), code)
         assert.is_string(hints.hint(code, "crm.lead.add"))
      end
      assert.is_false(hints.terminal("QUERY_LIMIT_EXCEEDED"))
      assert.is_false(hints.terminal("OPERATION_TIME_LIMIT"))
      assert.is_nil(hints.hint("INTERNAL_SERVER_ERROR"))
      assert.matches("scope 'crm'", hints.hint("insufficient_scope", "crm.deal.list"), 1, true)
      assert.matches("scope 'task'", hints.hint("INSUFFICIENT_SCOPE", "tasks.task.add"), 1, true)
      assert.matches("copy its URL again", hints.hint("INVALID_CREDENTIALS"), 1, true)
   end)
end)
