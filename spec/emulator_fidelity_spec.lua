-- Emulator behaviour the official SDKs rely on, found by `make fidelity` (scripts/fidelity.sh runs
-- @bitrix24/b24jssdk and @2bad/bitrix against b24 emulate), pinned here over real HTTP without npm.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local labels = require "b24.emulator.labels"
local cjson = require "cjson"

local str = emu.str

describe("emulator fidelity", function()
   describe("batch runs its commands in the order sent, as a portal does", function()
      local srv
      setup(function()
         srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "20" } }
      end)
      teardown(function() if srv then srv:stop() end end)

      -- b24jssdk sends {halt, cmd: {label: "method?query"}} as JSON; a portal runs add, got, del in
      -- that order (alphabetical order would delete the lead before reading it)
      it("a JSON cmd object: add, read back by reference, delete", function()
         local body = '{"halt":1,"cmd":{"add":"crm.lead.add?fields%5BTITLE%5D=Order+test",' ..
            '"got":"crm.lead.get?id=%24result%5Badd%5D","del":"crm.lead.delete?id=%24result%5Badd%5D"}}'
         local status, res = emu.call(srv, "batch", nil, { body = body })
         assert.equal(200, status)
         local r = res.result
         assert.same({}, r.result_error)
         assert.equal("Order test", r.result.got.TITLE)
         assert.equal(str(r.result.add), r.result.got.ID)
         assert.is_true(r.result.del)
         status, res = emu.call(srv, "crm.lead.get", { id = r.result.add })
         assert.equal(400, status)
         assert.equal("Not found", res.error_description)
      end)

      local function titles_by_id(first, second)
         local _, a = emu.call(srv, "crm.lead.list", { filter = { TITLE = first }, select = { "ID" } })
         local _, b = emu.call(srv, "crm.lead.list", { filter = { TITLE = second }, select = { "ID" } })
         return tonumber(a.result[1].ID), tonumber(b.result[1].ID)
      end

      it("a form body: labels out of natural order run as sent", function()
         local status, res = emu.form(srv, "batch",
            "cmd[zz]=crm.lead.add%3Ffields%5BTITLE%5D%3Dform-first"
               .. "&cmd[aa]=crm.lead.add%3Ffields%5BTITLE%5D%3Dform-second")
         assert.equal(200, status)
         assert.equal(res.result.result.zz + 1, res.result.result.aa)
         local first, second = titles_by_id("form-first", "form-second")
         assert.is_true(first < second)
      end)

      -- @2bad/bitrix sends its batches as GET query strings
      it("a GET query string: labels out of natural order run as sent", function()
         local res = assert(srv:request{ method = "GET", path = emu.path("batch") ..
            "?cmd%5Bc10%5D=crm.lead.add%3Ffields%255BTITLE%255D%3Dget-first" ..
            "&cmd%5Bc2%5D=crm.lead.add%3Ffields%255BTITLE%255D%3Dget-second" })
         assert.equal(200, res.status)
         local r = cjson.decode(res.body).result.result
         assert.equal(r.c10 + 1, r.c2)
      end)

      it("a JSON cmd list keeps its positions (labels 0..n-1, result as a list)", function()
         local status, res = emu.call(srv, "batch", { cmd = { "crm.lead.get?id=2", "crm.lead.get?id=1" } })
         assert.equal(200, status)
         assert.equal("2", res.result.result[1].ID)
         assert.equal("1", res.result.result[2].ID)
      end)
   end)

   describe("labels (reading the order from the request text)", function()
      it("reads the keys of the top-level cmd object of a JSON text in order", function()
         assert.same({ "b", "a", "c\"1", "é" },
            labels.json('{"halt":0, "x":{"cmd":{"no":1}}, "cmd" : '
               .. '{"b":"m?a=[1]","a":"{\\"}","c\\"1":"","\\u00e9":""}}'))
         assert.same({ "z", "y" }, labels.json('{"cmd":{"z":{"cmd":{"q":1}},"y":[1,{"k":2}]},"after":{"w":1}}'))
         assert.is_nil(labels.json('{"cmd":["a","b"]}'))
         assert.is_nil(labels.json('{"cmd":"text","other":{"a":1}}'))
         assert.is_nil(labels.json('{"cmd":{}}'))
         assert.is_nil(labels.json('not json'))
      end)

      it("reads cmd[label] keys of a form string in order, decoded", function()
         assert.same({ "c2", "c1", "a b" }, labels.form("halt=1&cmd%5Bc2%5D=x&cmd[c1]=y&cmd[c2]=z&cmd[a+b]=w"))
         assert.is_nil(labels.form("cmd[]=x&cmd[]=y"))
         assert.is_nil(labels.form("halt=1"))
      end)

      it("takes the body's order over the query string's, JSON only under application/json", function()
         assert.same({ "q" }, labels.of{ query = "cmd[q]=1", body = "" })
         assert.same({ "f" }, labels.of{ query = "cmd[q]=1", body = "cmd[f]=1", headers = {} })
         assert.same({ "j" }, labels.of{ query = "cmd[q]=1", body = '{"cmd":{"j":"x"}}',
                                          headers = { ["content-type"] = "application/json" } })
         assert.same({ "q" }, labels.of{ query = "cmd[q]=1", body = '{"cmd":{"j":"x"}}',
                                          headers = { ["content-type"] = "text/plain" } })
      end)
   end)
end)
