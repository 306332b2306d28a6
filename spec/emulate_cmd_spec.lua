-- `b24 emulate` as a command: its options, its errors, and a portal answering over HTTP.
local b24 = require "helpers.b24"
local cjson = require "cjson"

local BIN = os.getenv("B24_BIN") or "build/b24"

describe("b24 emulate", function()
   it("lists the host's and the emulator's options on --help", function()
      local out, code = b24.exec(b24.clean .. BIN .. " emulate --help")
      assert.equal(0, code)
      assert.matches("%-%-listen", out)
      assert.matches("%-%-seed%-leads", out)
      assert.matches("%-%-faults", out)
   end)

   it("exits 2 with one clear line on a bad option, before listening", function()
      local out, code = b24.exec(b24.clean .. BIN .. " emulate --listen 127.0.0.1:0 --latency soon 2>&1")
      assert.equal(2, code)
      assert.matches("b24 emulate: %-%-latency needs a number", out)
      assert.not_matches("traceback", out)
      assert.not_matches("listening", out)
      out, code = b24.exec(b24.clean .. BIN .. " emulate --nope 2>&1")
      assert.equal(2, code)
      assert.matches("unknown option %-%-nope", out)
      out, code = b24.exec(b24.clean .. BIN .. " emulate --listen 2>&1")
      assert.equal(2, code)
      assert.matches("%-%-listen needs a value", out)
   end)

   it("does not echo a bad secret option", function()
      local out, code = b24.exec(b24.clean .. BIN .. " emulate --code 'sec ret!value' 2>&1")
      assert.equal(2, code)
      assert.not_matches("sec ret!value", out, 1, true)
   end)

   it("serves a portal with the given user, code and seeded leads", function()
      local srv = b24.start{ command = "emulate",
         args = { "--user-id", "7", "--code", "abc123def456", "--seed-leads", "3" } }
      finally(function() srv:stop() end)
      local res = assert(srv:request{ path = "/rest/7/abc123def456/crm.lead.list.json" })
      assert.equal(200, res.status)
      local body = cjson.decode(res.body)
      assert.equal(3, body.total)
      assert.equal(3, #body.result)
      res = assert(srv:request{ path = "/rest/1/abc123def456/crm.lead.list.json" })
      assert.equal(401, res.status)
      assert(srv:wait_log("path=/rest/7/***/crm.lead.list.json"))
   end)
end)
