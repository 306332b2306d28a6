-- bitrix24.router served end to end by `b24 serve`: answers with their reasons, the handler's
-- log line, duplicates, and a failing handler.
local cjson = require("cjson.safe").new()
local fx = require "helpers.router"

local FORM = fx.FORM
local JSON = fx.JSON
local DEAL_JSON = fx.DEAL_JSON
local DEAL_FORM = fx.DEAL_FORM
local DEAL_TOKEN = fx.DEAL_TOKEN
local DEAL_MEMBER = fx.DEAL_MEMBER
local DEAL_DOMAIN = fx.DEAL_DOMAIN
local body_of = fx.body_of

describe("bitrix24.router under b24 serve", function()
   local b24 = require "helpers.b24"
   local srv
   local SCRIPT = [[
local bitrix24 = require "bitrix24"
local host = require "b24.host"
local router = bitrix24.router{ token = %q }
router:on("ONCRMDEAL*", function(event, ctx)
  host.log("info", "deal event seen", { event = event.name, id = event.id, domain = event.domain,
                                         attempt = ctx.attempt })
end)
router:on("ONCRMLEADADD", function(event) error("lead handler broke") end)
return router
]]

   setup(function()
      -- one worker: handle's in-memory dedup lives in one Lua state. A host with a durable inbox
      -- runs a router through accept and dispatch unless --sync, which keeps it on handle.
      local args = { "--workers", "1" }
      local help = b24.exec(b24.quote(b24.bin) .. " serve --help")
      if help:find("--sync", 1, true) then args[#args + 1] = "--sync" end
      srv = b24.start{ script = SCRIPT:format(DEAL_TOKEN), args = args }
   end)
   teardown(function() if srv then srv:stop() end end)

   it("answers 200 to the captured deal delivery and the handler sees the event", function()
      local res = assert(srv:request{ method = "POST", path = "/b24/events",
         headers = { ["Content-Type"] = FORM }, body = DEAL_FORM })
      assert.equal(200, res.status)
      assert.equal('{"success":true}', res.body)
      local line = assert(srv:wait_log("deal event seen"))
      assert.matches("ONCRMDEALADD", line, 1, true)
      assert.matches("7405", line, 1, true)
      assert.matches(DEAL_DOMAIN, line, 1, true)
   end)

   it("answers a duplicate of it, sent as JSON, as a duplicate", function()
      local res = assert(srv:request{ method = "POST", path = "/b24/events",
         headers = { ["Content-Type"] = JSON }, body = DEAL_JSON })
      assert.equal(200, res.status)
      assert.same({ success = true, duplicate = true }, cjson.decode(res.body))
   end)

   it("answers 401, 405, 415, 400 with the reason, and 500 when a handler fails", function()
      local wrong = body_of("ONCRMDEALADD", "8", nil,
         { auth = { member_id = DEAL_MEMBER, application_token = "wrong-one" } })
      local cases = {
         { 401, "wrong application token", { method = "POST", headers = { ["Content-Type"] = FORM }, body = wrong } },
         { 405, "POST expected", { method = "GET" } },
         { 415, nil, { method = "POST", headers = { ["Content-Type"] = "text/plain" }, body = DEAL_FORM } },
         { 400, nil, { method = "POST", headers = { ["Content-Type"] = JSON }, body = "{" } },
         { 500, "handler failed", { method = "POST", headers = { ["Content-Type"] = FORM },
                                                 body = body_of("ONCRMLEADADD", "1") } },
      }
      for _, c in ipairs(cases) do
         c[3].path = "/"
         local res = assert(srv:request(c[3]))
         assert.equal(c[1], res.status)
         if c[2] then assert.equal(c[2], cjson.decode(res.body).error) end
         assert.not_matches(DEAL_TOKEN, res.body, 1, true)
      end
      assert(srv:wait_log("lead handler broke"))
      assert.not_matches(DEAL_TOKEN, srv:log(), 1, true)
   end)

   it("answers 200 to a new UPDATE of the same deal", function()
      local res = assert(srv:request{ method = "POST", path = "/",
         headers = { ["Content-Type"] = FORM }, body = body_of("ONCRMDEALUPDATE", "7405", "1766047200") })
      assert.equal(200, res.status)
      assert.equal('{"success":true}', res.body)
      assert(srv:wait_log("ONCRMDEALUPDATE"))
   end)
end)
