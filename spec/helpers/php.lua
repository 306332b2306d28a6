-- PHP as an oracle for the form codec: one php process per batch of cases, lossless both ways.
--
-- Requests and answers cross the process boundary as JSON lines in which every PHP string and
-- key is hex, so binary bytes and invalid UTF-8 need no care. A request may carry
--   p = body            PHP answers pr = parse_str(body)
--   b = value           PHP answers bq = http_build_query(value), br = parse_str(bq)
-- where value is built with the constructors below (M.str, M.int, M.bool, M.null, M.array).
-- parse_str results come back in the shape form_decode gives: a PHP list (array_is_list) is a Lua
-- sequence 1..n, any other array a table with string keys.
local cjson = require("cjson").new()
cjson.encode_max_depth(100000)
cjson.decode_max_depth(100000)

local M = {}

local SCRIPT = [=[<?php
function enc($v) {
    if (is_array($v)) {
        $o = [];
        if (array_is_list($v)) {
            foreach ($v as $x) $o[] = enc($x);
            return ['l' => $o];
        }
        foreach ($v as $k => $x) $o[] = [bin2hex((string)$k), enc($x)];
        return ['m' => $o];
    }
    return bin2hex((string)$v);
}
function build($d) {
    if (array_key_exists('s', $d)) return hex2bin($d['s']);
    if (array_key_exists('i', $d)) return intval($d['i']);
    if (array_key_exists('t', $d)) return (bool)$d['t'];
    if (array_key_exists('n', $d)) return null;
    $a = [];
    foreach ($d['a'] as $kv) $a[hex2bin($kv[0])] = build($kv[1]);
    return $a;
}
$n = 0;
while (($line = fgets(STDIN)) !== false) {
    $req = json_decode($line, true, 100000, JSON_THROW_ON_ERROR);
    $res = [];
    if (array_key_exists('p', $req)) {
        $r = [];
        parse_str(hex2bin($req['p']), $r);
        $res['pr'] = enc($r);
    }
    if (array_key_exists('b', $req)) {
        $q = http_build_query(build($req['b']));
        $res['bq'] = bin2hex($q);
        $r = [];
        parse_str($q, $r);
        $res['br'] = enc($r);
    }
    echo json_encode($res, JSON_THROW_ON_ERROR, 100000), "\n";
    $n++;
}
echo "END $n\n";
]=]

M.FLAGS = "-d max_input_vars=100000000 -d max_input_nesting_level=100000 -d memory_limit=-1"
   .. " -d display_errors=stderr -d error_reporting=-1"

local function shell_quote(s)
   return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function exec_ok(cmd)
   local a = os.execute(cmd)
   if a == true then return true end
   if type(a) == "number" then return a == 0 end -- Lua 5.1 / LuaJIT
   return false
end

local function read_file(path)
   local f = assert(io.open(path, "rb"))
   local s = f:read("*a")
   f:close()
   return s
end

local function write_file(path, s)
   local f = assert(io.open(path, "wb"))
   f:write(s)
   f:close()
end

-- The php command, or an error telling how to get it: a missing oracle fails the spec, never skips it.
-- LD_PRELOAD is dropped so that a sanitizer runtime preloaded into the Lua interpreter stays out of php.
function M.command()
   if not M._command then
      if not exec_ok("command -v php >/dev/null 2>&1") then
         error("php is not installed: the PHP oracle needs php-cli (./dev test installs it)", 2)
      end
      M._command = "env -u LD_PRELOAD php " .. M.FLAGS
   end
   return M._command
end

-- ---- bytes -------------------------------------------------------------------------------------

local TO_HEX, FROM_HEX = {}, {}
for b = 0, 255 do
   local c, h = string.char(b), string.format("%02x", b)
   TO_HEX[c], FROM_HEX[h], FROM_HEX[h:upper()] = h, c, c
end

function M.hex(s)
   return (s:gsub(".", TO_HEX))
end

function M.unhex(h)
   return (h:gsub("..", FROM_HEX))
end

-- A byte string as a printable, unambiguous literal.
local function quote(s)
   return '"' .. s:gsub('[%c\128-\255"\\]', function(c)
      return string.format("\\x%02X", c:byte())
   end) .. '"'
end
M.quote = quote

-- A Lua value rendered for failure messages (keys sorted).
function M.dump(v, seen)
   local t = type(v)
   if t == "string" then return quote(v) end
   if t ~= "table" then return tostring(v) end
   seen = seen or {}
   if seen[v] then return "<cycle>" end
   seen[v] = true
   local keys = {}
   for k in pairs(v) do keys[#keys + 1] = k end
   table.sort(keys, function(a, b)
      if type(a) ~= type(b) then return type(a) == "number" end
      return a < b
   end)
   local n = #v
   local parts = {}
   for _, k in ipairs(keys) do
      local isidx = type(k) == "number" and k >= 1 and k <= n and k == math.floor(k)
      local ks = isidx and "" or ("[" .. (type(k) == "string" and quote(k) or tostring(k)) .. "]=")
      parts[#parts + 1] = ks .. M.dump(v[k], seen)
   end
   seen[v] = nil
   return "{" .. table.concat(parts, ",") .. "}"
end

local function key_path(path, k)
   return path .. "[" .. (type(k) == "string" and quote(k) or tostring(k)) .. "]"
end

-- nil when a and b are deep-equal (keys and values compared by type and value), otherwise a
-- description of the first difference found, with its path.
function M.diff(a, b, path)
   path = path or "$"
   if type(a) ~= type(b) or type(a) ~= "table" then
      if a ~= b then return path .. ": " .. M.dump(a) .. " vs " .. M.dump(b) end
      return nil
   end
   for k, v in pairs(a) do
      if b[k] == nil then return key_path(path, k) .. ": " .. M.dump(v) .. " vs (absent)" end
      local d = M.diff(v, b[k], key_path(path, k))
      if d then return d end
   end
   for k, v in pairs(b) do
      if a[k] == nil then return key_path(path, k) .. ": (absent) vs " .. M.dump(v) end
   end
   return nil
end

-- ---- PHP values for http_build_query -------------------------------------------------------------

function M.str(s) return { s = M.hex(s) } end
function M.int(decimal) return { i = decimal } end -- decimal text, so 64-bit values stay exact
function M.bool(b) return { t = b and 1 or 0 } end
function M.null() return { n = 1 } end
-- entries: { {key, value}, ... } in PHP insertion order; keys are byte strings (PHP canonicalises
-- numeric ones to integer keys exactly as it does everywhere else)
function M.array(entries)
   local a = {}
   for i, kv in ipairs(entries) do a[i] = { M.hex(kv[1]), kv[2] } end
   return { a = a } -- an empty list encodes as {}, which PHP decodes to the same empty array
end

-- ---- the oracle --------------------------------------------------------------------------------

local function from_php(v)
   if type(v) == "string" then return M.unhex(v) end
   local t = {}
   if v.l then
      for i, x in ipairs(v.l) do t[i] = from_php(x) end
   else
      for _, kv in ipairs(v.m) do t[M.unhex(kv[1])] = from_php(kv[2]) end
   end
   return t
end

-- Runs every request through one php process; returns the answers in order, each with
-- pr / br as Lua tables and bq as a string.
function M.run(requests)
   local cmd = M.command()
   local script, input, output, errors = os.tmpname(), os.tmpname(), os.tmpname(), os.tmpname()
   write_file(script, SCRIPT)
   local lines = {}
   for i, r in ipairs(requests) do
      local req = {}
      if r.p then req.p = M.hex(r.p) end
      if r.b then req.b = r.b end
      lines[i] = cjson.encode(req)
   end
   lines[#lines + 1] = ""
   write_file(input, table.concat(lines, "\n"))
   local ok = exec_ok(cmd .. " " .. shell_quote(script) .. " < " .. shell_quote(input)
      .. " > " .. shell_quote(output) .. " 2> " .. shell_quote(errors))
   local out, err = read_file(output), read_file(errors)
   os.remove(script)
   os.remove(input)
   os.remove(output)
   os.remove(errors)
   local tail = out:match("END (%d+)\n$")
   if not ok or tonumber(tail) ~= #requests then
      error(string.format("php oracle failed (%d requests, answered %s): %s", #requests,
         tostring(tail), err:sub(1, 2000)), 2)
   end
   local answers = {}
   for line in out:gmatch("([^\n]+)\n") do
      if line:sub(1, 4) ~= "END " then
         local a = cjson.decode(line)
         answers[#answers + 1] = {
            pr = a.pr and from_php(a.pr),
            bq = a.bq and M.unhex(a.bq),
            br = a.br and from_php(a.br),
         }
      end
   end
   return answers
end

-- parse_str of each body, in order.
function M.parse_str_all(bodies)
   local reqs = {}
   for i, b in ipairs(bodies) do reqs[i] = { p = b } end
   local out = {}
   for i, r in ipairs(M.run(reqs)) do out[i] = r.pr end
   return out
end

-- ---- the one documented difference ---------------------------------------------------------------

-- php_url_decode, for the names the rewrite below has to look at.
local function url_decode(s)
   s = s:gsub("%+", " ")
   return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function pct_all(s)
   return (s:gsub(".", function(c) return string.format("%%%02X", c:byte()) end))
end

-- PHP turns ' ' and '.' in a top-level name into '_' (php_register_variable_ex); form_decode keeps
-- them, by contract. This applies that rewrite to the body so that form_decode(rewrite(body)) can
-- be compared with parse_str(body). Only segments whose name PHP would rewrite are touched (their
-- name is then re-encoded byte by byte); every other byte reaches form_decode as it was.
function M.php_name_rewrite(body)
   -- parse_str reads a C string: the body ends at its first raw NUL (form_decode does the same)
   local cut = body:find("%z")
   if cut then body = body:sub(1, cut - 1) end
   local out, changed = {}, cut ~= nil
   local pos = 1
   while true do
      local amp = body:find("&", pos, true)
      local seg = body:sub(pos, (amp or #body + 1) - 1)
      local eq = seg:find("=", 1, true)
      local name = url_decode(eq and seg:sub(1, eq - 1) or seg)
      name = name:match("^[^%z]*")  -- PHP handles the name as a C string
      name = name:match("^ *(.*)$") -- leading spaces are dropped before the rewrite
      local open = name:find("[", 1, true)
      local stop = open and open - 1 or #name
      if open and not name:find("]", open + 1, true) then
         stop = #name -- nest level 1 is "not an index" when no ']' follows: PHP then rewrites the rest too
      end
      local head = name:sub(1, stop)
      if head:find("[ %.]") then
         name = head:gsub("[ %.]", "_") .. name:sub(stop + 1)
         seg = pct_all(name) .. (eq and seg:sub(eq) or "")
         changed = true
      end
      out[#out + 1] = seg
      if not amp then break end
      pos = amp + 1
   end
   return changed and table.concat(out, "&") or body
end

-- ---- randomness the same on Lua 5.4 and LuaJIT (Park–Miller, exact in doubles) ----------------

function M.prng(seed)
   local x = math.floor(seed) % 2147483646 + 1
   local r = {}
   function r.next()
      x = (x * 48271) % 2147483647
      return x
   end
   function r.int(lo, hi) -- an integer in [lo, hi]
      return lo + r.next() % (hi - lo + 1)
   end
   function r.chance(p)
      return r.next() / 2147483647 < p
   end
   function r.pick(list)
      return list[r.int(1, #list)]
   end
   function r.float() -- in (0, 1)
      return r.next() / 2147483647
   end
   return r
end

-- The seed of a randomized spec: B24_SEED when set, else from the clock.
function M.seed()
   local s = tonumber(os.getenv("B24_SEED") or "")
   if s then return math.floor(s) end
   return os.time() % 1000000
end

-- Shrinks a failing input. still_fails(candidates) returns the index of the first candidate that
-- still fails, or nil. Each round is one batch: every removal of a chunk of len/2, len/4, …, 1
-- bytes, largest chunks first; the first candidate that still fails is kept.
function M.shrink(s, still_fails)
   while #s > 0 do
      local cands = {}
      local chunk = math.max(1, math.floor(#s / 2))
      while true do
         for i = 1, #s - chunk + 1, chunk do
            cands[#cands + 1] = s:sub(1, i - 1) .. s:sub(i + chunk)
         end
         if chunk == 1 then break end
         chunk = math.floor(chunk / 2)
      end
      local k = still_fails(cands)
      if not k then break end
      s = cands[k]
   end
   return s
end

return M
