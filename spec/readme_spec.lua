-- Every code block of README.md runs here, as written, with only what a reader would fill in
-- replaced: the token, the webhook (pointing at `b24 emulate`), ports and file paths. A new lua,
-- sh or nginx block without a runner below fails the first test; ```text blocks are not code.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local core = require "bitrix24.core"
local cjson = require "cjson"

local function absolute(path)
   local out = b24.exec("realpath " .. b24.quote(path))
   return (out:gsub("\n$", ""))
end
local ROOT = absolute(b24.root)
local TOKEN = "readme0app0token0value"
local README = assert(b24.read(ROOT .. "/README.md"))

-- The fenced blocks: { lang, text, line } (indented fences inside lists included).
local function blocks(text)
   local out, cur = {}, nil
   local n = 0
   for line in (text .. "\n"):gmatch("(.-)\n") do
      n = n + 1
      local indent, fence, lang = line:match("^(%s*)(```)(%w*)%s*$")
      if fence and not cur then
         cur = { lang = lang, lines = {}, line = n, indent = #indent }
      elseif fence and cur then
         cur.text = table.concat(cur.lines, "\n") .. "\n"
         out[#out + 1] = cur
         cur = nil
      elseif cur then
         cur.lines[#cur.lines + 1] = line:sub(cur.indent + 1)
      end
   end
   return out
end

local RUNNERS = {} -- name -> predicate on a block
local function runner(name, pred) RUNNERS[#RUNNERS + 1] = { name = name, pred = pred } end
runner("setup", function(b) return b.lang == "sh" and b.text:find("./dev run", 1, true) end)
runner("handlers script", function(b) return b.lang == "lua" and b.text:find("-- handlers.lua", 1, true) end)
runner("serve command", function(b)
   return b.lang == "sh" and b.text:find("b24 serve --listen", 1, true) and not b.text:find("B24_INBOX=", 1, true)
end)
runner("fleet", function(b) return b.lang == "sh" and b.text:find("B24_INBOX='postgresql://", 1, true) end)
runner("library", function(b) return b.lang == "lua" and b.text:find("b24:list(", 1, true) end)
runner("cli", function(b) return b.lang == "sh" and b.text:find("b24 call crm.lead.add", 1, true) end)
runner("nginx command", function(b)
   return b.lang == "sh" and b.text:find("nginx -p", 1, true) and not b.text:find("cp -r", 1, true)
end)
runner("nginx as root", function(b)
   return b.lang == "sh" and b.text:find("nginx -p", 1, true) and b.text:find("cp -r", 1, true)
end)
runner("nginx conf", function(b) return b.lang == "nginx" end)
runner("emulate", function(b) return b.lang == "sh" and b.text:find("b24 emulate --listen", 1, true) end)
runner("inbox", function(b) return b.lang == "sh" and b.text:find("b24 inbox stats", 1, true) end)
runner("application", function(b) return b.lang == "sh" and b.text:find("examples/app.lua", 1, true) end)
runner("rock", function(b) return b.lang == "sh" and b.text:find("luarocks --lua-version=5.4 make", 1, true) end)

local BLOCK = {} -- runner name -> its block
local ALL = blocks(README)
local PROBLEMS = {} -- blocks with no runner or several, runners with no block
for _, b in ipairs(ALL) do
   if b.lang ~= "text" then
      local matched = {}
      for _, r in ipairs(RUNNERS) do
         if r.pred(b) then matched[#matched + 1] = r.name end
      end
      if #matched ~= 1 or BLOCK[matched[1]] then
         PROBLEMS[#PROBLEMS + 1] = ("README.md:%d (```%s) matches %d runners (%s)")
            :format(b.line, b.lang, #matched, table.concat(matched, ", "))
      else
         BLOCK[matched[1]] = b
      end
   end
end
for _, r in ipairs(RUNNERS) do
   if not BLOCK[r.name] then PROBLEMS[#PROBLEMS + 1] = "no README block for the runner " .. r.name end
end

local function is_root()
   return (b24.exec("id -u")):match("^0%s*$") ~= nil
end

local function plain(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end
local function replace(s, old, new)
   local out, n = s:gsub(plain(old), (new:gsub("%%", "%%%%")))
   assert(n > 0, "the README block no longer has " .. old)
   return out
end

-- A directory whose `b24` is the binary under test, for blocks that call `b24 …`.
local bindir
local function path_env()
   if not bindir then
      bindir = b24.tmpdir()
      os.execute("ln -s " .. b24.quote(absolute(b24.bin)) .. " " .. b24.quote(bindir .. "/b24"))
   end
   return "PATH=" .. b24.quote(bindir) .. ':"$PATH"'
end

local function post_event(url, token, name, id)
   local http = core.http{ timeout = 10 }
   local res = assert(http:request{ method = "POST", url = url,
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
      body = core.form_encode{ event = name, event_handler_id = "7", data = { FIELDS = { ID = id } },
         ts = tostring(os.time()), auth = { access_token = "", expires_in = "3600", scope = "crm",
         domain = "readme.bitrix24.test", server_endpoint = "https://oauth.bitrix.info/rest/",
         status = "L", client_endpoint = "https://readme.bitrix24.test/rest/", member_id = "readme0member",
         user_id = "1", application_token = token } } })
   http:close()
   return res
end

describe("README", function()
   it("has a runner for every lua, sh and nginx block", function()
      assert.same({}, PROBLEMS)
      for _, b in ipairs(ALL) do
         assert.is_true(b.lang == "text" or b.lang == "lua" or b.lang == "sh" or b.lang == "nginx",
            ("README.md:%d: a ```%s block"):format(b.line, b.lang))
      end
   end)

   it("set-up: ./dev run serves examples/handlers.lua; ./dev test is what CI runs", function()
      local block = assert(BLOCK.setup)
      local run_line = assert(block.text:match("(%./dev run)"))
      assert.truthy(block.text:find("./dev test", 1, true))
      -- running the whole suite from inside itself would recurse: .ci/run runs that line
      assert.matches("%./dev test", assert(b24.read(ROOT .. "/.ci/run")))
      local dir = b24.tmpdir()
      local srv = b24.spawn(("cd %s && B24_LISTEN=127.0.0.1:0 B24_INBOX=%s B24_APP_TOKEN=%s exec %s")
         :format(b24.quote(ROOT), b24.quote(dir .. "/inbox.sqlite"), TOKEN, run_line), { listening = true })
      finally(function() srv:stop(); os.execute("rm -rf " .. b24.quote(dir)) end)
      assert.equal(401, post_event(srv:url("/"), "wrong0token", "ONCRMLEADADD", "5").status)
      local res = post_event(srv:url("/"), TOKEN, "ONCRMLEADADD", "5")
      assert.equal(200, res.status, res.body)
      assert(srv:wait_log("event=ONCRMLEADADD id=5"))
      assert.not_matches(TOKEN, srv:log(), 1, true)
   end)

   it("quick start: the handler script under the serve command, events from b24 emulate", function()
      local script, command = assert(BLOCK["handlers script"]), assert(BLOCK["serve command"])
      local dir = b24.tmpdir()
      b24.write(dir .. "/handlers.lua", script.text)
      local port = b24.free_port()
      local portal, srv = b24.emulate{ args = { "--code", emu.CODE, "--token", TOKEN,
                                                "--events-to", "http://127.0.0.1:" .. port .. "/" } }
      finally(function()
         if srv then srv:stop() end
         portal:stop()
         os.execute("rm -rf " .. b24.quote(dir))
      end)
      local sh = command.text
      sh = replace(sh, "B24_APP_TOKEN=...", "B24_APP_TOKEN=" .. TOKEN)
      sh = replace(sh, "https://portal.bitrix24.ru/rest/1/CODE/", portal:url(emu.path("")))
      sh = replace(sh, "0.0.0.0:8080", "127.0.0.1:" .. port)
      sh = replace(sh, "/var/lib/b24/inbox.sqlite", dir .. "/inbox.sqlite")
      sh = replace(sh, "b24 serve", "exec b24 serve")
      srv = b24.spawn("cd " .. b24.quote(dir) .. " && " .. path_env() .. "\n" .. sh, { listening = true })
      local status, body = emu.call(portal, "crm.lead.add", { fields = { TITLE = "Readme lead" } })
      assert.equal(200, status)
      local line = assert(srv:wait_log('title="Readme lead"'))
      assert.matches('msg="new lead"', line, 1, true)
      assert.matches("id=" .. emu.str(body.result), line, 1, true)
      assert.equal(200, (emu.call(portal, "crm.deal.add", { fields = { TITLE = "Readme deal" } })))
      assert(srv:wait_log("event=ONCRMDEALADD"))
      assert.not_matches(TOKEN, srv:log(), 1, true)
      assert.not_matches(emu.CODE, srv:log(), 1, true)
   end)

   it("operations: two hosts of a fleet on one PostgreSQL database, each delivery handled once", function()
      if rawget(_G, "jit") then return end -- a PostgreSQL server per run: the Lua 5.4 passes
      local pg = require "helpers.pg"
      local block = assert(BLOCK.fleet)
      local script = assert(BLOCK["handlers script"])
      local db = pg.start()
      local dir = b24.tmpdir()
      local hosts = {}
      finally(function()
         for _, h in ipairs(hosts) do h:stop() end
         db:stop()
         os.execute("rm -rf " .. b24.quote(dir))
      end)
      b24.write(dir .. "/handlers.lua", script.text)
      for i = 1, 2 do
         local sh = block.text
         sh = replace(sh, "postgresql://b24:PASSWORD@db.internal:5432/b24", db.url)
         sh = replace(sh, "0.0.0.0:8080", "127.0.0.1:" .. b24.free_port())
         -- the deal handler makes no REST call: the webhook is only configured
         sh = replace(sh, "b24 serve", "B24_APP_TOKEN=" .. TOKEN
            .. " B24_WEBHOOK_URL=http://127.0.0.1:9/rest/1/readme0code/ exec b24 serve")
         hosts[i] = b24.spawn("cd " .. b24.quote(dir) .. " && " .. path_env() .. "\n" .. sh, { listening = true })
      end
      -- the same delivery to both hosts (a load balancer's retry): one run in the fleet
      for i = 1, 2 do assert.equal(200, post_event(hosts[i]:url("/"), TOKEN, "ONCRMDEALADD", "77").status) end
      for i = 1, 2 do
         assert.equal(200, post_event(hosts[i]:url("/"), TOKEN, "ONCRMDEALADD", tostring(80 + i)).status)
      end
      -- each handled add's key is remembered (b24_seen) once its run succeeded, on either host
      local deadline = os.time() + 60
      while db:psql("SELECT count(*) FROM b24_seen"):match("%d+") ~= "3" do
         assert(os.time() < deadline, "the fleet did not handle the 3 deliveries")
         os.execute("sleep 0.05")
      end
      local runs = 0
      for i = 1, 2 do
         assert.equal(0, hosts[i]:stop("TERM")) -- its whole log read
         for _, line in ipairs(hosts[i].lines) do
            if line:find('msg="deal event" event=ONCRMDEALADD id=77', 1, true) then runs = runs + 1 end
         end
         assert.not_matches(db.password, hosts[i]:log(), 1, true)
      end
      assert.equal(1, runs)
   end)

   it("quick start: an application installed from b24 emulate --app mirrors a new deal", function()
      local block = assert(BLOCK.application)
      local id, secret = "local.0123456789abcd.01234567", "readme0app0secret0value00000001"
      local dir = b24.tmpdir()
      local mirror = b24.start{ args = { "--workers", "1" }, script = [[
         local host = require "b24.host"
         return function(req)
            host.log("info", "mirror got", { body = req.body })
            return 200, {}, "{}"
         end]] }
      local portal = b24.emulate{ args = { "--code", emu.CODE, "--app", id .. ":" .. secret } }
      local port = b24.free_port()
      local srv
      finally(function()
         if srv then srv:stop() end
         portal:stop()
         mirror:stop()
         os.execute("rm -rf " .. b24.quote(dir))
      end)
      local sh = block.text
      sh = replace(sh, "B24_CLIENT_SECRET=...", "B24_CLIENT_SECRET=" .. secret .. " B24_OAUTH_SERVER=" .. portal.base)
      sh = replace(sh, "https://app.example.com/", "http://127.0.0.1:" .. port .. "/")
      sh = replace(sh, "https://erp.example.com/deals", mirror.base .. "/deals")
      sh = replace(sh, "127.0.0.1:8080", "127.0.0.1:" .. port)
      sh = replace(sh, "/var/lib/b24/app-inbox.sqlite", dir .. "/inbox.sqlite")
      sh = replace(sh, "examples/app.lua", ROOT .. "/examples/app.lua")
      sh = replace(sh, "b24 serve", "exec b24 serve")
      srv = b24.spawn("cd " .. b24.quote(dir) .. " && " .. path_env() .. "\n" .. sh, { listening = true })
      local admin = require("bitrix24").client(portal:url(emu.path("")))
      assert(admin:call("emulator.app.install", { url = "http://127.0.0.1:" .. port .. "/" }))
      assert(srv:wait_log('msg="app: installed" bound=2'), srv:log()) -- the example's line: bound
      assert(admin:call("crm.deal.add", { fields = { TITLE = "Readme app deal" } }))
      assert(mirror:wait_log("Readme app deal"), srv:log())
      assert.not_matches(secret, srv:log(), 1, true)
   end)

   it("quick start: the library in Lua 5.4, LuaJIT and b24 run against b24 emulate", function()
      local block = assert(BLOCK.library)
      local portal = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "120" } }
      local dir = b24.tmpdir()
      finally(function() portal:stop(); os.execute("rm -rf " .. b24.quote(dir)) end)
      local path = b24.write(dir .. "/library.lua", block.text)
      local env = "B24_WEBHOOK_URL=" .. b24.quote(portal:url(emu.path("")))
      local lpath = b24.quote(ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;")
      local runs = {
         ("%s LUA_PATH=%s LUA_CPATH=%s lua5.4 %s"):format(env, lpath, b24.quote(ROOT .. "/build/5.4/?.so;;"), path),
         ("%s LUA_PATH=%s LUA_CPATH=%s luajit %s"):format(env, lpath, b24.quote(ROOT .. "/build/5.1/?.so;;"), path),
         ("%s %s run %s"):format(env, b24.quote(b24.bin), path),
      }
      for i, cmd in ipairs(runs) do
         local out, code = b24.exec(cmd)
         assert.equal(0, code, out)
         local id = 120 + i
         assert.equal(("lead %d created; %d leads in all\n"):format(id, id), out)
      end
   end)

   it("quick start: b24 call and b24 export", function()
      local block = assert(BLOCK.cli)
      local portal = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "75" } }
      local dir = b24.tmpdir()
      finally(function() portal:stop(); os.execute("rm -rf " .. b24.quote(dir)) end)
      local sh = replace(block.text, "https://portal.bitrix24.ru/rest/1/CODE/", portal:url(emu.path("")))
      local out, code = b24.exec("cd " .. b24.quote(dir) .. " && " .. path_env() .. "\nset -e\n" .. sh)
      assert.equal(0, code, out)
      local id, list = out:match("^(%d+)\n(.-)\n$")
      assert.equal("76", id)
      local rows = cjson.decode(list)
      assert.equal(1, #rows)
      assert.same({ "ID", "TITLE" }, emu.keys(rows[1]))
      assert.equal("76", emu.str(rows[1].ID))
      assert.equal("Call from the shell", rows[1].TITLE)
      local n, seen = 0, {}
      for line in assert(io.open(dir .. "/leads.ndjson")):lines() do
         local row = cjson.decode(line)
         assert.is_nil(seen[row.ID])
         seen[row.ID] = true
         n = n + 1
      end
      assert.equal(76, n)
      local lead = select(2, emu.call(portal, "crm.lead.get", { id = 76 })).result
      assert.equal("Olga", lead.NAME)
   end)

   -- Runs an OpenResty quick-start block (from the checkout, after make) against b24 emulate on
   -- a free port: 401 for a wrong token, 200 for the right one. prefix: the -p directory's text in
   -- the block and the directory it stands for here.
   local function openresty(block, prefix)
      local conf = assert(b24.read(ROOT .. "/examples/openresty/nginx.conf"))
      local portal, srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", "3" } }
      local port = b24.free_port()
      local copy = b24.tmpdir() .. "/nginx.conf"
      finally(function()
         if srv then srv:stop("QUIT") end
         portal:stop()
         os.execute("rm -rf " .. b24.quote((copy:gsub("/nginx%.conf$", ""))))
      end)
      b24.write(copy, replace(conf, "listen 127.0.0.1:8080;", "listen 127.0.0.1:" .. port .. ";"))
      local sh = replace(block.text, "B24_APP_TOKEN=...", "exec env B24_APP_TOKEN=" .. TOKEN)
      sh = replace(sh, "https://portal.bitrix24.ru/rest/1/CODE/", portal:url(emu.path("")))
      sh = replace(sh, "-c examples/openresty/nginx.conf", "-c " .. b24.quote(copy))
      if prefix then sh = replace(sh, prefix[1], prefix[2]) end
      srv = b24.spawn("cd " .. b24.quote(ROOT) .. " && " .. sh)
      assert(srv:wait_log("start worker process"))
      local url = "http://127.0.0.1:" .. port .. "/bitrix24/events"
      assert.equal(401, post_event(url, "wrong0token", "ONCRMLEADADD", "1").status)
      local res = post_event(url, TOKEN, "ONCRMLEADADD", "1")
      assert.equal(200, res.status, res.body)
      assert.equal('{"success":true}', res.body)
      return srv
   end

   it("quick start: OpenResty with examples/openresty/nginx.conf, whose lines the excerpt shows", function()
      local conf_block, command = assert(BLOCK["nginx conf"]), assert(BLOCK["nginx command"])
      local conf = assert(b24.read(ROOT .. "/examples/openresty/nginx.conf"))
      -- the excerpt: each of its lines appears in the real file, in order
      local at = 1
      for line in conf_block.text:gmatch("[^\n]+") do
         local want = line:match("^%s*(.-)%s*$")
         if want ~= "}" and not want:match("{$") then
            local s, e = conf:find(want, at, true)
            assert.truthy(s, "examples/openresty/nginx.conf lacks, in order: " .. want)
            at = e + 1
         end
      end
      -- as root, nginx's workers run as nobody: the README's next block is for a checkout they
      -- cannot read (one in root's home)
      local readable = b24.exec("runuser -u nobody -- test -r " .. b24.quote(ROOT .. "/examples/openresty/handler.lua")
         .. " && echo yes")
      if not is_root() or readable:match("^yes") then openresty(command) end
   end)

   it("quick start: OpenResty as root, from a copy its workers can read", function()
      local block = assert(BLOCK["nginx as root"])
      local prefix = assert(block.text:match("mkdir %-p (%S+)"))
      local dir = b24.tmpdir() -- what mkdir -p would make, still private: the block's chmod opens it
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local srv = openresty(block, { prefix, dir })
      if is_root() then -- the workers keep nginx's unprivileged user
         assert.matches("^nobody\n", (b24.exec("ps -o user= --ppid " .. srv.pid)))
      end
   end)

   it("the emulator's commands", function()
      local block = assert(BLOCK.emulate)
      local port, dead = b24.free_port(), b24.free_port()
      local first, curl = block.text:match("^(.-[^\\]\n)(curl.-)\n$")
      assert.truthy(first, "an emulate command, then a curl line")
      first = replace(first, "127.0.0.1:8090", "127.0.0.1:" .. port)
      first = replace(first, "http://127.0.0.1:8080/", "http://127.0.0.1:" .. dead .. "/")
      local srv = b24.spawn(path_env() .. "\nexec " .. first, { listening = true })
      finally(function() srv:stop() end)
      local out, code = b24.exec(replace(curl, "127.0.0.1:8090", "127.0.0.1:" .. port))
      assert.equal(0, code, out)
      local body = cjson.decode(out)
      assert.equal(120, body.total)
      assert.equal(50, #body.result)
      assert.same({ "ID", "TITLE" }, emu.keys(body.result[1]))
   end)

   it("the inbox commands", function()
      local block = assert(BLOCK.inbox)
      local dir = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. b24.quote(dir)) end)
      local inbox = dir .. "/b24-inbox.sqlite"
      -- one dead letter: a handler that always fails, one attempt
      local srv = b24.start{ script = ([[
local router = require("bitrix24").router{ token = %q }
router:on("*", function() error("the external system is down") end)
return router]]):format(TOKEN), args = { "--inbox", inbox, "--max-attempts", "1" } }
      assert.equal(200, post_event(srv:url("/"), TOKEN, "ONCRMLEADADD", "9").status)
      assert(srv:wait_log("dead letter"))
      assert.equal(0, srv:stop())
      local sh = block.text:gsub("b24%-inbox%.sqlite", (dir:gsub("%%", "%%%%")) .. "/b24-inbox.sqlite")
      local outs = {}
      for line in sh:gmatch("[^\n]+") do
         local cmd = line:gsub("%s+#.*$", "")
         local out, code = b24.exec(path_env() .. "\n" .. cmd)
         assert.equal(0, code, cmd .. ": " .. out)
         outs[#outs + 1] = out
      end
      assert.equal(4, #outs)
      assert.equal(1, cjson.decode(outs[1]).dead)
      local listed = cjson.decode(outs[2]:match("[^\n]+"))
      assert.equal("ONCRMLEADADD", listed.event)
      local stats = cjson.decode((b24.exec(path_env() .. "\nb24 inbox stats --inbox " .. b24.quote(inbox))))
      assert.equal(0, stats.dead)
      assert.equal(1, stats.pending)
   end)

   it("installs the library rock and the program rock with its luarocks commands", function()
      local block = assert(BLOCK.rock)
      -- a copy of the checkout (build/b24 with it, so make finds it built): luarocks' builtin
      -- build leaves csrc/*.o and bitrix24/core.so in the directory it runs in
      local src = b24.tmpdir()
      finally(function() os.execute("rm -rf " .. b24.quote(src)) end)
      local out, code = b24.exec(("cd %s && tar --exclude=./.git --exclude=./build -cf - . | tar -C %s -xf - "
         .. "&& mkdir %s/build && cp -p build/b24 build/b24_embedded.c %s/build/")
         :format(b24.quote(ROOT), b24.quote(src), b24.quote(src), b24.quote(src)))
      assert.equal(0, code, out)
      local kinds = {}
      for line in block.text:gmatch("[^\n]+") do
         local tree = b24.tmpdir()
         local cmd = replace(line:gsub("%s+#.*$", ""), "luarocks ", "luarocks --tree=" .. b24.quote(tree) .. " ")
         out, code = b24.exec("cd " .. b24.quote(src) .. " && " .. cmd)
         assert.equal(0, code, out)
         local version = line:match("%-%-lua%-version=(%S+)")
         if line:find("bitrix24-scm-1.rockspec", 1, true) then -- the library: modules, no program
            kinds[#kinds + 1] = "library " .. version
            assert.truthy(b24.read(tree .. "/lib/lua/" .. version .. "/bitrix24/core.so"))
            assert.truthy(b24.read(tree .. "/share/lua/" .. version .. "/bitrix24/client.lua"))
            assert.is_nil(b24.read(tree .. "/bin/b24"))
         else -- the program: bin/b24, no module
            kinds[#kinds + 1] = "program"
            assert.truthy(line:find("b24-scm-1.rockspec", 1, true), line)
            assert.matches("^b24 ", (b24.exec(b24.quote(tree .. "/bin/b24") .. " --version")))
            assert.equal("", (b24.exec("find " .. b24.quote(tree) .. " -name '*.lua' -o -name '*.so'")))
         end
         os.execute("rm -rf " .. b24.quote(tree))
      end
      assert.same({ "library 5.4", "library 5.1", "program" }, kinds)
   end)
end)

describe("examples/b24.service", function()
   it("starts b24 serve with its ExecStart, reloads on ExecReload's signal, stops on SIGTERM", function()
      local unit = assert(b24.read(ROOT .. "/examples/b24.service"))
      local exec = assert(unit:match("\nExecStart=([^\n]+)"))
      assert.matches("^/bin/kill %-HUP %$MAINPID$", assert(unit:match("\nExecReload=([^\n]+)")))
      assert.equal("SIGTERM", unit:match("\nKillSignal=([^\n]+)"))
      local dir = b24.tmpdir()
      exec = replace(exec, "/usr/local/bin/b24", absolute(b24.bin))
      exec = replace(exec, "${STATE_DIRECTORY}", dir)
      exec = replace(exec, "/etc/b24/handlers.lua", ROOT .. "/examples/handlers.lua")
      exec = replace(exec, "127.0.0.1:8080", "127.0.0.1:0")
      local env = assert(unit:match("\nEnvironment=([^\n]+)"))
      local srv = b24.spawn(("B24_APP_TOKEN=%s %s exec %s"):format(TOKEN, env, exec), { listening = true })
      finally(function() srv:stop("KILL"); os.execute("rm -rf " .. b24.quote(dir)) end)
      assert.equal(200, post_event(srv:url("/"), TOKEN, "ONCRMDEALADD", "3").status)
      assert(srv:wait_log('"event":"ONCRMDEALADD"')) -- Environment=B24_LOG_FORMAT=json
      assert.truthy(b24.read(dir .. "/inbox.sqlite"))
      srv:signal("HUP")
      assert(srv:wait_log("script reloaded"))
      assert.equal(0, srv:stop("TERM"))
   end)
end)
