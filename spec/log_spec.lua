-- bitrix24.log: the Lua side of the one log writer, and how a host injects its own writer.
local log = require "bitrix24.log"
local bitrix24 = require "bitrix24"

describe("bitrix24.log", function()
   after_each(function() log.use(nil) end)

   it("line is core.log_line", function()
      assert.equal(require("bitrix24.core").log_line, log.line)
      assert.matches(' level=info msg=hi a=1\n$', log.line("logfmt", "info", "hi", { a = 1 }))
   end)

   it("default and quiet write through the writer a host installed", function()
      local seen = {}
      log.use(function(level, msg, fields) seen[#seen + 1] = { level, msg, fields and fields.k } end)
      log.default("warn", "one", { k = "v" })
      log.quiet("info", "two")
      assert.same({ { "warn", "one", "v" }, { "info", "two" } }, seen)
   end)

   it("quiet writes nothing without an installed writer", function()
      -- a writer set and removed again: quiet must then be silent, not fall back to stderr
      local called = false
      log.use(function() called = true end)
      log.use(nil)
      local real = io.stderr
      local wrote = false
      -- io.stderr is read when the module loads; check through a fresh module copy
      package.loaded["bitrix24.log"] = nil
      local stub = { write = function() wrote = true end }
      _G.io.stderr = stub
      local fresh = require "bitrix24.log"
      local ok = pcall(fresh.quiet, "info", "nothing")
      fresh.default("info", "something")
      _G.io.stderr = real
      package.loaded["bitrix24.log"] = log
      assert.is_true(ok)
      assert.is_false(called)
      assert.is_true(wrote) -- default fell back to stderr, quiet did not write
   end)

   it("use refuses what is not a function", function()
      assert.has_error(function() log.use("stderr") end)
   end)

   it("the client's retry lines reach the installed writer", function()
      local lines = {}
      log.use(function(level, msg, fields) lines[#lines + 1] = { level = level, msg = msg, fields = fields } end)
      local calls = 0
      local transport = { request = function()
         calls = calls + 1
         if calls == 1 then
            return { status = 503, headers = {},
                     body = '{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}' }
         end
         return { status = 200, headers = {}, body = '{"result":{"ID":"1"}}' }
      end }
      local c = bitrix24.client{ url = "https://p.bitrix24.ru/rest/1/abcdefgh12/", transport = transport,
                                 backoff = { 0, 0 }, limit = false }
      assert.same({ ID = "1" }, (c:call("crm.lead.get", { id = 1 })))
      assert.equal(1, #lines)
      assert.equal("bitrix24: retrying", lines[1].msg)
      assert.equal("crm.lead.get", lines[1].fields.method)
   end)
end)
