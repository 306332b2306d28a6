-- The emulator against the platform's PHP (yuliai/bitrix-modules at a3a2a579, platform 26.250.100),
-- over real HTTP: one describe per row of issue 14's table, each asserting what the portal does.
-- docs/emulator.md names the PHP file of every behaviour.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local cjson = require "cjson"

local call = emu.call

local function ids(rows)
   local out = {}
   for i, row in ipairs(rows) do out[i] = tonumber(row.ID or row.id) end
   return out
end

describe("emulator as the platform", function()
   local srv
   setup(function()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "120", "--time-scale", "100000" } }
   end)
   teardown(function() if srv then srv:stop() end end)

   -- main/lib/httprequest.php isJson, main/lib/web/httpheaders.php getContentType
   describe("row 8: the body's media type", function()
      local body = cjson.encode({ filter = { ID = 7 }, select = { "ID" } })

      it("reads JSON under application/json with parameters, in any case, and under +json", function()
         for _, ct in ipairs({ "application/json; charset=utf-8", "Application/JSON", " application/json ;q=1",
                               "application/vnd.api+json" }) do
            local status, got = call(srv, "crm.lead.list", nil, { content_type = ct, body = body })
            assert.equal(200, status, ct)
            assert.same({ 7 }, ids(got.result), ct)
            assert.equal(1, got.total, ct)
         end
      end)

      it("reads a form under any other type, and an invalid JSON body adds nothing", function()
         local status, got = call(srv, "crm.lead.list", nil,
            { content_type = "text/plain", body = "filter[ID]=9&select[]=ID" })
         assert.equal(200, status)
         assert.same({ 9 }, ids(got.result))
         status, got = call(srv, "crm.lead.list", nil,
            { content_type = "application/json; charset=utf-8", body = "filter[ID]=9" })
         assert.equal(200, status)
         assert.equal(120, got.total)
      end)
   end)

   -- rest/classes/general/rest_util.php CRestUtil::sendHeaders, rest/include.php OnBeforeProlog
   describe("row 9: CORS", function()
      it("answers carry Access-Control-Allow-Origin and -Headers, errors too", function()
         local res = assert(srv:request{ method = "POST", path = emu.path("crm.lead.get"),
            headers = { ["Content-Type"] = "application/json" }, body = '{"id":1}' })
         assert.equal(200, res.status)
         assert.equal("*", res.headers["access-control-allow-origin"])
         assert.equal("origin, content-type, accept", res.headers["access-control-allow-headers"])
         res = assert(srv:request{ method = "POST", path = emu.path("crm.lead.get", "wrongcode0000000"),
            headers = { ["Content-Type"] = "application/json" }, body = '{"id":1}' })
         assert.equal(401, res.status)
         assert.equal("*", res.headers["access-control-allow-origin"])
         res = assert(srv:request{ method = "GET", path = emu.path("crm.lead.get.xml") .. "?id=1" })
         assert.equal(200, res.status)
         assert.equal("*", res.headers["access-control-allow-origin"])
      end)

      it("answers a preflight under /rest/ with the headers and an empty body, before credentials", function()
         local res = assert(srv:request{ method = "OPTIONS", path = "/REST/1/nocode/crm.lead.add" })
         assert.equal(200, res.status)
         assert.equal("", res.body)
         assert.equal("*", res.headers["access-control-allow-origin"])
         assert.equal("origin, content-type, accept", res.headers["access-control-allow-headers"])
      end)
   end)

   -- rest/classes/general/rest.php processExecution, rest/classes/general/rest_util.php checkAuth
   describe("row 15: a path without user and code", function()
      it("is 401 NO_AUTH_FOUND for a known method, 404 for an unknown one", function()
         local res = assert(srv:request{ method = "POST", path = "/rest/crm.lead.list",
            headers = { ["Content-Type"] = "application/json" }, body = "{}" })
         assert.equal(401, res.status)
         assert.same({ error = "NO_AUTH_FOUND", error_description = "Wrong authorization data" },
            cjson.decode(res.body))
         res = assert(srv:request{ method = "GET", path = "/rest/crm.lead.list.json" })
         assert.equal(401, res.status)
         res = assert(srv:request{ method = "GET", path = "/rest/crm.nothing.here" })
         assert.equal(404, res.status)
         assert.equal("ERROR_METHOD_NOT_FOUND", cjson.decode(res.body).error)
      end)
   end)
end)
