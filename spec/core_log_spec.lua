-- bitrix24.core's one masking rule and one log-line writer (csrc/b24_logline.c), which the library,
-- b24 and the emulator all write through; and the core's option checks that must come before a cast.
local core = require "bitrix24.core"
local cjson = require "cjson"

describe("bitrix24.core.mask", function()
   it("hides a webhook code in a URL and the value after a secret's name", function()
      assert.equal("https://portal/rest/1/***/crm.lead.add",
         core.mask("https://portal/rest/1/k3y0f7h3h00k/crm.lead.add"))
      assert.equal("auth[application_token]=***&x=1", core.mask("auth[application_token]=s3cr3tv4lue&x=1"))
      assert.equal('{"access_token":"***"}', core.mask('{"access_token":"abcdefgh"}'))
   end)

   it("leaves text without secrets as it is, bytes included", function()
      local s = "plain text \0 with \255 bytes /rest/ and token"
      assert.equal(s, core.mask(s))
   end)

   it("raises on a non-string", function()
      assert.has_error(function() core.mask({}) end)
   end)
end)

describe("bitrix24.core.log_line", function()
   it("writes logfmt with time, level, msg and the fields in key order", function()
      local line = core.log_line("logfmt", "info", "delivery stored", { z = 1, a = "two words", m = true })
      assert.matches('^time=%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ level=info msg="delivery stored" '
         .. 'a="two words" m=true z=1\n$', line)
   end)

   it("masks every value and hides a field named like a secret whole", function()
      local line = core.log_line("logfmt", "warn", "call /rest/7/abcdefgh/x failed",
         { url = "https://p/rest/7/abcdefgh/", app_token = "zzzzzzzzzz", client_secret = "s" })
      assert.not_matches("abcdefgh", line, 1, true)
      assert.not_matches("zzzz", line, 1, true)
      assert.matches("app_token=*** ", line, 1, true)
      assert.matches("client_secret=***", line, 1, true)
   end)

   it("writes JSON that decodes, whatever bytes the message and fields hold", function()
      local fields = { ['we"ird key'] = "\255\254 then Привет", nul = "a\0b", tab = "\t\127" }
      local line = core.log_line("json", "error", "bad \192\128 overlong", fields)
      assert.equal("\n", line:sub(-1))
      local t = assert(cjson.decode(line))
      assert.equal("error", t.level)
      assert.equal("bad \\xc0\\x80 overlong", t.msg)
      assert.equal("\\xff\\xfe then Привет", t.we_ird_key)
      assert.equal("a\0b", t.nul)
   end)

   it("cuts a long JSON line between whole pieces and keeps it valid", function()
      local line = core.log_line("json", "info", "m", {
         a = string.rep('"', 3000), b = string.rep("\255", 3000), c = string.rep("x", 9000) })
      assert.is_true(#line <= 8192)
      local t = assert(cjson.decode(line))
      assert.equal("m", t.msg)
      assert.equal(string.rep('"', 3000), t.a)
   end)

   it("refuses an unknown format", function()
      assert.has_error(function() core.log_line("xml", "info", "m") end)
   end)
end)

describe("bitrix24.core option checks", function()
   it("refuses NaN sizes for the http session before converting them", function()
      local ok, err = pcall(core.http, { max_response = 0 / 0 })
      assert.is_false(ok)
      assert.matches("max_response", err, 1, true)
      ok, err = pcall(core.http, { max_redirects = 0 / 0 })
      assert.is_false(ok)
      assert.matches("max_redirects", err, 1, true)
   end)

   it("form_encode works again after a call that raised", function()
      for _ = 1, 3 do
         assert.has_error(function() core.form_encode({ a = { b = print } }) end)
         assert.equal("a%5Bb%5D=1", core.form_encode({ a = { b = 1 } }))
      end
   end)
end)
