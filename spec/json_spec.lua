-- bitrix24.core json_decode / json_encode: RFC 8259 with every digit of a number kept, the form
-- codec's limits checked before anything is built, a memory budget, and form mode, which must give
-- exactly form_decode(form_encode(value)) (a JSON event body read as PHP reads the same data posted
-- as a form). Runs under Lua 5.4 and LuaJIT.
local core = require "bitrix24.core"
local cjson = require("cjson").new()

local shared = require "helpers.shared"

local decode, encode, null = core.json_decode, core.json_encode, core.json_null
local is_54 = math.type ~= nil

local function rep(unit, n, sep)
   local t = {}
   for i = 1, n do t[i] = unit(i) end
   return table.concat(t, sep or ",")
end

local function nest(open, close, n, inner)
   return open:rep(n) .. (inner or "") .. close:rep(n)
end

-- nil, message, kind of a refused body
local function refused(s, opts)
   local v, msg, kind = decode(s, opts)
   assert.is_nil(v, "accepted " .. s:sub(1, 60))
   assert.is_string(msg)
   return kind, msg
end

-- The Lua heap grown by fn (a full collection before and after), in bytes.
local function heap_growth(fn)
   collectgarbage()
   collectgarbage()
   local before = collectgarbage("count")
   local keep = fn()
   collectgarbage()
   collectgarbage()
   local grown = (collectgarbage("count") - before) * 1024
   return grown, keep
end

describe("bitrix24.core json_decode", function()
   it("decodes objects, arrays and scalars (null as json_null, which is cjson.null)", function()
      assert.same({ a = 1, b = { 1, 2, { c = "d" } }, e = true, f = false, g = null, h = "x" },
         decode('{"a":1,"b":[1,2,{"c":"d"}],"e":true,"f":false,"g":null,"h":"x"}'))
      assert.equal(cjson.null, null)
      assert.equal("userdata", type(null))
      assert.equal("x", decode('"x"'))
      assert.equal(5, decode("5"))
      assert.is_true(decode("true"))
      assert.equal(null, decode("null"))
      assert.same({}, decode("[]"))
      assert.same({}, decode("{}"))
      assert.same({ {}, { {} } }, decode("[[],[{}]]"))
   end)

   it("allows the four whitespace bytes around every token, and no others", function()
      assert.same({ a = { 1, 2 } }, decode(' \t\r\n{ \n"a" \t: [ 1 ,\r\n2 ] } \n'))
      assert.equal("malformed", (refused("\f[]")))
      assert.equal("malformed", (refused("[1,\v2]")))
   end)

   it("decodes every escape, \\u with surrogate pairs, and keeps raw UTF-8", function()
      assert.equal('"\\/\b\f\n\r\t', decode([["\"\\\/\b\f\n\r\t"]]))
      assert.equal("A\0B", decode([["\u0041\u0000\u0042"]]))
      assert.equal("é€😀", decode([["\u00e9\u20AC\ud83d\ude00"]]))
      assert.equal("é€😀 Привет", decode('"é€😀 Привет"'))
      assert.equal("\244\143\191\191", decode([["\uDBFF\uDFFF"]])) -- U+10FFFF
      assert.same({ ["ключ\n"] = "значение" }, decode([[{"\u043a\u043b\u044e\u0447\n":"значение"}]]))
   end)

   it("keeps the last of repeated keys", function()
      assert.same({ a = 3, b = 2 }, decode('{"a":1,"b":2,"a":3}'))
   end)

   it("keeps long strings and strings with escapes apart (one decode buffer reused)", function()
      local long = ("ab\\n"):rep(5000)
      local t = decode('["' .. long .. '","x\\ty","' .. ("z"):rep(70000) .. '"]')
      assert.equal(("ab\n"):rep(5000), t[1])
      assert.equal("x\ty", t[2])
      assert.equal(70000, #t[3])
   end)

   describe("numbers", function()
      it("reads integers that fit in int64 exactly (Lua 5.4 integers), others as doubles", function()
         if is_54 then
            local t = decode("[9007199254740993, 9223372036854775807, -9223372036854775808, 0, -0, 42]")
            assert.equal(9007199254740993, t[1])
            assert.equal(math.maxinteger, t[2])
            assert.equal(math.mininteger, t[3])
            for i = 1, 6 do assert.equal("integer", math.type(t[i])) end
            assert.equal("float", math.type(decode("9223372036854775808")))
            assert.equal(2 ^ 63, decode("9223372036854775808"))
            assert.equal(-2 ^ 63 - 2 ^ 11, decode("-9223372036854777856"))
            assert.equal("float", math.type(decode("1.0")))
            assert.equal("float", math.type(decode("1e2")))
         else
            assert.equal(2 ^ 53, decode("9007199254740993")) -- LuaJIT: doubles
            assert.equal(2 ^ 63, decode("9223372036854775807"))
         end
      end)

      it("reads decimals correctly rounded: 0.1, 123456789012345.67, 1e300, -0.0, subnormals", function()
         assert.equal(0.1, decode("0.1"))
         assert.equal(123456789012345.67, decode("123456789012345.67"))
         assert.equal(1e300, decode("1e300"))
         assert.equal(1e300, decode("1E+300"))
         assert.equal(-1 / 0, 1 / decode("-0.0"))
         assert.equal(5e-324, decode("5e-324"))
         assert.equal(0, decode("1e-400"))
         assert.equal(100, decode("1e2"))
         assert.equal(0.1, decode("0.1000000000000000055511151231257827"))
         assert.equal(1.2345678901234568e22, decode("12345678901234567890123"))
         assert.equal(1.7976931348623157e308, decode("1.7976931348623157e308"))
         assert.equal(1e-7, decode("0.0000001"))
         assert.equal(1654094027.205917, decode("1654094027.205917"))
      end)

      it("reads 20,000 random doubles back exactly from their %.17g text", function()
         math.randomseed(20240922)
         for _ = 1, 20000 do
            local x = (math.random() - 0.5) * 10 ^ math.random(-320, 300)
            local s = string.format("%.17g", x)
            if s:find("^%-?%d") then
               assert.equal(tonumber(s), decode(s), s)
            end
         end
      end)

      it("refuses numbers a double cannot hold", function()
         local kind, msg = refused("[1e400]")
         assert.equal("malformed", kind)
         assert.matches("at byte 2: number out of range", msg, 1, true)
         assert.equal("malformed", (refused("-1e309")))
      end)
   end)

   describe("refuses what RFC 8259 does not allow, naming the byte (1-based)", function()
      local cases = {
         { "", 1, "unexpected end" }, { "   ", 4, "unexpected end" }, { "[1,2", 5, "expected ',' or ']'" },
         { '{"a":1,}', 8, "expected a string key" }, { "[1,]", 4, "expected a value" },
         { "[1 2]", 4, "expected ',' or ']'" }, { '{"a" 1}', 6, "expected ':'" }, { "{a:1}", 2, "string key" },
         { "{'a':1}", 2, "string key" }, { "01", 2, "trailing data" }, { "1.", 1, "invalid number" },
         { ".5", 1, "expected a value" }, { "+1", 1, "expected a value" }, { "-", 1, "invalid number" },
         { "1e", 1, "invalid number" }, { "1e+", 1, "invalid number" }, { "0x10", 2, "trailing data" },
         { "NaN", 1, "expected a value" }, { "Infinity", 1, "expected a value" }, { "-Infinity", 1, "invalid" },
         { "tru", 1, "expected a value" }, { "nul", 1, "expected a value" }, { "True", 1, "expected a value" },
         { '"abc', 1, "unterminated string" }, { '"\\x"', 2, "unknown escape" }, { '"\\', 1, "unterminated" },
         { '"\t"', 2, "control character" }, { '"a\nb"', 3, "control character" },
         { '"\\u12"', 2, "four hex digits" }, { '"\\u12g4"', 2, "four hex digits" },
         { '"\\ud800"', 2, "without its pair" }, { '"\\ud800\\u0041"', 2, "without its pair" },
         { '"\\udc00"', 2, "lone low surrogate" }, { '"\255"', 2, "invalid UTF-8" },
         { '"\192\175"', 2, "invalid UTF-8" }, { '"\237\160\128"', 2, "invalid UTF-8" },
         { '"\244\144\128\128"', 2, "invalid UTF-8" }, { '"\226\130"', 2, "invalid UTF-8" },
         { '"\128"', 2, "invalid UTF-8" }, { "\239\187\191[]", 1, "expected a value" },
         { "[1]x", 4, "trailing data" }, { "{}{}", 3, "trailing data" }, { "[1]\0", 4, "trailing data" },
         { "[", 2, "unexpected end" }, { '{"a":', 6, "unexpected end" }, { "[[[[", 5, "unexpected end" },
      }
      for _, c in ipairs(cases) do
         it((string.format("%q", c[1]):gsub("\\\n", "\\n")), function()
            local kind, msg = refused(c[1])
            assert.equal("malformed", kind)
            assert.matches("^malformed JSON at byte " .. c[2] .. ": ", msg)
            assert.matches(c[3], msg, 1, true)
         end)
      end
   end)

   it("takes opts.null as the value of null", function()
      local NULL = {}
      local t = decode('{"a":null,"b":[null,1]}', { null = NULL })
      assert.equal(NULL, t.a)
      assert.equal(NULL, t.b[1])
      assert.equal(false, decode("null", { null = false }))
      assert.equal(null, decode("null", { null = nil }))
   end)

   describe("limits (form_decode's: depth 64, 10,000 values, 1 MiB)", function()
      it("accepts 64 levels and refuses 65 with too_deep", function()
         assert.is_table(decode(nest("[", "]", 64)))
         assert.is_table(decode(nest('{"a":', "}", 63, "[]")))
         local kind, msg = refused(nest("[", "]", 65))
         assert.equal("too_deep", kind)
         assert.equal("JSON body nests deeper than 64 levels", msg)
         assert.equal("too_deep", (refused(nest('{"a":', "}", 64, "[]"))))
         assert.equal("too_deep", (refused(("["):rep(100000)))) -- refused before the end is seen
      end)

      it("counts every member and element: 10,000 pass, 10,001 are too_many", function()
         local arr = "[" .. rep(function() return "1" end, 10000) .. "]"
         assert.equal(10000, #decode(arr))
         local kind, msg = refused("[" .. rep(function() return "1" end, 10001) .. "]")
         assert.equal("too_many", kind)
         assert.equal("JSON body has more than 10000 values", msg)
         -- one member + 9,999 elements
         assert.equal(9999, #decode('{"k":[' .. rep(function() return "1" end, 9999) .. "]}").k)
         assert.equal("too_many", (refused('{"k":[' .. rep(function() return "1" end, 10000) .. "]}")))
         local keys = "{" .. rep(function(i) return '"k' .. i .. '":[]' end, 10000) .. "}"
         assert.is_table(decode(keys))
         assert.equal("too_many", (refused(keys:sub(1, -2) .. ',"x":1}')))
      end)

      it("accepts 1 MiB and refuses one byte more with too_large", function()
         local body = '"' .. ("x"):rep(1024 * 1024 - 2) .. '"'
         assert.equal(1024 * 1024 - 2, #decode(body))
         local kind, msg = refused(body .. " ")
         assert.equal("too_large", kind)
         assert.equal("JSON body of 1048577 bytes is over the limit of 1048576 bytes", msg)
      end)

      it("takes custom limits, each defaulting when absent", function()
         assert.is_table(decode("[[1]]", { max_depth = 2 }))
         assert.equal("too_deep", (refused("[[[1]]]", { max_depth = 2 })))
         assert.is_table(decode("[1,2]", { max_pairs = 2 }))
         assert.equal("too_many", (refused("[1,2,3]", { max_pairs = 2 })))
         assert.is_table(decode("[12345]", { max_size = 7 }))
         assert.equal("too_large", (refused("[123456]", { max_size = 7 })))
         assert.equal("too_deep", (refused(nest("[", "]", 65), { max_size = 1000 })))
         assert.is_table(decode(nest("[", "]", 1000), { max_depth = 1000 }))
         assert.equal(20000, #decode("[" .. rep(function() return "0" end, 20000) .. "]", { max_pairs = 20000 }))
      end)

      it("raises on bad limits and on a body that is not a string", function()
         for _, lim in ipairs({ { max_depth = 0 }, { max_depth = 1001 }, { max_depth = 1.5 }, { max_pairs = 0 },
            { max_pairs = "10" }, { max_size = -1 }, { max_memory = 0 } }) do
            local ok, err = pcall(decode, "[]", lim)
            assert.is_false(ok)
            assert.matches("bad limit", err, 1, true)
         end
         assert.has_error(function() decode("[]", "x") end)
         assert.has_error(function() decode() end)
         assert.has_error(function() decode({}) end)
      end)

      it("builds nothing for a refused body: the limits are checked before the value is built", function()
         local bodies = {
            "[" .. rep(function() return '"' .. ("v"):rep(50) .. '"' end, 10001) .. "]", -- too_many at the end
            '{"a":[' .. rep(function() return '{"k":"x"}' end, 5000) .. '],"b":' .. nest("[", "]", 70) .. "}",
            "[" .. rep(function() return "[1,2,3]" end, 2000) .. "] x", -- malformed at the very end
         }
         for _, body in ipairs(bodies) do
            local grown = heap_growth(function() return decode(body) end)
            assert.is_true(grown < 16 * 1024, "grew " .. grown .. " bytes")
         end
      end)

      it("keeps decoding after a refusal", function()
         assert.is_nil(decode(nest("[", "]", 65)))
         assert.same({ 1 }, decode("[1]"))
      end)
   end)

   describe("memory", function()
      -- Lua heap taken by the value, per byte of body, for hostile shapes at the default limits
      local shapes = {
         { "{\"k\":[1,1,…]}", '{"k":[' .. rep(function() return "1" end, 9999) .. "]}", 9 },
         { "distinct keys", "{" .. rep(function(i) return string.format('"%x":1', i) end, 10000) .. "}", 11 },
         { "distinct strings", "[" .. rep(function(i) return string.format('"%x"', i) end, 10000) .. "]", 10 },
         { "[{\"a\":1},…]", "[" .. rep(function() return '{"a":1}' end, 5000) .. "]", 16 },
         { "the issue 12 body", '{"event":"X","' .. ("k"):rep(30000) .. '":[' .. rep(function() return "1" end,
            9998) .. "]}", 4 },
         { "one long string", '["' .. ("x"):rep(1000000) .. '"]', 1.1 },
      }
      for _, s in ipairs(shapes) do
         it("keeps " .. s[1] .. " under " .. s[3] .. " times its size", function()
            for _, form in ipairs({ false, true }) do
               local grown, v = heap_growth(function() return decode(s[2], { form = form }) end)
               assert.is_table(v)
               assert.is_true(grown <= s[3] * #s[2], string.format("%.1fx", grown / #s[2]))
            end
         end)
      end

      it("refuses with too_large a value over 16 times its body (+64 KiB): [[],[],…], [{},…], [[1],…]", function()
         for _, body in ipairs({ "[" .. rep(function() return "[]" end, 10000) .. "]",
            "[" .. rep(function() return "{}" end, 10000) .. "]",
            "[" .. rep(function() return "[1]" end, 5000) .. "]" }) do
            local grown, v, msg, kind
            grown = heap_growth(function()
               v, msg, kind = decode(body)
            end)
            assert.is_nil(v)
            assert.equal("too_large", kind)
            assert.matches("would take more than %d+ bytes as Lua values %(max_memory%)", msg)
            assert.is_true(grown < 16 * 1024) -- what was built is garbage
            assert.is_table(decode(body, { max_memory = 64 * #body }))
         end
         -- 1,000 of them fit in the 64 KiB every body has
         assert.equal(1000, #decode("[" .. rep(function() return "[]" end, 1000) .. "]"))
      end)

      -- small bodies skip the budget's bookkeeping on the strength of this bound
      it("takes at most 32 bytes of Lua memory per byte of body, whatever the shape", function()
         local function distinct(i) return string.format("%x", i) end
         local worst = {
            "[" .. rep(function() return "[]" end, 20000) .. "]",
            "[" .. rep(function() return "{}" end, 20000) .. "]",
            "[" .. rep(function() return "[1]" end, 20000) .. "]",
            "[" .. rep(function() return '{"":0}' end, 20000) .. "]",
            "{" .. rep(function(i) return '"' .. distinct(i) .. '":[]' end, 20000) .. "}",
            "[" .. rep(function(i) return i .. "e14" end, 20000) .. "]",
            "[" .. rep(function(i) return '"\\u' .. string.format("%04x", 0x400 + i % 0x400) .. '"' end, 20000) .. "]",
         }
         for _, body in ipairs(worst) do
            for _, form in ipairs({ false, true }) do
               local grown, v = heap_growth(function()
                  return decode(body, { form = form, max_pairs = 100000, max_memory = 1073741824 })
               end)
               assert.is_table(v, body:sub(1, 20))
               assert.is_true(grown < 32 * #body, string.format("%.1fx for %s", grown / #body, body:sub(1, 20)))
            end
         end
      end)

      it("holds the value to max_memory while it is built, whatever the shape", function()
         -- strings LuaJIT already holds cost nothing more: this body is decoded for the first time
         local body = "[" .. rep(function(i) return '"' .. i .. ("y"):rep(40) .. '"' end, 5000) .. "]"
         local v, msg, kind = decode(body, { max_memory = 100000 })
         assert.is_nil(v)
         assert.equal("too_large", kind)
         assert.matches("100000", msg, 1, true)
         assert.equal(5000, #decode(body))
      end)
   end)

   describe("form mode: exactly form_decode(form_encode(value)), PHP reading the data as a form", function()
      local function reference(s, inner)
         local v = (inner or decode)(s)
         return core.form_decode(core.form_encode(v), { max_pairs = 10000000, max_size = 1073741824 })
      end

      local function same_as_form(s)
         local got, msg = decode(s, { form = true })
         assert.is_table(got, msg)
         assert.same(reference(s), got)
         return got
      end

      it("makes every scalar a string: true 1, false 0, numbers as form_encode writes them", function()
         assert.same({ t = "1", f = "0", i = "42", n = "-7", x = "1.5", z = "0", big = "1e+300", e = "100",
            tenth = "0.1", third = "0.3333333333333333", s = "str", m = "0" },
            same_as_form('{"t":true,"f":false,"i":42,"n":-7,"x":1.5,"z":-0.0,"big":1e300,"e":1E2,"tenth":0.1,'
               .. '"third":0.3333333333333333,"s":"str","m":-0}'))
      end)

      it("keeps every digit of an integer, on LuaJIT too", function()
         assert.same({ a = "9007199254740993", b = "9223372036854775807", c = "-9223372036854775808",
            d = "9.223372036854776e+18", e = "123456789012345.67" },
            decode('{"a":9007199254740993,"b":9223372036854775807,"c":-9223372036854775808,'
               .. '"d":9223372036854775808,"e":123456789012345.67}', { form = true }))
      end)

      it("omits null and empty arrays and objects, and what only holds them", function()
         assert.same({ e = "1" }, same_as_form('{"a":null,"b":[],"c":{},"d":{"x":[null,{}]},"e":1}'))
         assert.same({}, same_as_form('{"a":null}'))
         assert.same({}, same_as_form("[]"))
         assert.same({}, same_as_form("[[[[]]]]"))
      end)

      it("makes an array with a hole a map of its indexes, a trailing null leaves a sequence", function()
         assert.same({ a = { ["0"] = "1", ["2"] = "2" }, b = { "1", "2" }, c = { ["1"] = "x" } },
            same_as_form('{"a":[1,null,2],"b":[1,2,null],"c":[null,"x"]}'))
      end)

      it("makes objects keyed 0..n-1 (in sorted order) sequences, as form_decode does", function()
         assert.same({ a = { "x", "y" }, b = { "y", "x" }, c = { ["0"] = "a", ["1"] = "b", ["10"] = "c" } },
            same_as_form('{"a":{"0":"x","1":"y"},"b":{"1":"x","0":"y"},"c":{"0":"a","1":"b","10":"c"}}'))
         assert.same({ "a", "b" }, same_as_form('{"1":"b","0":"a"}'))
         assert.same({ ["1"] = "a" }, same_as_form('{"1":"a"}'))
         assert.same({ ["00"] = "a", ["0"] = "b" }, same_as_form('{"00":"a","0":"b"}'))
      end)

      it("reads a top-level array as form_decode reads 0=…&1=…", function()
         assert.same({ "1", "2", { a = "x" } }, same_as_form('[1,2,{"a":"x"}]'))
      end)

      it("reads keys with '[', ']', NUL, spaces and empty keys as parse_str reads the names", function()
         assert.same({ a = { b = "1" } }, same_as_form('{"a[b]":1}'))
         assert.same({ x = { a = "1" } }, same_as_form('{"x":{"a]b":1}}'))
         assert.same({ x = { "1", "2" } }, same_as_form('{"x":{"":1," ":2}}'))
         assert.same({ a = "1" }, same_as_form('{"a\\u0000b":1}'))
         assert.same({ b = "2" }, same_as_form('{"":1,"b":2}'))
         assert.same({ a = "1" }, same_as_form('{" a":1}'))
         assert.same({ a_b = "1" }, same_as_form('{"a[b":1}'))
         assert.same({ x = { ["a[b"] = "1" } }, same_as_form('{"x":{"a[b":1}}'))
         assert.same({ a = { { x = "1" }, { y = "2" } } }, same_as_form('{"a":{"":{"x":1,"y":2}}}'))
         assert.same({ a = { b = "3" } }, same_as_form('{"a":{"b":{"c":2},"b]":3}}'))
      end)

      it("refuses a bracket key whose form body would blow up (a prefix repeated per value)", function()
         local body = '{"' .. ("k["):rep(100) .. '":[' .. rep(function() return "1" end, 5000) .. "]}"
         local kind, msg = refused(body, { form = true })
         assert.equal("too_large", kind)
         assert.matches("'[', ']' or NUL in its keys", msg, 1, true)
      end)

      it("counts the values that are not null as fields: 10,000 pass, 10,001 are too_many", function()
         local nulls = rep(function() return "null" end, 5000)
         local body = '{"k":[' .. rep(function() return "1" end, 10000) .. "," .. nulls .. '],"e":[[],{}]}'
         assert.equal(10000, #decode(body, { form = true }).k)
         local kind, msg = refused('{"k":[' .. rep(function() return "1" end, 10001) .. "]}", { form = true })
         assert.equal("too_many", kind)
         assert.equal("JSON body has more than 10000 fields", msg)
      end)

      it("counts depth in brackets as form_decode does: 65 containers pass, 66 are too_deep", function()
         assert.is_table(decode(nest("[", "]", 65, "1"), { form = true }))
         local deep = nest("[", "]", 65, "1")
         assert.same(reference(deep, function(x) return decode(x, { max_depth = 65 }) end),
            decode(deep, { form = true }))
         assert.equal("too_deep", (refused(nest("[", "]", 66, "1"), { form = true })))
         assert.equal("too_deep", (refused('{"x' .. ("[a]"):rep(70) .. '":1}', { form = true })))
      end)

      it("refuses a top level that is not an object or an array", function()
         for _, s in ipairs({ "1", '"x"', "null", "true" }) do
            local kind, msg = refused(s, { form = true })
            assert.equal("malformed", kind)
            assert.matches("a form body must be a JSON object or array", msg, 1, true)
         end
         assert.equal("malformed", (refused("[1,", { form = true })))
      end)

      it("reads the captured events as the portal's form bodies of them", function()
         local dir = shared.dir .. "/vectors/events/"
         for _, name in ipairs({ "app-oncrmcontactadd", "webhook-ontaskcommentadd" }) do
            local json = shared.read(dir .. name .. ".expected.json")
            assert.same(core.form_decode(shared.read(dir .. name .. ".form")), decode(json, { form = true }))
            same_as_form(json)
         end
         local deal = same_as_form(shared.read(dir .. "webhook-oncrmdealadd.json"))
         assert.equal("7405", deal.data.FIELDS.ID)
      end)

      it("agrees with form_decode(form_encode(cjson.decode(s))) on the captured bodies", function()
         for _, name in ipairs({ "events/app-oncrmcontactadd.expected.json", "events/webhook-oncrmdealadd.json",
            "events/webhook-ontaskcommentadd.expected.json", "responses/batch-list-empty.json",
            "responses/batch-mixed-success-and-errors.json", "responses/errors.json", "hmac.json" }) do
            local s = shared.vector(name)
            assert.same(reference(s, cjson.decode), decode(s, { form = true }), name)
         end
      end)

      -- Random bodies: keys from a small alphabet (numeric, repeated, with brackets, empty), values
      -- of every kind. Differential against the Lua composition with json_decode (every digit kept),
      -- and against cjson where no number passes 2^53.
      it("agrees with the composition on 3,000 random bodies", function()
         math.randomseed(12)
         local keys = { "a", "b", "0", "1", "2", "10", "00", "-1", "a[b", "x]", "", " ", " a", "[", "k\\u0000",
            "é", "\\u00e9", "a b", "a.b", "a%5Bb%5D", "9223372036854775807", "9223372036854775808" }
         local scalars = { "1", "0", "-0", "1.5", "-2.25e3", "1e300", "0.1", "true", "false", "null", '""',
            '"x"', '"a&b=c"', '"\\u0000"', "123456789", "9007199254740993", '"Ж"', "[]", "{}" }
         local function gen(depth)
            local r = math.random()
            if depth > 4 or r < 0.45 then return scalars[math.random(#scalars)] end
            local n, parts = math.random(0, 5), {}
            if r < 0.7 then
               for i = 1, n do parts[i] = gen(depth + 1) end
               return "[" .. table.concat(parts, ",") .. "]"
            end
            for i = 1, n do parts[i] = '"' .. keys[math.random(#keys)] .. '":' .. gen(depth + 1) end
            return "{" .. table.concat(parts, ",") .. "}"
         end
         local checked = 0
         for _ = 1, 3000 do
            local s = gen(math.random() < 0.5 and 1 or 0)
            if s:sub(1, 1) == "{" or s:sub(1, 1) == "[" then
               local got = decode(s, { form = true })
               if is_54 or not s:find("9007199254740993", 1, true) then -- form mode keeps its digits
                  assert.same(reference(s), got, s)
               end
               if not s:find("9007199254740993", 1, true) then -- 2^53 + 1: a double loses it
                  assert.same(reference(s, cjson.decode), got, s)
               end
               checked = checked + 1
            end
         end
         assert.is_true(checked > 1000)
      end)

      it("builds one top-level field with only, as the whole value has it", function()
         local bodies = {
            '{"event":"X","auth":{"application_token":"a"},"auth":{"member_id":"m"}}',
            '{"auth":{"application_token":"a"},"auth":"flat"}',
            '{"auth[application_token]":"a","auth":{"domain":"d"}}',
            '{" auth":{"application_token":"a"},"data":{"auth":1}}',
            '{"data":[[[[[1]]]]],"auth":{"t":[1,2,{"x":null}]}}',
            '[{"a":1},"b",{"auth":1}]',
         }
         for _, body in ipairs(bodies) do
            local whole = assert(decode(body, { form = true }))
            for _, name in ipairs{ "auth", "event", "data", "0", "1", "missing" } do
               local only = assert(decode(body, { form = true, only = name }))
               local key = name
               if tonumber(name) and only[key] == nil then key = tonumber(name) + 1 end
               local want = whole[name]
               if want == nil and tonumber(name) then want = whole[tonumber(name) + 1] end
               assert.same(want, only[key], body .. " " .. name)
            end
         end
         assert.has_error(function() decode("{}", { only = "auth" }) end,
            "bad option 'only' (a string, with form = true, expected)")
      end)

      it("reads the issue 12 body as its one long key, and builds nothing for empty containers", function()
         local body = '{"event":"X","' .. ("k"):rep(30000) .. '":[' .. rep(function() return "1" end, 9998) .. "]}"
         local t = decode(body, { form = true })
         assert.equal(9998, #t[("k"):rep(30000)])
         local empties = "[" .. rep(function() return "[{}]" end, 100000) .. "]"
         local grown, v = heap_growth(function() return decode(empties, { form = true, max_pairs = 10 }) end)
         assert.same({}, v)
         assert.is_true(grown < 4096, grown)
      end)
   end)
end)

describe("bitrix24.core json_encode", function()
   it("writes scalars, sequences as arrays, string keys as objects in bytewise key order", function()
      assert.equal("null", encode(nil))
      assert.equal("true", encode(true))
      assert.equal("false", encode(false))
      assert.equal('"x"', encode("x"))
      assert.equal("[1,2,[3]]", encode({ 1, 2, { 3 } }))
      assert.equal('{"B":4,"a":2,"ab":3,"b":1,"é":5}', encode({ b = 1, a = 2, ab = 3, B = 4, ["é"] = 5 }))
      assert.equal('{"a":{"b":[{"c":null}]}}', encode({ a = { b = { { c = null } } } }))
   end)

   it("gives one text for one table, whatever the insertion order (10,000 keys past LuaJIT's stack)", function()
      local a, b = {}, {}
      for i = 1, 10000 do a["k" .. (i * 7919 % 10007)] = i end
      for i = 10000, 1, -1 do b["k" .. (i * 7919 % 10007)] = i end
      local s = encode(a)
      assert.equal(s, encode(b))
      assert.same(a, decode(s, { max_pairs = 20000 }))
      local prev
      for k in s:gmatch('"(k%d+)":') do
         assert.is_true(prev == nil or prev < k)
         prev = k
      end
   end)

   it("writes an empty table as [] unless opts.empty is \"object\"", function()
      assert.equal("[]", encode({}))
      assert.equal('{"a":[]}', encode({ a = {} }))
      assert.equal('{"a":{}}', encode({ a = {} }, { empty = "object" }))
      assert.equal("[]", encode({}, { empty = "array" }))
      assert.has_error(function() encode({}, { empty = "map" }) end)
   end)

   it("escapes what RFC 8259 requires and nothing else", function()
      assert.equal([["\"\\/\b\f\n\r\t\u0000\u001f\u0001"]], encode('"\\/\b\f\n\r\t\0\31\1'))
      assert.equal('"a/b"', encode("a/b"))
      assert.equal('"é€😀\127"', encode("é€😀\127"))
      local all = {}
      for i = 0, 127 do all[#all + 1] = string.char(i) end
      assert.equal(table.concat(all), decode(encode(table.concat(all))))
   end)

   it("refuses a string that is not UTF-8, naming the field and the byte", function()
      local ok, err = pcall(encode, { fields = { TITLE = "ok", NAME = "bad\255" } })
      assert.is_false(ok)
      assert.equal("cannot JSON-encode a string that is not UTF-8 (byte 4) at fields[NAME]", err)
      for _, s in ipairs({ "\192\175", "\237\160\128", "\244\144\128\128", "\226\130", "\128" }) do
         assert.has_error(function() encode({ s }) end)
      end
      ok, err = pcall(encode, { ["k\255"] = 1 })
      assert.is_false(ok)
      assert.equal("cannot JSON-encode a key that is not UTF-8 (byte 2) at k\\xFF", err)
   end)

   describe("numbers", function()
      it("writes integers exactly", function()
         assert.equal("[0,-7,13430,9007199254740992]", encode({ 0, -7, 13430, 2 ^ 53 }))
         if is_54 then
            assert.equal("[9007199254740993,9223372036854775807,-9223372036854775808]",
               encode({ 9007199254740993, math.maxinteger, math.mininteger }))
         end
      end)

      it("writes integral floats without a fraction, -0.0 as -0.0 (it reads back as -0.0)", function()
         assert.equal("[13430,-7,1152921504606846976]", encode({ 13430.0, -7.0, 2.0 ^ 60 }))
         assert.equal("-0.0", encode(-0.0))
         assert.equal(-1 / 0, 1 / decode(encode(-0.0)))
         assert.equal("0", encode(0.0))
      end)

      it("writes other floats as the shortest text of 15 to 17 digits that reads back the same", function()
         assert.equal("[0.1,0.30000000000000004,123456789012345.67,1e+300,-1.5,1e-07,0.3333333333333333]",
            encode({ 0.1, 0.1 + 0.2, 123456789012345.67, 1e300, -1.5, 1e-7, 1 / 3 }))
         assert.equal("9.223372036854776e+18", encode(2 ^ 63))
         assert.equal("1.7976931348623157e+308", encode(1.7976931348623157e308))
         math.randomseed(7)
         for _ = 1, 20000 do
            local x = (math.random() - 0.5) * 10 ^ math.random(-320, 300)
            local s = encode(x)
            assert.equal(x, decode(s), s)
            assert.is_true(#s <= 24, s)
         end
      end)

      it("refuses NaN and infinities, naming where", function()
         local ok, err = pcall(encode, { a = { b = { 1, 0 / 0 } } })
         assert.is_false(ok)
         assert.equal("cannot JSON-encode a NaN or infinite number at a[b][2]", err)
         ok, err = pcall(encode, { fields = { OPPORTUNITY = math.huge } })
         assert.is_false(ok)
         assert.equal("cannot JSON-encode a NaN or infinite number at fields[OPPORTUNITY]", err)
         ok, err = pcall(encode, -math.huge)
         assert.is_false(ok)
         assert.equal("cannot JSON-encode a NaN or infinite number at (top level)", err)
      end)

      if jit then
         it("writes LuaJIT int64_t and uint64_t cdata exactly", function()
            -- LuaJIT's 64-bit literals, which Lua 5.4 cannot parse
            local t = assert(load("return { 123LL, -5LL, 9223372036854775807LL, 18446744073709551615ULL, "
               .. "-9223372036854775807LL - 1 }"))()
            assert.equal("[123,-5,9223372036854775807,18446744073709551615,-9223372036854775808]", encode(t))
            local ffi = require "ffi"
            assert.equal('{"id":42}', encode({ id = ffi.new("int64_t", 42) }))
            local ok, err = pcall(encode, { p = ffi.new("int[1]") })
            assert.is_false(ok)
            assert.equal("cannot JSON-encode a cdata value (only int64_t and uint64_t numbers) at p", err)
            assert.has_error(function() encode({ ffi.new("double", 1.5) }) end)
         end)
      end
   end)

   describe("raises with the path of what it cannot write", function()
      local function raises(message, v, opts)
         local ok, err = pcall(encode, v, opts)
         assert.is_false(ok, "no error for " .. message)
         assert.equal("cannot JSON-encode " .. message, err)
      end

      it("functions, userdata, threads, other light userdata", function()
         raises("a function value at f", { f = print })
         raises("a userdata value at u[1]", { u = { io.stdout } })
         raises("a thread value at (top level)", coroutine.create(print))
      end)

      it("keys that are not strings or 1..n", function()
         raises("a boolean key at (top level)", { [true] = 1 })
         raises("a table key at a", { a = { [{}] = 1 } })
         raises("a number key that is not an integer at (top level)", { [1.5] = 1 })
         raises("a table with both string and integer keys at t", { t = { 1, 2, x = 3 } })
         raises("a sparse array (integer keys that are not 1..n) at (top level)", { [1] = 1, [3] = 3 })
         raises("a sparse array (integer keys that are not 1..n) at s", { s = { [0] = "x" } })
         raises("a sparse array (integer keys that are not 1..n) at s", { s = { [-1] = "x" } })
      end)

      it("cycles and nesting past max_depth (64 by default)", function()
         local t = { a = {} }
         t.a.b = t
         raises("a table that contains itself at a[b]", t)
         local s = { 1 }
         s[2] = s
         raises("a table that contains itself at [2]", s)
         local deep = {}
         local cur = deep
         for _ = 1, 64 do
            cur.x = {}
            cur = cur.x
         end
         raises("tables nested deeper than 64 levels at x" .. ("[x]"):rep(63), deep)
         assert.is_string(encode(deep, { max_depth = 65 }))
         local shared_table = { 1 }
         assert.equal("[[1],[1]]", encode({ shared_table, shared_table })) -- a repeat is no cycle
      end)

      it("long or binary keys cut and escaped in the path", function()
         local ok, err = pcall(encode, { [("k"):rep(100)] = { ["\1"] = print } })
         assert.is_false(ok)
         assert.equal("cannot JSON-encode a function value at " .. ("k"):rep(40) .. "...[\\x01]", err)
      end)

      it("and keeps encoding afterwards, the scratch released", function()
         for _ = 1, 100 do
            pcall(encode, { a = ("x"):rep(100000), z = print })
         end
         assert.equal('{"a":1}', encode({ a = 1 }))
      end)
   end)

   it("writes json_null, cjson.null and opts.null as null", function()
      local NULL = {}
      assert.equal("[null,null,null]", encode({ null, cjson.null, NULL }, { null = NULL }))
      assert.equal('{"a":null}', encode({ a = NULL }, { null = NULL }))
      assert.equal('{"a":[]}', encode({ a = NULL })) -- without opts.null it is just an empty table
   end)

   it("round-trips through json_decode: tables, the captured bodies, exact numbers", function()
      local t = { fields = { TITLE = "Сделка №1 & co", OPPORTUNITY = 123456789012345.67, PHONE = {
         { VALUE = "+7 900", VALUE_TYPE = "WORK" } } }, select = { "ID", "TITLE", "UF_*" }, big = 2 ^ 53,
         order = { ID = "DESC" }, flag = false, tenth = 0.1, neg = -0.0, huge = 1e300 }
      if is_54 then t.max = math.maxinteger end
      assert.same(t, decode(encode(t)))
      for _, name in ipairs({ "events/app-oncrmcontactadd.expected.json", "events/webhook-oncrmdealadd.json",
         "responses/batch-mixed-success-and-errors.json", "responses/errors.json", "hmac.json" }) do
         local v = decode(shared.vector(name))
         local s = encode(v)
         assert.same(v, decode(s), name)
         assert.equal(s, encode(decode(s)))
         assert.same(cjson.decode(shared.vector(name)), cjson.decode(s))
      end
   end)

   it("writes big bodies: a 4 MB string and a 100,000-row array", function()
      local big = ("Привет, мир! "):rep(200000)
      assert.equal(big, decode(encode({ big }), { max_size = 1073741824 })[1])
      local rows = {}
      for i = 1, 100000 do rows[i] = { ID = tostring(i), N = i } end
      local s = encode(rows)
      local back = decode(s, { max_size = 1073741824, max_pairs = 1000000, max_memory = 1073741824 })
      assert.equal(100000, #back)
      assert.same({ ID = "77777", N = 77777 }, back[77777])
   end)

   it("raises on a missing argument and bad options", function()
      assert.has_error(function() encode() end)
      assert.has_error(function() encode({}, "x") end)
      assert.has_error(function() encode({}, { max_depth = 0 }) end)
   end)
end)

describe("bitrix24.core json codec under finalizers", function()
   it("gives right answers with finalizers that decode and encode running around its calls", function()
      local inner = 0
      local function finalize()
         local ok = pcall(function()
            assert(encode(decode('{"x":[1,2,3]}')) == '{"x":[1,2,3]}')
            assert(decode('{"a":null}', { form = true }))
         end)
         if ok then inner = inner + 1 end
      end
      local function garbage() -- LuaJIT runs __gc of userdata only
         if newproxy then
            local u = newproxy(true)
            getmetatable(u).__gc = finalize
            return u
         end
         return setmetatable({}, { __gc = finalize })
      end
      local body = "[" .. rep(function(i) return '{"k":"' .. i .. '","v":[1,2,3]}' end, 1500) .. "]"
      local value = decode(body)
      for _ = 1, 20 do
         for _ = 1, 200 do garbage() end
         local t = decode(body)
         assert.equal(1500, #t)
         assert.equal("1499", t[1499].k)
         assert.equal(encode(value), encode(t))
         assert.same(t, decode(encode(t)))
      end
      collectgarbage()
      assert.is_true(inner > 0)
   end)
end)
