-- b24 call / b24 export (b24.cli) against b24 emulate over real HTTP: JSON and key=value
-- parameters, exit statuses, readable errors without the webhook code, NDJSON exports, the
-- progress line only on a terminal.
local b24 = require "helpers.b24"
local portal = require "helpers.portal"
local cjson = require "cjson"

local CODE = portal.CODE
local q = b24.quote

local function has_command()
   local _, code = b24.exec(q(b24.bin) .. " call --help")
   return code == 0
end

describe("b24 call / b24 export", function()
   local srv, url, dir
   -- runs `b24 ARGS` with the webhook in the environment: stdout, stderr, exit status
   local function b24cmd(args, env)
      local out, err = dir .. "/out", dir .. "/err"
      local cmd = (env or ("B24_WEBHOOK_URL=" .. q(url))) .. " " .. q(b24.bin) .. " " .. args ..
                  " > " .. out .. " 2> " .. err
      local _, code = b24.exec(cmd)
      return b24.read(out), b24.read(err), code
   end

   setup(function()
      assert(has_command(), "this b24 has no call command")
      srv = b24.emulate{ args = { "--code", CODE, "--seed-leads", "130", "--time-scale", "1000" } }
      url = portal.url(srv)
      dir = b24.tmpdir()
   end)
   teardown(function()
      if srv then srv:stop() end
      if dir then os.execute("rm -rf " .. q(dir)) end
   end)

   it("call METHOD JSON prints the result as JSON", function()
      local out, err, code = b24cmd("call crm.lead.get " .. q('{"id": 5}'))
      assert.equal(0, code, err)
      assert.equal("", err)
      local lead = cjson.decode(out)
      assert.equal("5", lead.ID)
      assert.equal("Lead #5", lead.TITLE)
   end)

   it("call METHOD key=value… takes PHP bracket keys", function()
      local out, err, code = b24cmd("call crm.lead.add 'fields[NAME]=Ivan Petrov' 'fields[TITLE]=A&B=C' " ..
                                    "'fields[PHONE][0][VALUE]=+1 555' 'fields[PHONE][0][VALUE_TYPE]=WORK'")
      assert.equal(0, code, err)
      local id = cjson.decode(out)
      out, err, code = b24cmd("call crm.lead.list 'filter[ID]=" .. string.format("%d", id) ..
                              "' 'select[]=NAME' 'select[]=TITLE' 'select[]=PHONE'")
      assert.equal(0, code, err)
      local rows = cjson.decode(out)
      assert.equal(1, #rows)
      assert.equal("Ivan Petrov", rows[1].NAME)
      assert.equal("A&B=C", rows[1].TITLE)
      assert.equal("+1 555", rows[1].PHONE[1].VALUE)
   end)

   it("--webhook URL works without the environment variable", function()
      local out, err, code = b24cmd("call --webhook " .. q(url) .. " crm.lead.get id=2", "env -u B24_WEBHOOK_URL")
      assert.equal(0, code, err)
      assert.equal("2", cjson.decode(out).ID)
   end)

   it("a REST error: exit 1, one readable line on stderr, the code masked", function()
      local out, err, code = b24cmd("call crm.lead.get id=999999")
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("^b24 call: bitrix24: crm%.lead%.get: %(no code%): Not found %(HTTP 400, ", err)
      assert.matches("/rest/1/***/crm.lead.get", err, 1, true)
      assert.is_nil(err:find(CODE, 1, true))
      local wrong = srv.base .. "/rest/1/wrong0code0000000/"
      out, err, code = b24cmd("call crm.lead.get id=1", "B24_WEBHOOK_URL=" .. q(wrong))
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("INVALID_CREDENTIALS", err)
      assert.is_nil(err:find("wrong0code0000000", 1, true))
   end)

   it("a connection failure: exit 1, the code masked", function()
      local _, err, code = b24cmd("call crm.lead.get id=1",
                                  "B24_WEBHOOK_URL=" .. q("http://127.0.0.1:1/rest/1/" .. CODE .. "/"))
      assert.equal(1, code)
      assert.matches("connect", err)
      assert.is_nil(err:find(CODE, 1, true))
   end)

   it("usage errors: exit 2 with a reason", function()
      local cases = {
         { "call", "call needs a METHOD" },
         { "call crm.lead.get '{not json'", "JSON object" },
         { "call crm.lead.get id", "expected key=value" },
         { "call crm.lead.get --bogus", "unknown option" },
         { "export", "export needs a METHOD" },
         { "export crm.lead.list '[1]'", "JSON object" },
      }
      for _, case in ipairs(cases) do
         local out, err, code = b24cmd(case[1])
         assert.equal(2, code, case[1])
         assert.equal("", out)
         assert.matches(case[2], err, 1, true)
      end
      local _, err, code = b24cmd("call crm.lead.get id=1", "env -u B24_WEBHOOK_URL")
      assert.equal(2, code)
      assert.matches("no webhook", err, 1, true)
      _, err, code = b24cmd("call crm.lead.get id=1", "B24_WEBHOOK_URL=ftp://x/" .. CODE)
      assert.equal(2, code)
      assert.is_nil(err:find(CODE, 1, true))
   end)

   it("export prints every row once as NDJSON, nothing on a non-terminal stderr", function()
      local out, err, code = b24cmd("export crm.lead.list " .. q('{"select":["ID","TITLE"]}'))
      assert.equal(0, code, err)
      assert.equal("", err)
      local seen, n = {}, 0
      for line in out:gmatch("[^\n]+") do
         local row = cjson.decode(line)
         assert.is_nil(seen[row.ID])
         seen[row.ID] = true
         n = n + 1
      end
      assert.is_true(n >= 130)
      assert.is_true(seen["1"] and seen["130"])
   end)

   it("export shows progress with rows/s on a terminal stderr", function()
      local _, code0 = b24.exec("command -v script")
      if code0 ~= 0 then return pending("script(1) is not installed") end
      local rows = dir .. "/rows.ndjson"
      local inner = "B24_WEBHOOK_URL=" .. q(url) .. " " .. q(b24.bin) .. " export crm.lead.list > " .. q(rows)
      local term, code = b24.exec("script -qec " .. q(inner) .. " /dev/null")
      assert.equal(0, code, term)
      assert.matches("rows/s", term, 1, true)
      assert.matches("%d+ rows", term)
      assert.is_nil(term:find(CODE, 1, true))
      local n = 0
      for _ in b24.read(rows):gmatch("[^\n]+") do n = n + 1 end
      assert.is_true(n >= 130)
   end)

   it("export of a failing method: exit 1 with the error", function()
      local out, err, code = b24cmd("export crm.nothing.list")
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("ERROR_METHOD_NOT_FOUND", err)
      assert.is_nil(err:find(CODE, 1, true))
   end)
end)

describe("b24 call with the webhook URL in the forms the portal shows", function()

   it("masks the code of a …/profile.json URL in every line it prints (seen: printed in clear)", function()
      local out, code = b24.exec(q(b24.bin) .. " call --webhook http://127.0.0.1:1/rest/1/" .. CODE
         .. "/profile.json user.current 2>&1")
      assert.equal(1, code, out)
      assert.matches("http://127.0.0.1:1/rest/1/***/user.current", out, 1, true)
      assert.not_matches(CODE, out, 1, true)
      assert.not_matches("profile.json", out, 1, true) -- reduced to the base URL
   end)

   it("refuses a portal's bare address in one line, saying what a webhook URL looks like", function()
      local out, code = b24.exec(q(b24.bin) .. " call --webhook https://portal.bitrix24.ru/ user.current 2>&1")
      assert.equal(2, code, out)
      assert.matches("b24 call: https://portal.bitrix24.ru/ is not an incoming-webhook URL: it is the "
         .. "portal's address", out, 1, true)
      assert.matches("https://your-portal.bitrix24.com/rest/1/<code>/", out, 1, true)
   end)

   it("shows no code in tostring of a client made from a method URL", function()
      local out = b24.exec(q(b24.bin) .. " run /dev/stdin <<'EOF'\n"
         .. "print(tostring(require('bitrix24').client('https://p.bitrix24.ru/rest/1/" .. CODE .. "/crm.lead.add')))\n"
         .. "EOF")
      assert.equal("bitrix24.client (https://p.bitrix24.ru/rest/1/***/)\n", out)
   end)
end)
