-- Every number a caller passes reaches the portal with all its digits (issue 13, item 2), over
-- real HTTP to a b24 serve script that answers with the bytes it received: client:call,
-- client:batch and call_many, b24 call (a JSON argument and key=value), the values read back from
-- the answers, answers past the JSON codec's default limits, and the library without lua-cjson.
local b24 = require "helpers.b24"
local portal = require "helpers.portal"
local core = require "bitrix24.core"

local q = b24.quote
local jit = rawget(_G, "jit")
local math_type = math.type -- nil on LuaJIT

-- The portal: "batch" runs its commands, "big.rows" is a list page past the codec's default
-- limits, "id.get" an id, a total and a next as numbers, "empty.list" an empty list; any other
-- method answers {body = the bytes received, value = those bytes spliced in as JSON}. A batch
-- command answers {cmd = its text as received, n = its fields[OPPORTUNITY] spliced in as a JSON
-- number, body = the batch's bytes}, or big.rows' page.
local SCRIPT = [[
local core = require "bitrix24.core"
local H = { ["Content-Type"] = "application/json" }

-- rows rows of fields fields: over 1 MiB and 10,000 values for 50 x 250, and for 50 x (50 x 10)
local function rows_json(rows, fields)
   local out = {}
   for r = 1, rows do
      local row = { '"ID":"' .. r .. '","BIG":9007199254740993' }
      for f = 1, fields do
         row[#row + 1] = ('"UF_CRM_%d":"%s %d"'):format(f, ("value of a user field "):rep(3), r * f)
      end
      out[r] = "{" .. table.concat(row, ",") .. "}"
   end
   return "[" .. table.concat(out, ",") .. "]"
end

local function batch(body)
   local cmds = core.json_decode(body).cmd
   local parts = {}
   for label, cmd in pairs(cmds) do
      local method, query = cmd:match("^([^?]*)%??(.*)$")
      local value
      if method == "big.rows" then
         value = rows_json(50, 10)
      else
         local params = core.form_decode(query)
         local n = type(params.fields) == "table" and params.fields.OPPORTUNITY or "null"
         value = '{"cmd":' .. core.json_encode(cmd) .. ',"n":' .. n .. ',"body":' .. core.json_encode(body) .. "}"
      end
      parts[#parts + 1] = core.json_encode(label) .. ":" .. value
   end
   return '{"result":{"result":{' .. table.concat(parts, ",")
      .. '},"result_error":[],"result_total":[],"result_next":[],"result_time":[]}}'
end

return function(req)
   local method = req.path:match("^/rest/%d+/[^/]+/([^/]+)$")
   if method == "batch" then return 200, H, batch(req.body) end
   if method == "big.rows" then return 200, H, '{"result":' .. rows_json(50, 250) .. ',"total":50}' end
   if method == "id.get" then return 200, H, '{"result":121,"total":300,"next":50}' end
   if method == "empty.list" then return 200, H, '{"result":[],"total":0}' end
   return 200, H, '{"result":{"body":' .. core.json_encode(req.body) .. ',"value":' .. req.body .. '}}'
end]]

-- The numbers: value, its JSON text, its text in a batch command (form_encode's: integral
-- numbers without a fraction, so -0.0 is 0, and "+" percent-encoded), and whether it is an
-- integer on Lua 5.4. only54: beyond LuaJIT's doubles; cdata: a LuaJIT int64_t.
local CASES = {
   { name = "2^53 + 1", value = 9007199254740993, text = "9007199254740993", integer = true, only54 = true },
   { name = "math.maxinteger", value = math.maxinteger, text = "9223372036854775807", integer = true,
     only54 = true },
   { name = "123456789012345", value = 123456789012345, text = "123456789012345", integer = true },
   { name = "123456789012345.67", value = 123456789012345.67, text = "123456789012345.67" },
   { name = "1234567890123.45", value = 1234567890123.45, text = "1234567890123.45" },
   { name = "0.1", value = 0.1, text = "0.1" },
   { name = "-0.0", value = -0.0, text = "-0.0", form = "0" },
   { name = "1e300", value = 1e300, text = "1e+300", form = "1e%2B300" },
   { name = "int64 cdata 123456789012345678LL", text = "123456789012345678", cdata = "123456789012345678LL" },
}

-- The cases this interpreter has, each with its value (a LuaJIT cdata made from its literal).
local function cases()
   local out = {}
   for _, case in ipairs(CASES) do
      if case.cdata then
         if jit then
            local c = {}
            for k, v in pairs(case) do c[k] = v end
            c.value = assert(load("return " .. case.cdata))()
            out[#out + 1] = c
         end
      elseif not (jit and case.only54) then
         out[#out + 1] = case
      end
   end
   return out
end

-- got is the number the case sent, read back from a JSON answer: every digit, and on Lua 5.4
-- an integer for an integer (a form-encoded -0.0 reads back as 0).
local function same_number(case, got, via_form)
   assert.equal("number", type(got), case.name)
   assert.equal(case.value, got, case.name)
   if math_type and case.integer then assert.equal("integer", math_type(got), case.name) end
   if math_type and not case.integer and not (via_form and case.form == "0") then
      assert.equal("float", math_type(got), case.name)
   end
   if case.text == "-0.0" and not via_form then assert.equal(-math.huge, 1 / got, case.name) end
end

local function deal(case)
   return { "crm.deal.add", { fields = { OPPORTUNITY = case.value } } }
end

describe("bitrix24.client numbers", function()
   local srv, c
   setup(function()
      srv = b24.start{ script = SCRIPT, args = { "--workers", "1" } }
      c = portal.client(srv)
   end)
   teardown(function() if srv then srv:stop() end end)

   for _, case in ipairs(CASES) do
      if case.cdata and not jit then
         it("call sends " .. case.name .. " exactly", function()
            pending("LuaJIT only: Lua 5.4 has no int64_t cdata (its 64-bit integers: 2^53 + 1, math.maxinteger)")
         end)
      elseif case.only54 and jit then
         it("call sends " .. case.name .. " exactly", function()
            pending("Lua 5.4 only: " .. case.name .. " is no LuaJIT double (LuaJIT's 64 bits: the int64 cdata case)")
         end)
      end
   end

   for _, case in ipairs(cases()) do
      it("call sends " .. case.name .. " as " .. case.text .. ", and reads it back", function()
         local got = assert(c:call(deal(case)[1], deal(case)[2]))
         assert.equal('{"fields":{"OPPORTUNITY":' .. case.text .. "}}", got.body)
         if case.cdata then
            -- LuaJIT reads every JSON number as a double: the digits were sent, not read back
            assert.equal(tonumber(case.text), got.value.fields.OPPORTUNITY)
         else
            same_number(case, got.value.fields.OPPORTUNITY)
         end
      end)
   end

   it("call sends them all at once, and client:request with an auth token too", function()
      local fields, want = {}, {}
      for i, case in ipairs(cases()) do
         local key = ("N%02d"):format(i) -- json_encode writes keys bytewise: N01, N02, …
         fields[key] = case.value
         want[#want + 1] = '"' .. key .. '":' .. case.text
      end
      local got = assert(c:call("crm.deal.add", { fields = fields, select = {} }))
      assert.equal('{"fields":{' .. table.concat(want, ",") .. '},"select":{}}', got.body)
      local authed = portal.client(srv, { auth = "token0000" })
      local env = assert(authed:request("crm.deal.update", { id = 7, fields = fields }))
      assert.equal('{"auth":"token0000","fields":{' .. table.concat(want, ",") .. '},"id":7}', env.result.body)
   end)

   it("batch sends each command's numbers with their digits and reads them back", function()
      local cmds, want = {}, {}
      for i, case in ipairs(cases()) do
         cmds[i] = deal(case)
         want[i] = ('"c%d":"crm.deal.add?fields%%5BOPPORTUNITY%%5D=%s"'):format(i - 1, case.form or case.text)
      end
      local results, errors = c:batch(cmds)
      assert.is_nil(errors)
      local body = '{"halt":0,"cmd":{' .. table.concat(want, ",") .. "}}"
      for i, case in ipairs(cases()) do
         assert.equal(body, results[i].body, case.name)
         assert.equal("crm.deal.add?fields%5BOPPORTUNITY%5D=" .. (case.form or case.text), results[i].cmd)
         if case.cdata then
            assert.equal(tonumber(case.text), results[i].n)
         else
            same_number(case, results[i].n, true)
         end
      end
      -- labels kept, and an auth token before them (put in as the request is sent)
      local authed = portal.client(srv, { auth = "token0000" })
      local first = cases()[1]
      results = assert(authed:batch({ deal = deal(first) }, { halt = true }))
      assert.equal('{"auth":"token0000","halt":1,"cmd":{"deal":"crm.deal.add?fields%5BOPPORTUNITY%5D='
         .. (first.form or first.text) .. '"}}', results.deal.body)
   end)

   it("call_many sends every call's numbers with their digits, in the caller's order", function()
      local calls, list = {}, cases()
      for round = 1, 12 do -- over 50 calls: two batches
         for _, case in ipairs(list) do calls[#calls + 1] = { case = case, round = round } end
      end
      local specs = {}
      for i, item in ipairs(calls) do specs[i] = deal(item.case) end
      local results, errors = c:call_many(specs)
      assert.is_nil(errors)
      assert.equal(#calls, results.n)
      assert.is_true(#calls > 50)
      for i, item in ipairs(calls) do
         local case = item.case
         assert.equal("crm.deal.add?fields%5BOPPORTUNITY%5D=" .. (case.form or case.text), results[i].cmd)
         assert.matches('"c' .. ((i - 1) % 50) .. '":"crm.deal.add?fields%5BOPPORTUNITY%5D='
            .. (case.form or case.text) .. '"', results[i].body, 1, true)
         if not case.cdata then same_number(case, results[i].n, true) end
      end
   end)

   it("an id, a total and a next sent as JSON integers stay integers (121, not 121.0)", function()
      local env = assert(c:request("id.get"))
      assert.equal(121, env.result)
      assert.equal(300, env.total)
      assert.equal(50, env.next)
      assert.equal("121", tostring(env.result))
      assert.equal("300", tostring(env.total))
      assert.equal("50", tostring(env.next))
   end)

   it("reads a list page over 1 MiB and 10,000 values, and a batch of 50 such commands", function()
      local res = assert(c:request("big.rows"))
      assert.equal(50, #res.result)
      local values = 0
      for _, row in ipairs(res.result) do
         for _ in pairs(row) do values = values + 1 end
      end
      assert.equal(50 * 252, values)
      assert.equal("50", res.result[50].ID)
      assert.equal(("value of a user field "):rep(3) .. " " .. 50 * 250, res.result[50].UF_CRM_250)
      if math_type then assert.equal(9007199254740993, res.result[1].BIG) end
      -- the same answer over raw HTTP: past the codec's defaults, which refuse it
      local raw = assert(srv:request{ method = "POST", path = "/rest/1/" .. portal.CODE .. "/big.rows", body = "{}" })
      assert.is_true(#raw.body > 1048576)
      local refused, _, kind = core.json_decode(raw.body)
      assert.is_nil(refused)
      assert.equal("too_large", kind)
      assert.is_nil((core.json_decode(raw.body, { max_size = #raw.body })))
      assert.truthy(core.json_decode(raw.body, { max_size = #raw.body, max_pairs = 20000 }))
      local cmds = {}
      for i = 1, 50 do cmds[i] = { "big.rows", { page = i } } end
      local results, errors = c:batch(cmds)
      assert.is_nil(errors)
      local rows = 0
      for i = 1, 50 do
         rows = rows + #results[i]
         assert.equal("50", results[i][50].ID)
      end
      assert.equal(2500, rows)
   end)
end)

describe("b24 call numbers", function()
   local srv, url, dir
   local function b24cmd(args)
      local out, err = dir .. "/out", dir .. "/err"
      local _, code = b24.exec("B24_WEBHOOK_URL=" .. q(url) .. " " .. q(b24.bin) .. " " .. args
         .. " > " .. out .. " 2> " .. err)
      return b24.read(out), b24.read(err), code
   end

   setup(function()
      srv = b24.start{ script = SCRIPT, args = { "--workers", "1" } }
      url = portal.url(srv)
      dir = b24.tmpdir()
   end)
   teardown(function()
      if srv then srv:stop() end
      if dir then os.execute("rm -rf " .. q(dir)) end
   end)

   it("a JSON argument and key=value agree on 9007199254740993, and the result prints every digit", function()
      local out, err, code = b24cmd("call crm.deal.add " .. q('{"fields":{"OPPORTUNITY":9007199254740993}}'))
      assert.equal(0, code, err)
      assert.equal("", err)
      assert.equal('{"body":"{\\"fields\\":{\\"OPPORTUNITY\\":9007199254740993}}",'
         .. '"value":{"fields":{"OPPORTUNITY":9007199254740993}}}\n', out)
      out, err, code = b24cmd("call crm.deal.add 'fields[OPPORTUNITY]=9007199254740993'")
      assert.equal(0, code, err)
      assert.equal('{"body":"{\\"fields\\":{\\"OPPORTUNITY\\":\\"9007199254740993\\"}}",'
         .. '"value":{"fields":{"OPPORTUNITY":"9007199254740993"}}}\n', out)
   end)

   it("a JSON argument keeps floats' digits: 1234567890123.45, 123456789012345.67, 0.1, 1e300", function()
      local json = '{"a":1234567890123.45,"b":123456789012345.67,"c":0.1,"d":1e300,"e":-0.0}'
      local out, err, code = b24cmd("call crm.deal.add " .. q(json))
      assert.equal(0, code, err)
      local sent = '{"a":1234567890123.45,"b":123456789012345.67,"c":0.1,"d":1e+300,"e":-0.0}'
      assert.equal('{"body":' .. core.json_encode(sent) .. ',"value":' .. sent .. '}\n', out)
   end)

   it("an empty list prints as [], a bad JSON argument is a usage error", function()
      local out, err, code = b24cmd("call empty.list")
      assert.equal(0, code, err)
      assert.equal("[]\n", out)
      out, err, code = b24cmd("call crm.deal.add " .. q('{"fields":'))
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("b24 call: the parameters are not JSON: malformed JSON at byte 11", err, 1, true)
   end)
end)

describe("the library without lua-cjson", function()
   local srv
   setup(function() srv = b24.start{ script = SCRIPT, args = { "--workers", "1" } } end)
   teardown(function() if srv then srv:stop() end end)

   it("loads, calls, batches and refuses with cjson unavailable", function()
      local saved, names = {}, {}
      for name, mod in pairs(package.loaded) do
         if (name:match("^bitrix24") and name ~= "bitrix24.core") or name:match("^b24%.") or name:match("^cjson") then
            saved[name], names[#names + 1] = mod, name
         end
      end
      local stubbed = { "cjson", "cjson.safe", "b24.host" }
      local preload = {}
      for _, name in ipairs(stubbed) do preload[name] = package.preload[name] end
      local function restore()
         for _, name in ipairs(names) do package.loaded[name] = saved[name] end
         for name in pairs(package.loaded) do
            if (name:match("^bitrix24") or name:match("^b24%.")) and saved[name] == nil and name ~= "bitrix24.core" then
               package.loaded[name] = nil
            end
         end
         for _, name in ipairs(stubbed) do package.preload[name] = preload[name] end -- nil ones too
      end
      for _, name in ipairs(names) do package.loaded[name] = nil end
      local function absent() error("lua-cjson is not installed") end
      package.preload.cjson, package.preload["cjson.safe"] = absent, absent
      package.preload["b24.host"] = function()
         return { log = function() end, isatty = function() return false end }
      end
      local ok, err = pcall(function()
         local bitrix24 = require "bitrix24"
         local client = bitrix24.client{ url = portal.url(srv), limit = false }
         local got = assert(client:call("crm.deal.add", { fields = { OPPORTUNITY = 1234567890123.45 } }))
         assert.equal('{"fields":{"OPPORTUNITY":1234567890123.45}}', got.body)
         local results = assert(client:batch({ { "crm.deal.add", { fields = { OPPORTUNITY = 0.1 } } } }))
         assert.equal("crm.deal.add?fields%5BOPPORTUNITY%5D=0.1", results[1].cmd)
         local router = bitrix24.router{ token = "t", log = function() end }
         local status, _, body = router:handle{ method = "GET", path = "/", headers = {}, body = "" }
         assert.equal(405, status)
         assert.equal('{"error":"POST expected"}', body)
         local lines = {}
         local sink = { write = function(self, ...)
            for _, s in ipairs{ ... } do lines[#lines + 1] = s end
            return self
         end, flush = function() end }
         local cli = require "b24.cli"
         local code = cli.main({ "call", "--webhook", portal.url(srv), "crm.deal.add", '{"n":0.1}' },
                               { stdout = sink, stderr = sink, getenv = function() end })
         assert.equal(0, code, table.concat(lines))
         assert.equal('{"body":"{\\"n\\":0.1}","value":{"n":0.1}}\n', table.concat(lines))
         assert.is_nil(package.loaded.cjson)
         assert.is_nil(package.loaded["cjson.safe"])
      end)
      restore()
      assert(ok, err)
   end)
end)
