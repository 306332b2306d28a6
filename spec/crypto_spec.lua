-- bitrix24.core: digests, MACs, constant-time comparison and the hex/base64 codecs.
local core = require("bitrix24.core")
local cjson = require("cjson.safe").new()

-- The repository root from this file's own path (spec/crypto_spec.lua), else the working
-- directory; the shared vectors live beside the repository, in ../shared.
local function repo_root()
   local source = debug.getinfo(1, "S").source
   if source:sub(1, 1) == "@" then
      local dir = source:sub(2):match("^(.*)/spec/[^/]+$")
      if dir and dir ~= "" then
         return dir
      end
   end
   return "."
end

local SHARED = repo_root() .. "/../shared"

local function read_file(path)
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   return data
end

local function load_vectors()
   local data = read_file(SHARED .. "/vectors/hmac.json")
   return assert(cjson.decode(data))
end

local function all_bytes()
   local t = {}
   for i = 0, 255 do
      t[#t + 1] = string.char(i)
   end
   return table.concat(t)
end

-- Deterministic pseudo-random binary strings (the PRNG seeded once per describe block).
local function random_bytes(len)
   local t = {}
   for i = 1, len do
      t[i] = string.char(math.random(0, 255))
   end
   return table.concat(t)
end

describe("bitrix24.core crypto", function()
   local vectors = load_vectors()

   describe("hmac_sha256", function()
      it("has the shared vectors to check against", function()
         assert.is_true(#vectors.hmac_sha256 >= 6)
         assert.is_true(#vectors.standard_webhooks >= 1)
      end)

      for _, v in ipairs(vectors.hmac_sha256) do
         describe(v.name, function()
            local key = assert(core.hex_decode(v.key_hex))
            local data = assert(core.hex_decode(v.data_hex))
            local raw = assert(core.hex_decode(v.hex))

            it("matches in hex, the default format", function()
               assert.are.equal(v.hex, core.hmac_sha256(key, data))
               assert.are.equal(v.hex, core.hmac_sha256(key, data, "hex"))
            end)

            it("matches in base64 (standard, padded)", function()
               local b64 = core.hmac_sha256(key, data, "base64")
               assert.are.equal(44, #b64)
               assert.are.equal("=", b64:sub(-1))
               assert.are.equal(core.base64_encode(raw), b64)
               assert.are.equal(raw, core.base64_decode(b64))
            end)

            it("matches in raw bytes", function()
               local out = core.hmac_sha256(key, data, "raw")
               assert.are.equal(32, #out)
               assert.are.equal(raw, out)
            end)
         end)
      end

      for i, v in ipairs(vectors.standard_webhooks) do
         it("signs the Standard Webhooks vector " .. i, function()
            assert.are.equal("whsec_", v.secret:sub(1, 6))
            local key = assert(core.base64_decode(v.secret:sub(7)))
            local signed = v.id .. "." .. v.timestamp .. "." .. v.payload
            local expected = v.signature:match("^v1,(.+)$")
            assert.is_truthy(expected)
            local got = core.hmac_sha256(key, signed, "base64")
            assert.are.equal(expected, got)
            assert.is_true(core.equal(expected, got))
         end)
      end

      it("accepts an empty key and empty data", function()
         -- RFC 2104 with a zero-length key; the value is the widely published one
         assert.are.equal("b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad",
            core.hmac_sha256("", ""))
      end)

      it("keeps embedded NULs in key and data", function()
         assert.are_not.equal(core.hmac_sha256("k\0a", "d"), core.hmac_sha256("k\0b", "d"))
         assert.are_not.equal(core.hmac_sha256("k", "d\0a"), core.hmac_sha256("k", "d\0b"))
      end)

      it("raises on an unknown format", function()
         assert.has_error(function() core.hmac_sha256("k", "d", "bin") end)
         assert.has_error(function() core.hmac_sha256("k", "d", "HEX") end)
      end)

      it("raises on non-string key or data", function()
         assert.has_error(function() core.hmac_sha256(nil, "d") end)
         assert.has_error(function() core.hmac_sha256("k", {}) end)
      end)
   end)

   describe("sha256", function()
      local known = {
         { name = "the empty string", data = "",
            hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            base64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=" },
         { name = "\"abc\"", data = "abc",
            hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            base64 = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=" },
         { name = "one million 'a' (1 MB)", data = string.rep("a", 1000000),
            hex = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
            base64 = "zcduXJkU+5KBocfihNc+Z/GAmkiklyAOBG05zMcRLNA=" },
      }
      for _, k in ipairs(known) do
         it("digests " .. k.name .. " in every format", function()
            assert.are.equal(k.hex, core.sha256(k.data))
            assert.are.equal(k.hex, core.sha256(k.data, "hex"))
            assert.are.equal(k.base64, core.sha256(k.data, "base64"))
            local raw = core.sha256(k.data, "raw")
            assert.are.equal(32, #raw)
            assert.are.equal(k.hex, core.hex_encode(raw))
         end)
      end

      it("raises on an unknown format or a non-string", function()
         assert.has_error(function() core.sha256("x", "b64") end)
         assert.has_error(function() core.sha256({}) end)
         assert.has_error(function() core.sha256() end)
      end)
   end)

   describe("equal", function()
      it("is true for equal strings", function()
         assert.is_true(core.equal("abc", "abc"))
         assert.is_true(core.equal(string.rep("x", 1000), string.rep("x", 1000)))
      end)

      it("is false for different strings of the same length", function()
         assert.is_false(core.equal("abc", "abd"))
         assert.is_false(core.equal("abc", "Abc"))
      end)

      it("is false for different lengths, a prefix included", function()
         assert.is_false(core.equal("abc", "abcd"))
         assert.is_false(core.equal("abcd", "abc"))
         assert.is_false(core.equal("", "a"))
      end)

      it("is true for two empty strings", function()
         assert.is_true(core.equal("", ""))
      end)

      it("compares past embedded NULs", function()
         assert.is_true(core.equal("a\0b", "a\0b"))
         assert.is_false(core.equal("a\0b", "a\0c"))
         assert.is_false(core.equal("a\0", "a"))
         assert.is_false(core.equal("\0", ""))
      end)

      it("returns a boolean", function()
         assert.are.equal("boolean", type(core.equal("a", "a")))
         assert.are.equal("boolean", type(core.equal("a", "b")))
      end)

      it("raises on a non-string argument", function()
         assert.has_error(function() core.equal(nil, "a") end)
         assert.has_error(function() core.equal("a", nil) end)
         assert.has_error(function() core.equal({}, "a") end)
         assert.has_error(function() core.equal("a", true) end)
         assert.has_error(function() core.equal("a") end)
      end)
   end)

   describe("hex", function()
      local bytes = all_bytes()
      local lower
      do
         local t = {}
         for i = 0, 255 do
            t[#t + 1] = string.format("%02x", i)
         end
         lower = table.concat(t)
      end

      it("encodes all 256 bytes as lower-case pairs", function()
         assert.are.equal(lower, core.hex_encode(bytes))
         assert.are.equal("", core.hex_encode(""))
      end)

      it("decodes lower, upper and mixed case back to all 256 bytes", function()
         assert.are.equal(bytes, core.hex_decode(lower))
         assert.are.equal(bytes, core.hex_decode(lower:upper()))
         assert.are.equal("\222\173\190\239", core.hex_decode("DeAdBeEf"))
         assert.are.equal("", core.hex_decode(""))
      end)

      it("round-trips random binary strings", function()
         math.randomseed(20240917)
         for _ = 1, 200 do
            local s = random_bytes(math.random(0, 300))
            local h = core.hex_encode(s)
            assert.are.equal(2 * #s, #h)
            assert.is_nil(h:find("[^0-9a-f]"))
            assert.are.equal(s, core.hex_decode(h))
         end
      end)

      it("encodes a string longer than one Lua buffer", function()
         local s = string.rep(bytes, 64) -- 16 KiB
         local h = core.hex_encode(s)
         assert.are.equal(string.rep(lower, 64), h)
         assert.are.equal(s, core.hex_decode(h))
      end)

      it("returns nil, message for an odd number of digits", function()
         for _, s in ipairs({ "a", "abc", "deadbee" }) do
            local ok, err = core.hex_decode(s)
            assert.is_nil(ok)
            assert.are.equal("string", type(err))
            assert.are.equal("invalid hex", err:sub(1, 11))
            assert.is_truthy(err:find("odd", 1, true))
         end
      end)

      it("returns nil, message for a character that is not a hex digit", function()
         for _, s in ipairs({ "zz", "0g", "de ad", "0x00", "\0\0", "ab\n", "+1" }) do
            local ok, err = core.hex_decode(s)
            assert.is_nil(ok)
            assert.are.equal("string", type(err))
            assert.are.equal("invalid hex", err:sub(1, 11))
         end
      end)

      it("names the offset of the first bad digit", function()
         local _, err = core.hex_decode("00g0")
         assert.is_truthy(err:find("offset 2", 1, true))
         _, err = core.hex_decode("0z")
         assert.is_truthy(err:find("offset 1", 1, true))
      end)

      it("raises on a non-string argument", function()
         assert.has_error(function() core.hex_encode({}) end)
         assert.has_error(function() core.hex_decode(nil) end)
      end)
   end)

   describe("base64", function()
      -- RFC 4648 section 10
      local rfc = {
         { "", "", "" },
         { "f", "Zg==", "Zg" },
         { "fo", "Zm8=", "Zm8" },
         { "foo", "Zm9v", "Zm9v" },
         { "foob", "Zm9vYg==", "Zm9vYg" },
         { "fooba", "Zm9vYmE=", "Zm9vYmE" },
         { "foobar", "Zm9vYmFy", "Zm9vYmFy" },
      }

      local function assert_invalid(s, alphabet)
         local ok, err = core.base64_decode(s, alphabet)
         assert.is_nil(ok, ("%q should be rejected"):format(s))
         assert.are.equal("string", type(err))
         assert.are.equal("invalid base64", err:sub(1, 14))
      end

      it("encodes the RFC 4648 vectors: standard padded, url-safe unpadded", function()
         for _, v in ipairs(rfc) do
            assert.are.equal(v[2], core.base64_encode(v[1]))
            assert.are.equal(v[2], core.base64_encode(v[1], "std"))
            assert.are.equal(v[3], core.base64_encode(v[1], "url"))
         end
      end)

      it("decodes the RFC 4648 vectors padded and unpadded, in both alphabets", function()
         for _, v in ipairs(rfc) do
            for _, alphabet in ipairs({ "std", "url" }) do
               assert.are.equal(v[1], core.base64_decode(v[2], alphabet))
               assert.are.equal(v[1], core.base64_decode(v[3], alphabet))
            end
            assert.are.equal(v[1], core.base64_decode(v[2]))
            assert.are.equal(v[1], core.base64_decode(v[3]))
         end
      end)

      it("uses + and / in the standard alphabet, - and _ in the url-safe one", function()
         local s = "\251\255\191"
         assert.are.equal("+/+/", core.base64_encode(s))
         assert.are.equal("-_-_", core.base64_encode(s, "url"))
         assert.are.equal(s, core.base64_decode("+/+/"))
         assert.are.equal(s, core.base64_decode("-_-_", "url"))
         local all = all_bytes()
         local std, url = core.base64_encode(all), core.base64_encode(all, "url")
         assert.is_nil(std:find("[^A-Za-z0-9+/=]"))
         assert.is_nil(url:find("[^A-Za-z0-9_-]"))
         assert.are.equal(all, core.base64_decode(std))
         assert.are.equal(all, core.base64_decode(url, "url"))
      end)

      it("rejects characters of the other alphabet", function()
         assert_invalid("-_-_", "std")
         assert_invalid("-_-_")
         assert_invalid("ab-c")
         assert_invalid("+/+/", "url")
         assert_invalid("ab/c", "url")
      end)

      it("rejects whitespace anywhere", function()
         for _, alphabet in ipairs({ "std", "url" }) do
            assert_invalid("Zm9v YmFy", alphabet)
            assert_invalid("Zm9v\nYmFy", alphabet)
            assert_invalid("Zm9vYmFy\r\n", alphabet)
            assert_invalid(" Zg==", alphabet)
            assert_invalid("Zg==\t", alphabet)
         end
      end)

      it("rejects misplaced or excess padding", function()
         for _, alphabet in ipairs({ "std", "url" }) do
            for _, s in ipairs({ "Zg===", "Z===", "=Zg=", "Zg=A", "====", "=", "==", "Zm9v=",
                                 "Zm9v====", "Zg=", "Zm8==", "Z=g=", "Zm9vY===" }) do
               assert_invalid(s, alphabet)
            end
         end
      end)

      it("rejects a single trailing character", function()
         for _, alphabet in ipairs({ "std", "url" }) do
            assert_invalid("Z", alphabet)
            assert_invalid("Zm9vY", alphabet)
            assert_invalid("Zm9vYmFyZ", alphabet)
         end
      end)

      it("rejects non-zero trailing bits", function()
         for _, alphabet in ipairs({ "std", "url" }) do
            assert_invalid("Zh==", alphabet)
            assert_invalid("Zh", alphabet)
            assert_invalid("Zm9=", alphabet)
            assert_invalid("Zm9", alphabet)
         end
      end)

      it("rejects NUL bytes", function()
         assert_invalid("Zg\0\0")
         assert_invalid("\0")
      end)

      it("round-trips 1000 random binary strings in both alphabets", function()
         math.randomseed(4648)
         for _ = 1, 1000 do
            local s = random_bytes(math.random(0, 100))
            local std = core.base64_encode(s)
            local url = core.base64_encode(s, "url")
            assert.are.equal(0, #std % 4)
            assert.are.equal(std:gsub("=+$", ""):gsub("%+", "-"):gsub("/", "_"), url)
            assert.are.equal(s, core.base64_decode(std))
            assert.are.equal(s, core.base64_decode(std, "std"))
            assert.are.equal(s, core.base64_decode(url, "url"))
            -- the other form of padding is accepted too
            assert.are.equal(s, core.base64_decode((std:gsub("=+$", ""))))
            assert.are.equal(s, core.base64_decode(url .. string.rep("=", (4 - #url % 4) % 4), "url"))
         end
      end)

      it("raises on an unknown alphabet option", function()
         assert.has_error(function() core.base64_encode("x", "urlsafe") end)
         assert.has_error(function() core.base64_decode("eA==", "foo") end)
         assert.has_error(function() core.base64_encode("x", 1) end)
      end)

      it("raises on a non-string argument", function()
         assert.has_error(function() core.base64_encode(nil) end)
         assert.has_error(function() core.base64_decode({}) end)
      end)
   end)
end)
