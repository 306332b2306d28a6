-- Differential spec: form_decode / form_encode against PHP's own parse_str / http_build_query.
-- One php process per batch (spec/helpers/php.lua). Randomized with a PRNG that is the same on
-- Lua 5.4 and LuaJIT: a failure prints its seed; B24_SEED=<seed> replays it.
-- php-cli missing is a failure, not a skip: the README's test command installs it.
local core = require "bitrix24.core"
local cjson = require("cjson").new()
local php = require "helpers.php"

local SEED = php.seed()
local N_STRUCTURED = 3000 -- PHP arrays -> http_build_query -> both decoders
local N_RAW = 3000        -- raw bodies of tricky bytes -> both decoders
local N_ENCODE = 3000     -- Lua values -> form_encode -> parse_str, and -> http_build_query

local INT64 = math.type ~= nil -- Lua 5.3+: 64-bit integers; LuaJIT: doubles only

-- form_decode as the contract compares it with parse_str: PHP's '.'/' ' rewrite of top-level
-- names (the one documented difference) is applied to the body first.
local function ours(body)
   return core.form_decode(php.php_name_rewrite(body), { max_depth = 1000 })
end

local function mismatch(body, theirs)
   local mine, err = ours(body)
   if mine == nil then return "form_decode failed: " .. tostring(err) end
   return php.diff(mine, theirs)
end

-- Which differences a failing body may show, known so far: it only decides which failures get
-- shrunk and shown first (bodies with none of them lead); every failure counts.
local function failure_group(body)
   local decoded = body:gsub("%+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
   if decoded:find("%[%s%]") then return 2 end           -- a[ ]: one whitespace byte in brackets
   if body:find("%z") then return 3 end                  -- a raw NUL byte
   return 1
end

-- Shrinks failing bodies (one php batch per shrinking round), a few from each group, shortest
-- first, and reports the distinct minimal ones with both decodings.
local function report_decode_failures(what, total, failures)
   local lines = { string.format("%s: %d of %d bodies differ from parse_str (seed %d; B24_SEED=%d replays)",
      what, #failures, total, SEED, SEED) }
   table.sort(failures, function(a, b) return #a < #b end)
   local groups, order = { {}, {}, {} }, {}
   for _, f in ipairs(failures) do
      local g = groups[failure_group(f)]
      g[#g + 1] = f
   end
   for round = 1, 3 do
      for _, g in ipairs(groups) do
         if g[round] then order[#order + 1] = g[round] end
      end
   end
   local seen = {}
   for i = 1, math.min(#order, 6) do
      local small = php.shrink(order[i], function(cands)
         local theirs = php.parse_str_all(cands)
         for k, c in ipairs(cands) do
            if mismatch(c, theirs[k]) then return k end
         end
      end)
      if not seen[small] then
         seen[small] = true
         local theirs = php.parse_str_all({ small })[1]
         lines[#lines + 1] = string.format("  minimal body %s (from %s)\n    form_decode: %s\n    parse_str:   %s",
            php.quote(small), php.quote(order[i]), php.dump((ours(small))), php.dump(theirs))
      end
   end
   return table.concat(lines, "\n")
end

-- ---- generators ----------------------------------------------------------------------------------

local BYTES = {}
for b = 0, 255 do BYTES[#BYTES + 1] = string.char(b) end
local TRICKY = { "[", "]", "=", "&", "%", "+", " ", ".", "-", "_", "0", "1", "9", "a", "b", "Z",
   "\0", "\128", "\255", "\195\169", "%5B", "%5D", "%20", "%00" }

local function bytes_from(r, pool, lo, hi)
   local t = {}
   for i = 1, r.int(lo, hi) do t[i] = r.pick(pool) end
   return table.concat(t)
end

local function any_bytes(r, lo, hi)
   if r.chance(0.5) then return bytes_from(r, BYTES, lo, hi) end
   return bytes_from(r, TRICKY, lo, hi)
end

local INT_KEYS = { "0", "1", "2", "3", "7", "-1", "-5", "42", "9223372036854775807",
   "9223372036854775806", "-9223372036854775807", "-9223372036854775808" }
local ODD_KEYS = { "", " ", "  ", " x", "05", "-0", "00", "+1", " 1", "1 ", "1.5", "0x1",
   "9223372036854775808", "-9223372036854775809", "[]", "[", "]", "a[b]", "a.b", "a b" }

-- A PHP value (spec/helpers/php.lua constructors) of random shape and content.
-- Arrays get rarer with depth so that bodies stay around a kilobyte; a few big ones near the top
-- take the parser's hashed lookups.
local function php_value(r, depth, maxdepth)
   if depth == 0 or (depth < maxdepth and r.chance(0.45 - 0.1 * depth)) then
      local entries = {}
      local n = r.int(0, 5)
      if r.chance(0.08) then n = r.int(6, 20) end
      if depth <= 1 and r.chance(0.02) then n = r.int(21, 120) end
      local list = r.chance(0.35)
      for i = 1, n do
         local k
         if list then
            k = tostring(i - 1)
         elseif r.chance(0.3) then
            k = r.pick(INT_KEYS)
         elseif r.chance(0.2) then
            k = r.pick(ODD_KEYS)
         else
            k = any_bytes(r, 1, 8)
         end
         entries[i] = { k, php_value(r, depth + 1, maxdepth) }
      end
      return php.array(entries)
   end
   local c = r.int(1, 20)
   if c <= 16 then return php.str(any_bytes(r, 0, 12)) end
   if c == 17 then return php.int(tostring(r.int(-1000, 1000))) end
   if c == 18 then return php.bool(r.chance(0.5)) end
   if c == 19 then return php.null() end
   return php.array({})
end

local function php_top(r)
   return php_value(r, 0, r.int(1, 6))
end

local RAW_TOKENS = { "a", "b", "x", "0", "1", "5", "-1", "05", "-0", "9223372036854775807",
   "9223372036854775806", "-9223372036854775808", "[", "]", "[]", "[ ]", "[x]", "[0]", "[-1]", "][",
   "=", "=", "&", "&", "&&", "%", "+", " ", ".", "-", "_", "\0", "\128", "\255", "\195\169", "%5B",
   "%5D", "%26", "%3D", "%00", "%20", "%2E", "%2B", "%41", "%e9", "%zz", "%4", "%%", "%5b", "%2",
   "\t", "%09", "%0D" }

local function raw_body(r)
   return bytes_from(r, RAW_TOKENS, 0, 30)
end

-- Lua values for form_encode.
local TOP_KEY_CHARS = { "a", "b", "c", "Z", "0", "1", "9", "-", "_", "~", "*", "'", "(", "!",
   "%", "+", "&", "=", "#", "?", "/", ":", ",", "\128", "\200", "\255", "\195\169", "\208\175" }
local NESTED_KEY_CHARS = { " ", ".", "\t", "\n" }
for _, c in ipairs(TOP_KEY_CHARS) do NESTED_KEY_CHARS[#NESTED_KEY_CHARS + 1] = c end
local NUMERIC_STRING_KEYS = { "0", "1", "2", "3", "10", "-1", "05" }

local SPECIAL_FLOATS = { 0.1, 0.1 + 0.2, 1 / 3, -1.5, 1e-5, 1e-300, 5e-324, 1.7976931348623157e308,
   2 ^ 53, 2 ^ 60, 2 ^ 63, -2 ^ 63, 1e20, 1e21, 123456.789, -0.0, 13430.0, 0.5, 100 }

local function lua_number(r)
   local c = r.int(1, 6)
   if c == 1 then return r.pick(SPECIAL_FLOATS) end
   if c == 2 then return r.int(-1000, 1000) end
   if c == 3 then -- large integers
      if INT64 then
         if r.chance(0.1) then return r.chance(0.5) and math.maxinteger or math.mininteger end
         local v = r.int(0, 2147483647) * 4294967296 + r.int(0, 2147483647) * 2 + r.int(0, 1)
         return r.chance(0.5) and -v or v
      end
      local v = r.int(0, 2097151) * 4294967296 + r.int(0, 2147483647) * 2 + r.int(0, 1) -- < 2^53
      return r.chance(0.5) and -v or v
   end
   if c == 4 then return math.floor((r.float() - 0.5) * 1e6) + 0.0 end -- integral floats
   local x = (r.float() - 0.5) * 10 ^ r.int(-12, 22)
   return x
end

local function lua_value(r, depth, maxdepth)
   if depth < maxdepth and r.chance(0.45 - 0.1 * depth) then
      local t = {}
      if r.chance(0.35) then
         for i = 1, r.int(1, 8) do t[i] = lua_value(r, depth + 1, maxdepth) end
      else
         local n = r.int(0, 6)
         if r.chance(0.1) then n = r.int(7, 30) end
         for _ = 1, n do
            local k
            if r.chance(0.1) then
               k = r.pick(NUMERIC_STRING_KEYS)
            else
               -- one whitespace byte alone, "a[ ]", is an append to parse_str: not a key that round-trips
               repeat k = bytes_from(r, NESTED_KEY_CHARS, 1, 8) until not k:match("^%s$")
            end
            t[k] = lua_value(r, depth + 1, maxdepth)
         end
      end
      return t
   end
   local c = r.int(1, 20)
   if c <= 9 then return any_bytes(r, 0, 12) end
   if c <= 15 then return lua_number(r) end
   if c <= 17 then return r.chance(0.5) end
   if c == 18 then return cjson.null end
   return {}
end

local function lua_top(r)
   local maxdepth = r.int(1, 5)
   local t = {}
   if r.chance(0.2) then
      for i = 1, r.int(0, 6) do t[i] = lua_value(r, 1, maxdepth) end
   else
      for _ = 1, r.int(0, 8) do
         local k = r.chance(0.1) and r.pick(NUMERIC_STRING_KEYS) or bytes_from(r, TOP_KEY_CHARS, 1, 8)
         t[k] = lua_value(r, 1, maxdepth)
      end
   end
   return t
end

-- ---- what PHP must hand back for a Lua value -----------------------------------------------------

-- C's printf: LuaJIT's own string.format rounds exact ties at 17 digits away from zero, where the
-- C library rounds them to even (…817.125 -> "…817.13" vs "…817.12"); both read back exactly.
local format_g = function(p, x) return string.format("%." .. p .. "g", x) end
if jit then
   local ffi = require "ffi"
   ffi.cdef "int snprintf(char *s, size_t n, const char *fmt, ...);"
   local buf = ffi.new("char[64]")
   format_g = function(p, x)
      local n = ffi.C.snprintf(buf, 64, "%.*g", ffi.new("int", p), ffi.new("double", x))
      return ffi.string(buf, n)
   end
end

-- The text form_encode promises for a number: integers and integral floats as digits, other
-- floats in the shortest of %.15g..%.17g that reads back exactly.
local function number_text(x)
   if INT64 and math.type(x) == "integer" then return string.format("%d", x) end
   if x == math.floor(x) and x >= -2 ^ 63 and x < 2 ^ 63 then
      return x == 0 and "0" or string.format("%.0f", x)
   end
   for p = 15, 17 do
      local s = format_g(p, x)
      if tonumber(s) == x then return s end
   end
   error("no round-trip text for " .. tostring(x))
end

local function is_sequence(t)
   local n, count = #t, 0
   for _ in pairs(t) do count = count + 1 end
   return count == n
end

local function sorted_string_keys(t)
   local keys = {}
   for k in pairs(t) do keys[#keys + 1] = k end
   table.sort(keys) -- bytewise: the encoder's order for string keys
   return keys
end

-- (key, value) pairs of a table in the order form_encode writes them, keys as PHP would see them.
local function ordered(t)
   local out = {}
   if is_sequence(t) then
      for i = 1, #t do out[i] = { tostring(i - 1), t[i] } end
   else
      for i, k in ipairs(sorted_string_keys(t)) do out[i] = { k, t[k] } end
   end
   return out
end

local OMIT = {}

-- The Lua value as parse_str(http_build_query(v)) gives it back, in form_decode's shape:
-- scalars as their text, null and empty tables gone (a table left empty goes too), a table whose
-- written keys are exactly 0..m-1 in order a sequence, any other a table with string keys.
local function expected(v)
   local t = type(v)
   if t == "string" then return v end
   if t == "boolean" then return v and "1" or "0" end
   if t == "number" then return number_text(v) end
   if v == cjson.null then return OMIT end
   local kept = {}
   for _, kv in ipairs(ordered(v)) do
      local e = expected(kv[2])
      if e ~= OMIT then kept[#kept + 1] = { kv[1], e } end
   end
   if #kept == 0 then return OMIT end
   local list = true
   for i, kv in ipairs(kept) do
      if kv[1] ~= tostring(i - 1) then list = false end
   end
   local out = {}
   for i, kv in ipairs(kept) do
      if list then out[i] = kv[2] else out[kv[1]] = kv[2] end
   end
   return out
end

-- The same value as a PHP value, keys in form_encode's order, for http_build_query. Numbers that
-- form_encode writes as digits go as PHP integers; other floats as the text the contract promises
-- (PHP itself prints floats with 14 digits; that difference is by design).
local function to_php(v)
   local t = type(v)
   if t == "string" then return php.str(v) end
   if t == "boolean" then return php.bool(v) end
   if t == "number" then
      local s = number_text(v)
      if s:match("^%-?%d+$") then return php.int(s) end
      return php.str(s)
   end
   if v == cjson.null then return php.null() end
   local entries = {}
   for i, kv in ipairs(ordered(v)) do entries[i] = { kv[1], to_php(kv[2]) } end
   return php.array(entries)
end

-- ---- the specs ------------------------------------------------------------------------------------

describe("form codec against PHP " .. "(seed " .. SEED .. ")", function()
   it("finds php-cli 8.1+ to use as the oracle", function()
      local p = assert(io.popen(php.command() .. " -r 'echo PHP_VERSION;' 2>&1"))
      local v = p:read("*a")
      p:close()
      local major, minor = v:match("^(%d+)%.(%d+)")
      assert.is_truthy(major, "php -r printed: " .. v)
      assert.is_true(tonumber(major) > 8 or (tonumber(major) == 8 and tonumber(minor) >= 1), v)
   end)

   it("form_decode agrees with parse_str on " .. N_STRUCTURED
      .. " bodies from http_build_query of generated arrays", function()
      local r = php.prng(SEED)
      local reqs = {}
      for i = 1, N_STRUCTURED do reqs[i] = { b = php_top(r) } end
      local answers = php.run(reqs)
      local failures, nonempty = {}, 0
      for _, a in ipairs(answers) do
         if next(a.br) ~= nil then nonempty = nonempty + 1 end
         if mismatch(a.bq, a.br) then failures[#failures + 1] = a.bq end
      end
      assert.is_true(nonempty > N_STRUCTURED / 2, "the generator makes mostly empty bodies")
      if #failures > 0 then error(report_decode_failures("generated arrays", N_STRUCTURED, failures), 0) end
   end)

   it("form_decode agrees with parse_str on " .. N_RAW .. " raw bodies of tricky bytes", function()
      local r = php.prng(SEED + 1)
      local bodies = {}
      for i = 1, N_RAW do bodies[i] = raw_body(r) end
      local theirs = php.parse_str_all(bodies)
      local failures = {}
      for i, body in ipairs(bodies) do
         if mismatch(body, theirs[i]) then failures[#failures + 1] = body end
      end
      if #failures > 0 then error(report_decode_failures("raw bodies", N_RAW, failures), 0) end
   end)

   it("form_encode round-trips through parse_str and matches http_build_query byte for byte on "
      .. N_ENCODE .. " generated values", function()
      local r = php.prng(SEED + 2)
      local values, reqs, bodies = {}, {}, {}
      for i = 1, N_ENCODE do
         values[i] = lua_top(r)
         bodies[i] = core.form_encode(values[i])
         reqs[i] = { p = bodies[i], b = to_php(values[i]) }
      end
      local answers = php.run(reqs)
      local failures = {}
      for i, a in ipairs(answers) do
         local want = expected(values[i])
         if want == OMIT then want = {} end
         local why = php.diff(want, a.pr)
         if not why and a.bq ~= bodies[i] then why = "http_build_query wrote " .. php.quote(a.bq) end
         if why then
            failures[#failures + 1] = string.format("  value %s\n    form_encode: %s\n    %s",
               php.dump(values[i]), php.quote(bodies[i]), why)
         end
      end
      if #failures > 0 then
         table.sort(failures, function(x, y) return #x < #y end)
         error(string.format("%d of %d values (seed %d; B24_SEED=%d replays):\n%s", #failures, N_ENCODE,
            SEED, SEED, table.concat(failures, "\n", 1, math.min(#failures, 8))), 0)
      end
   end)

   it("form_encode of a realistic crm.lead.add and crm.lead.list matches http_build_query", function()
      local params = {
         { fields = { TITLE = "Заявка с сайта", NAME = "Иван", LAST_NAME = "O'Brien & Sons",
            OPENED = true, ASSIGNED_BY_ID = 1, OPPORTUNITY = 15000.5, CURRENCY_ID = "RUB",
            PHONE = { { VALUE = "+7 (900) 000-00-00", VALUE_TYPE = "WORK" },
                      { VALUE = "8 800 555", VALUE_TYPE = "MOBILE" } },
            EMAIL = { { VALUE = "ivan+test@example.com", VALUE_TYPE = "HOME" } },
            COMMENTS = "line 1\r\nline 2 <b>bold</b> 100% ?&=" },
            params = { REGISTER_SONET_EVENT = "Y" } },
         { filter = { [">=DATE_CREATE"] = "2024-01-01T00:00:00+03:00", ["!STATUS_ID"] = "JUNK", ["%TITLE"] = "сайт",
            ["@ID"] = { 1, 2, 3 } }, select = { "ID", "TITLE", "UF_*", "PHONE" }, order = { DATE_CREATE = "DESC" },
            start = 50 },
         { "task", 7, { POST_MESSAGE = "done", AUTHOR_ID = 1 } },
      }
      local reqs = {}
      for i, p in ipairs(params) do reqs[i] = { p = core.form_encode(p), b = to_php(p) } end
      local answers = php.run(reqs)
      for i, a in ipairs(answers) do
         assert.equal(a.bq, core.form_encode(params[i]))
         assert.same(expected(params[i]), a.pr)
      end
   end)

   it("parse_str of form_encode(webhook-oncrmdealadd.json) is the JSON document itself", function()
      local src = debug.getinfo(1, "S").source:sub(2)
      local root = src:match("^(.*)/spec/[^/]*$") or "."
      local dir = os.getenv("B24_SHARED") or (root .. "/../shared")
      local f = assert(io.open(dir .. "/vectors/events/webhook-oncrmdealadd.json", "rb"))
      local doc = cjson.decode(f:read("*a"))
      f:close()
      local theirs = php.parse_str_all({ core.form_encode(doc) })[1]
      assert.same(doc, theirs)
   end)
end)
