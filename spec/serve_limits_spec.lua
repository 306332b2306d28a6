-- b24 serve's limits and start-up messages (issue 12 item 5): --max-body sizes that overflow or
-- that the SQLite inbox cannot hold are refused at start-up; a script that returns nothing is
-- told what to return.
local b24 = require "helpers.b24"

describe("b24 serve limits", function()
   local dir
   setup(function() dir = b24.tmpdir() end)
   teardown(function() os.execute("rm -rf " .. b24.quote(dir)) end)

   local function serve(args)
      return b24.exec(b24.quote(b24.bin) .. " serve --listen 127.0.0.1:0 " .. args)
   end

   describe("--max-body", function()
      it("refuses a size that overflows (17592186044417M is 2^64 + 1 MiB) with exit 2, naming --max-body", function()
         for _, size in ipairs{ "17592186044417M", "18446744073709551617", "1099511627777", "-1", "1048577M" } do
            local out, code = serve("--max-body " .. size .. " x.lua")
            assert.equal(2, code, size)
            assert.matches("--max-body", out, 1, true)
            assert.matches(size, out, 1, true)
         end
         local out, code = b24.exec("B24_MAX_BODY=17592186044417M " .. b24.quote(b24.bin) .. " serve x.lua")
         assert.equal(2, code)
         assert.matches("B24_MAX_BODY", out, 1, true)
      end)

      it("refuses a size over what one SQLite row holds when a router has the inbox", function()
         local path = b24.write(dir .. "/router.lua", 'return require("bitrix24").router{ insecure = true }\n')
         local out, code = serve("--inbox memory --max-body 1000000000 " .. b24.quote(path))
         assert.equal(2, code)
         assert.matches("--max-body 1000000000 is over what the SQLite inbox stores", out, 1, true)
      end)

      it("takes that size with --sync, and a large one that fits with the inbox", function()
         local path = b24.write(dir .. "/router2.lua", 'return require("bitrix24").router{ insecure = true }\n')
         local srv = b24.start{ script_path = path, args = { "--sync", "--max-body", "1024M" } }
         assert.equal(0, srv:stop())
         srv = b24.start{ script_path = path, args = { "--inbox", "memory", "--max-body", "900M" } }
         assert.equal(0, srv:stop())
      end)
   end)

   describe("a script that returns no handler", function()
      it("is told, when it returns nothing, to return a router or a function (exit 1)", function()
         local path = b24.write(dir .. "/nothing.lua",
            'local router = require("bitrix24").router{ insecure = true }\n')
         local out, code = serve(b24.quote(path))
         assert.equal(1, code)
         assert.matches("nothing.lua returned nothing: return a bitrix24.router{...} or a function(request)",
            out, 1, true)
      end)

      it("is told the type it returned otherwise", function()
         local path = b24.write(dir .. "/string.lua", 'return "handler"\n')
         local out, code = serve(b24.quote(path))
         assert.equal(1, code)
         assert.matches("string.lua returned a string value", out, 1, true)
         assert.matches("bitrix24.router{...}", out, 1, true)
      end)
   end)
end)
