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
