-- `luarocks make` builds and installs the rock for Lua 5.4 and for the 5.1 ABI (LuaJIT), and
-- the installed modules load and work in each interpreter.
local b24 = require "helpers.b24"

local function install(version)
   local tree = b24.tmpdir()
   local out, code = b24.exec(("cd %s && luarocks --lua-version=%s --tree=%s make --deps-mode=none bitrix24-scm-1.rockspec")
      :format(b24.quote(b24.root), version, b24.quote(tree)))
   return tree, out, code
end

for _, case in ipairs{ { version = "5.4", lua = "lua5.4" }, { version = "5.1", lua = "luajit" } } do
   describe("luarocks --lua-version=" .. case.version .. " make", function()
      local tree
      teardown(function() if tree then os.execute("rm -rf " .. b24.quote(tree)) end end)

      it("builds and installs the rock, which then loads in " .. case.lua, function()
         local out, code
         tree, out, code = install(case.version)
         assert.equal(0, code, out)
         local v = case.version
         local script = [[
local b = require "bitrix24"
local r = b.router{ token = "t" }
io.write(b._VERSION, " ", b.core.form_encode{ a = { 1, 2 } }, " ", type(r.accept), " ",
  b.core.hmac_sha256("k", "d"):sub(1, 8))]]
         local run, rc = b24.exec(("LUA_PATH=%s LUA_CPATH=%s %s -e %s"):format(
            b24.quote(tree .. "/share/lua/" .. v .. "/?.lua;" .. tree .. "/share/lua/" .. v .. "/?/init.lua;;"),
            b24.quote(tree .. "/lib/lua/" .. v .. "/?.so;;"), case.lua, b24.quote(script)))
         assert.equal(0, rc, run)
         assert.equal("0.1.0 a%5B0%5D=1&a%5B1%5D=2 function e7ea21c3", run)
      end)

      it("installs a working b24 program into the tree's bin", function()
         assert.truthy(tree, "the install above ran")
         local bin = tree .. "/bin/b24"
         local out, code = b24.exec(b24.clean .. b24.quote(bin) .. " --version")
         assert.equal(0, code, out)
         assert.matches("^b24 0%.1%.0", out)
         local script = b24.write(tree .. "/probe.lua", [[
local b = require "bitrix24"
print(b.core.form_encode{ x = "y" }, type(b.client), type(require("b24.emulator").main))]])
         out, code = b24.exec(b24.clean .. b24.quote(bin) .. " run " .. b24.quote(script))
         assert.equal(0, code, out)
         assert.equal("x=y\tfunction\tfunction\n", out)
      end)
   end)
end
