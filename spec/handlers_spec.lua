-- examples/handlers.lua, the router the README's main command serves, over real HTTP with the
-- durable inbox (in memory here).
local b24 = require "helpers.b24"
local core = require "bitrix24.core"
local cjson = require "cjson"

local deal = cjson.decode(require("helpers.shared").vector("events/webhook-oncrmdealadd.json"))
local FORM = { ["Content-Type"] = "application/x-www-form-urlencoded" }

describe("examples/handlers.lua", function()
   local srv
   setup(function()
      srv = b24.start{ script_path = b24.root .. "/examples/handlers.lua",
                       args = { "--inbox", "memory" },
                       env = "B24_APP_TOKEN=" .. deal.auth.application_token }
   end)
   teardown(function() if srv then srv:stop() end end)

   it("accepts a captured ONCRMDEALADD delivery with the right token and logs the event", function()
      local res = assert(srv:request{ method = "POST", path = "/", headers = FORM,
                                      body = core.form_encode(deal) })
      assert.equal(200, res.status)
      assert.same({ success = true }, cjson.decode(res.body))
      local line = assert(srv:wait_log(
         "msg=event attempt=1 domain=some-domain.bitrix24.com event=ONCRMDEALADD id=7405"))
      assert.matches("ts=1766047124", line, 1, true)
   end)

   it("refuses a wrong token with 401 and logs no event for it", function()
      local forged = cjson.decode(cjson.encode(deal))
      forged.auth.application_token = "not-the-token"
      forged.data.FIELDS.ID = "99999"
      local res = assert(srv:request{ method = "POST", path = "/", headers = FORM,
                                      body = core.form_encode(forged) })
      assert.equal(401, res.status)
      assert.equal("wrong application token", cjson.decode(res.body).error)
      assert(srv:request{ path = "/healthz" })
      assert.not_matches("id=99999", srv:log(), 1, true)
   end)

   it("answers a JSON body of the same event as a duplicate of the form one", function()
      local res = assert(srv:request{ method = "POST", path = "/",
         headers = { ["Content-Type"] = "application/json" }, body = cjson.encode(deal) })
      assert.equal(200, res.status)
      assert.same({ success = true, duplicate = true }, cjson.decode(res.body))
   end)

   it("answers 405 to GET, 415 to text and 400 to a body over the decoder's limits", function()
      assert.equal(405, assert(srv:request{ path = "/" }).status)
      assert.equal(415, assert(srv:request{ method = "POST", path = "/",
         headers = { ["Content-Type"] = "text/plain" }, body = "hello" }).status)
      local deep = "a" .. string.rep("[x]", 100) .. "=1&auth[application_token]=" .. deal.auth.application_token
      assert.equal(400, assert(srv:request{ method = "POST", path = "/", headers = FORM, body = deep }).status)
      -- without the token it is refused before its depth is looked at
      deep = "a" .. string.rep("[x]", 100) .. "=1"
      assert.equal(401, assert(srv:request{ method = "POST", path = "/", headers = FORM, body = deep }).status)
   end)

   it("never writes the token to its log", function()
      assert.not_matches(deal.auth.application_token, srv:log(), 1, true)
   end)
end)

describe("examples/handlers.lua without B24_APP_TOKEN", function()
   it("refuses to start and says what to set", function()
      local out, code = b24.exec("env -u B24_APP_TOKEN " .. b24.quote(b24.bin) ..
         " serve --listen 127.0.0.1:0 " .. b24.quote(b24.root .. "/examples/handlers.lua"))
      assert.equal(1, code)
      assert.matches("set B24_APP_TOKEN", out, 1, true)
   end)
end)
