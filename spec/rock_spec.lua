-- The two packages, each installed for real with luarocks into a temporary tree:
-- bitrix24-scm-1.rockspec is the library alone (bitrix24.core + lua/bitrix24, builtin build, for
-- Lua 5.4 and for the 5.1 ABI of LuaJIT) and needs only libcurl and OpenSSL; b24-scm-1.rockspec
-- and `make install` install the b24 program.
local b24 = require "helpers.b24"

local ROOT = (b24.exec("cd " .. b24.quote(b24.root) .. " && pwd")):match("^(.-)%s*$")
local q = b24.quote

-- The rockspec's tables, read as luarocks reads it (a Lua file of assignments).
local function rockspec(name)
   local env = {}
   local chunk = assert(loadfile(ROOT .. "/" .. name, "t", env))
   if setfenv then setfenv(chunk, env) end -- LuaJIT
   chunk()
   return env
end

local function lines(s)
   local out = {}
   for line in s:gmatch("[^\n]+") do out[#out + 1] = line end
   table.sort(out)
   return out
end

-- The files under dir, relative to it, sorted; {} when dir does not exist.
local function files(dir)
   return lines((b24.exec("cd " .. q(dir) .. " 2>/dev/null && find . -type f | sed 's|^\\./||'")))
end

local function keys(t)
   local out = {}
   for k in pairs(t) do out[#out + 1] = k end
   table.sort(out)
   return out
end

describe("bitrix24-scm-1.rockspec", function()
   local spec = rockspec("bitrix24-scm-1.rockspec")

   it("is the library: a builtin build of bitrix24.core and lua/bitrix24, on libcurl and OpenSSL only", function()
      assert.equal("bitrix24", spec.package)
      assert.equal("builtin", spec.build.type)
      assert.same({ "CURL", "OPENSSL" }, keys(spec.external_dependencies))
      local core = assert(spec.build.modules["bitrix24.core"])
      local sources = {}
      for _, s in ipairs(core.sources) do sources[#sources + 1] = s end
      table.sort(sources)
      assert.same(lines((b24.exec("cd " .. q(ROOT) .. " && ls csrc/*.c"))), sources)
      table.sort(core.libraries)
      assert.same({ "crypto", "curl", "m", "pthread", "ssl" }, core.libraries)
      -- every Lua file of lua/, each under its module name, and nothing from b24/ or emulator/
      local want = {}
      for _, path in ipairs(lines((b24.exec("cd " .. q(ROOT) .. " && find lua -name '*.lua'")))) do
         local name = path:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
         want[name] = path
      end
      want["bitrix24.core"] = core
      assert.same(want, spec.build.modules)
   end)

   for _, case in ipairs{ { version = "5.4", lua = "lua5.4" }, { version = "5.1", lua = "luajit" } } do
      describe("luarocks --lua-version=" .. case.version .. " make", function()
         local v = case.version
         local src, tree, out, code
         setup(function()
            -- a copy of just the rockspec, csrc/ and lua/: the build needs nothing else
            src, tree = b24.tmpdir(), b24.tmpdir()
            b24.exec(("cd %s && cp -r bitrix24-scm-1.rockspec csrc lua %s/"):format(q(ROOT), q(src)))
            out, code = b24.exec(("cd %s && luarocks --lua-version=%s --tree=%s make --deps-mode=none "
               .. "bitrix24-scm-1.rockspec"):format(q(src), v, q(tree)))
         end)
         teardown(function() os.execute("rm -rf " .. q(src) .. " " .. q(tree)) end)

         it("compiles csrc/ and links only libcurl, OpenSSL, libm and pthreads", function()
            assert.equal(0, code, out)
            local compiled, linked = 0, 0
            for line in out:gmatch("[^\n]+") do
               if line:match("^%S*gcc .* %-c ") or line:match("^%S*cc .* %-c ") then
                  compiled = compiled + 1
                  assert.matches(" %-c csrc/b24_[%w_]+%.c ", line)
                  assert.matches("-I/usr/include/lua" .. v, line, 1, true)
               elseif line:match(" %-o bitrix24/core%.so ") then
                  linked = linked + 1
                  local libs = {}
                  for lib in line:gmatch(" %-l(%S+)") do libs[#libs + 1] = lib end
                  assert.same({ "curl", "ssl", "crypto", "m", "pthread" }, libs)
               end
            end
            assert.equal(#lines((b24.exec("cd " .. q(ROOT) .. " && ls csrc/*.c"))), compiled, out)
            assert.equal(1, linked, out)
            local deps = b24.exec("ldd " .. q(tree .. "/lib/lua/" .. v .. "/bitrix24/core.so"))
            assert.matches("libcurl", deps)
            assert.not_matches("microhttpd", deps)
            assert.not_matches("sqlite", deps)
            assert.not_matches("liblua", deps)
            -- luarocks cannot pass -fvisibility=hidden: csrc/b24.h hides the internals itself
            local exported = b24.exec("nm -D --defined-only "
               .. q(tree .. "/lib/lua/" .. v .. "/bitrix24/core.so") .. " | awk '$2 == \"T\" { print $3 }'")
            assert.equal("luaopen_bitrix24_core\n", exported)
         end)

         it("installs the library's modules and bitrix24.core, and no program, b24 or emulator module", function()
            assert.equal(0, code, out)
            local want = {}
            for _, path in ipairs(lines((b24.exec("cd " .. q(ROOT) .. "/lua && find . -name '*.lua'")))) do
               want[#want + 1] = path:gsub("^%./", "")
            end
            assert.same(want, files(tree .. "/share/lua/" .. v))
            assert.same({ "bitrix24/core.so" }, files(tree .. "/lib/lua/" .. v))
            assert.same({}, files(tree .. "/bin"))
         end)

         it("loads and works in " .. case.lua .. " from the tree alone", function()
            assert.equal(0, code, out)
            local script = [[
local b = require "bitrix24"
local r = b.router{ token = "t" }
for _, m in ipairs{ "error", "client", "export", "log", "router", "event", "ngx", "transport.curl",
                    "transport.ngx" } do
   require("bitrix24." .. m)
end
assert(not pcall(require, "b24.host") and not pcall(require, "b24.emulator"))
io.write(b._VERSION, " ", b.core.form_encode{ a = { 1, 2 } }, " ", type(r.accept), " ",
   b.core.hmac_sha256("k", "d"):sub(1, 8))]]
            local lpath = tree .. "/share/lua/" .. v .. "/?.lua;" .. tree .. "/share/lua/" .. v .. "/?/init.lua;;"
            local run, rc = b24.exec(("cd / && LUA_PATH=%s LUA_CPATH=%s %s -e %s"):format(
               q(lpath), q(tree .. "/lib/lua/" .. v .. "/?.so;;"), case.lua, q(script)))
            assert.equal(0, rc, run)
            assert.equal("0.1.0 a%5B0%5D=1&a%5B1%5D=2 function e7ea21c3", run)
         end)
      end)
   end
end)

-- b24 runs a script with the library and the emulator built in: the program needs no rock.
local PROBE = [[
local b = require "bitrix24"
print(b.core.form_encode{ x = "y" }, type(b.client), type(require("b24.emulator").main))]]

local function check_program(bin, dir)
   local out, code = b24.exec(b24.clean .. q(bin) .. " --version")
   assert.equal(0, code, out)
   assert.matches("^b24 0%.1%.0", out)
   local script = b24.write(dir .. "/probe.lua", PROBE)
   out, code = b24.exec("cd / && env -u LUA_PATH -u LUA_CPATH " .. q(bin) .. " run " .. q(script))
   assert.equal(0, code, out)
   assert.equal("x=y\tfunction\tfunction\n", out)
end

describe("b24-scm-1.rockspec", function()
   it("is the program: a make build on libmicrohttpd, SQLite and Lua 5.4", function()
      local spec = rockspec("b24-scm-1.rockspec")
      assert.equal("b24", spec.package)
      assert.equal("make", spec.build.type)
      assert.same({ "CURL", "LUA54", "MICROHTTPD", "OPENSSL", "SQLITE" }, keys(spec.external_dependencies))
      -- one b24 per tree: it embeds Lua 5.4, so its rock is for 5.4 alone (installed under 5.1
      -- too, LuaRocks left bin/b24~ beside the 5.4 one)
      assert.same({ "lua >= 5.4, < 5.5" }, spec.dependencies)
   end)

   it("luarocks make installs a working b24 into the tree's bin, and no Lua module", function()
      local tree = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. q(tree)) end)
      local out, code = b24.exec(("cd %s && luarocks --lua-version=5.4 --tree=%s make --deps-mode=none "
         .. "b24-scm-1.rockspec"):format(q(ROOT), q(tree)))
      assert.equal(0, code, out)
      assert.same({ "b24" }, files(tree .. "/bin"))
      assert.same({}, files(tree .. "/share/lua"))
      assert.same({}, files(tree .. "/lib/lua"))
      check_program(tree .. "/bin/b24", tree)
      -- the same rock under Lua 5.1 is refused, and leaves no second b24 (bin/b24~) behind
      out, code = b24.exec(("cd %s && luarocks --lua-version=5.1 --tree=%s make b24-scm-1.rockspec")
         :format(q(ROOT), q(tree)))
      assert.is_not.equal(0, code)
      assert.matches("lua >= 5.4, < 5.5", out, 1, true)
      assert.same({ "b24" }, files(tree .. "/bin"))
   end)
end)

describe("make install", function()
   it("installs b24 into DESTDIR/PREFIX/bin", function()
      local dest = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. q(dest)) end)
      local out, code = b24.exec(("make -s -C %s install DESTDIR=%s PREFIX=/usr"):format(q(ROOT), q(dest)))
      assert.equal(0, code, out)
      assert.same({ "usr/bin/b24" }, files(dest))
      check_program(dest .. "/usr/bin/b24", dest)
   end)
end)
