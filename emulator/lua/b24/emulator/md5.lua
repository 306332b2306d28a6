-- b24.emulator.md5: MD5 (RFC 1321) as lower-case hex, for the offline queue's MESSAGE_ID
-- (rest/lib/eventoffline.php getMessageId: md5(EVENT_NAME|json)). The core has no MD5, so it is
-- computed here: with LuaJIT's bit library, or with Lua 5.3+'s integer operators (compiled from
-- text, so LuaJIT never parses them).
local load = load
local type = type
local pcall = pcall
local ipairs = ipairs
local require = require
local string_byte = string.byte
local string_char = string.char
local string_format = string.format
local string_rep = string.rep
local table_concat = table.concat
local math_floor = math.floor
local math_abs = math.abs
local math_sin = math.sin

local _M = {}

-- The 32-bit operations: band, bor, bxor, bnot, rol (rotate left), add (mod 2^32), and norm (a
-- word as an integer in [0, 2^32)).
local ops
local ok, bit = pcall(require, "bit")
if ok and type(bit) == "table" and bit.rol then
   local tobit = bit.tobit
   ops = { band = bit.band, bor = bit.bor, bxor = bit.bxor, bnot = bit.bnot, rol = bit.rol,
           add = function(a, b) return tobit(a + b) end,
           norm = function(x) return x % 4294967296 end }
else
   ops = load([[
      local M = 0xFFFFFFFF
      return { band = function(a, b) return a & b end, bor = function(a, b) return a | b end,
               bxor = function(a, b) return a ~ b end, bnot = function(a) return ~a & M end,
               rol = function(x, n) return ((x << n) | (x >> (32 - n))) & M end,
               add = function(a, b) return (a + b) & M end,
               norm = function(x) return x & M end }]])()
end
local band, bor, bxor, bnot, rol, add, norm = ops.band, ops.bor, ops.bxor, ops.bnot, ops.rol, ops.add, ops.norm

-- the per-step constants (floor(|sin(i)| * 2^32)) and shifts
local K, S = {}, {}
for i = 1, 64 do K[i] = norm(math_floor(math_abs(math_sin(i)) * 4294967296)) end
do
   local shifts = { { 7, 12, 17, 22 }, { 5, 9, 14, 20 }, { 4, 11, 16, 23 }, { 6, 10, 15, 21 } }
   for i = 0, 63 do S[i + 1] = shifts[math_floor(i / 16) + 1][i % 4 + 1] end
end

-- The little-endian bytes of a length in bits (a message shorter than 2^53 bits).
local function length_bytes(n)
   local bits, out = n * 8, {}
   for i = 1, 8 do
      out[i] = string_char(bits % 256)
      bits = math_floor(bits / 256)
   end
   return table_concat(out)
end

-- The MD5 of s as 32 lower-case hex digits.
function _M.hex(s)
   local msg = s .. "\128" .. string_rep("\0", (55 - #s) % 64) .. length_bytes(#s)
   local a0, b0, c0, d0 = norm(0x67452301), norm(0xefcdab89), norm(0x98badcfe), norm(0x10325476)
   local X = {}
   for chunk = 1, #msg, 64 do
      for i = 0, 15 do
         local p = chunk + i * 4
         local b1, b2, b3, b4 = string_byte(msg, p, p + 3)
         X[i] = norm(b1 + b2 * 256 + b3 * 65536 + b4 * 16777216)
      end
      local a, b, c, d = a0, b0, c0, d0
      for i = 0, 63 do
         local f, g
         if i < 16 then
            f, g = bor(band(b, c), band(bnot(b), d)), i
         elseif i < 32 then
            f, g = bor(band(d, b), band(bnot(d), c)), (5 * i + 1) % 16
         elseif i < 48 then
            f, g = bxor(b, bxor(c, d)), (3 * i + 5) % 16
         else
            f, g = bxor(c, bor(b, bnot(d))), (7 * i) % 16
         end
         f = add(add(add(f, a), K[i + 1]), X[g])
         a, d, c = d, c, b
         b = add(b, rol(f, S[i + 1]))
      end
      a0, b0, c0, d0 = add(a0, a), add(b0, b), add(c0, c), add(d0, d)
   end
   local out = {}
   for _, w in ipairs({ a0, b0, c0, d0 }) do
      w = norm(w)
      for _ = 1, 4 do
         out[#out + 1] = string_format("%02x", w % 256)
         w = math_floor(w / 256)
      end
   end
   return table_concat(out)
end

return _M
