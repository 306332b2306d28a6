-- A real nginx (Debian's nginx + libnginx-mod-http-lua, OpenResty's LuaJIT) with
-- examples/openresty/nginx.conf on a loopback port: the rock built for the 5.1 ABI loads, real
-- event bodies are answered (200, 401, 413, a body spilled to a file), handlers run after the
-- answer, and REST calls from nginx (bitrix24.transport.ngx on worker threads) reach the emulator
-- without blocking the worker.
local b24 = require "helpers.b24"
local shared = require "helpers.shared"
local core = require "bitrix24.core"
local cjson = require "cjson"
local socket = require "socket"

local NGINX = "/usr/sbin/nginx"
-- the checkout as an absolute path: nginx runs under another prefix
local ROOT = (b24.exec("cd " .. b24.quote(b24.root) .. " && pwd")):match("^(.-)%s*$")
local CONF = ROOT .. "/examples/openresty/nginx.conf"
local CODE = "spec0ngx0code001"
local CONTACT = shared.vector("events/app-oncrmcontactadd.form")   -- form, token 3c6c…
local DEAL = shared.vector("events/webhook-oncrmdealadd.json")     -- JSON, another portal's token
local TOKEN = CONTACT:match("auth%%5Bapplication_token%%5D=([^&]+)")
local FORM = { ["Content-Type"] = "application/x-www-form-urlencoded" }

local free_port = b24.free_port

local function is_root()
   local out = b24.exec("id -u")
   return out:match("^0%s*$") ~= nil
end

-- ---- an nginx under a temporary prefix -------------------------------------------------------

local Nginx = {}
Nginx.__index = Nginx

-- Reads log lines until one holds needle (plain); nil and the log when nginx exited first.
function Nginx:wait_log(needle, from)
   for i = from or 1, #self.lines do
      if self.lines[i]:find(needle, 1, true) then return self.lines[i] end
   end
   while true do
      local line = self.stream:read("*l")
      if not line then return nil, table.concat(self.lines, "\n") end
      self.lines[#self.lines + 1] = line
      if (not from or #self.lines >= from) and line:find(needle, 1, true) then return line end
      if line:match("^b24%-exit=") then return nil, table.concat(self.lines, "\n") end
   end
end

-- Whether any log line from position `from` on holds needle (no waiting).
function Nginx:logged(needle, from)
   for i = from or 1, #self.lines do
      if self.lines[i]:find(needle, 1, true) then return true end
   end
   return false
end

function Nginx:log(from)
   return table.concat(self.lines, "\n", from or 1)
end

function Nginx:request(req)
   req.url = self.base .. req.path
   req.path = nil
   return self.http:request(req)
end

function Nginx:stop()
   if self.stopped then return end
   self.stopped = true
   os.execute("kill -QUIT " .. self.pid .. " 2>/dev/null")
   self:wait_log("b24-exit=")
   -- B24_NGINX_LOG=FILE keeps the logs of the run's nginx instances, for a look after a failure
   local keep = os.getenv("B24_NGINX_LOG")
   if keep then
      local f = io.open(keep, "ab")
      if f then f:write(self:log(), "\n"); f:close() end
   end
   os.execute("kill " .. self.tail_pid .. " 2>/dev/null")
   self.stream:close()
   self.http:close()
   os.execute("rm -rf " .. b24.quote(self.dir))
end

-- Starts nginx with conf (the example's text) under a fresh prefix: lua/ and examples/ link to
-- the checkout (or opts.links), build/5.1 to the 5.1-ABI build; the listen port is a free one;
-- extra is spliced in as locations of the server. env: "NAME=value …" for nginx.
local function start_nginx(opts)
   local _, present = b24.exec("test -x " .. NGINX .. " && test -f /usr/lib/nginx/modules/ngx_http_lua_module.so")
   assert(present == 0, "nginx with ngx_lua is missing: scripts/deps.sh test installs nginx and libnginx-mod-http-lua")
   local dir = b24.tmpdir()
   local links = opts.links or {
      lua = ROOT .. "/lua", examples = ROOT .. "/examples", ["build/5.1"] = ROOT .. "/build/5.1",
   }
   os.execute("mkdir -p " .. b24.quote(dir .. "/build"))
   for name, target in pairs(links) do
      os.execute("ln -s " .. b24.quote(target) .. " " .. b24.quote(dir .. "/" .. name))
   end
   local port = free_port()
   local conf = opts.conf or b24.read(CONF)
   local n
   conf, n = conf:gsub("listen 127%.0%.0%.1:8080;", "listen 127.0.0.1:" .. port .. ";")
   assert(n == 1, "the example's listen line moved")
   if opts.transform then conf = opts.transform(conf) end
   if opts.extra then
      conf, n = conf:gsub("(\n%s*location = /bitrix24/events)", function(loc) return "\n" .. opts.extra .. loc end)
      assert(n == 1, "the example's events location moved")
   end
   b24.write(dir .. "/nginx.conf", conf)
   local globals = "daemon off;"
   -- as root the workers would run as nobody, who cannot enter the private prefix
   if is_root() then globals = globals .. " user root;" end
   local log = dir .. "/error.log"
   local cmd = ("%s %s %s %s -p %s -c %s -e stderr -g %s"):format(
      b24.clean .. (opts.env or ""), b24.quote(b24.root .. "/spec/helpers/run-b24.sh"), b24.quote(log),
      NGINX, b24.quote(dir .. "/"), b24.quote(dir .. "/nginx.conf"), b24.quote(globals))
   local stream = assert(io.popen(cmd))
   local self = setmetatable({ dir = dir, stream = stream, lines = {}, port = port,
                                             base = "http://127.0.0.1:" .. port,
                                             http = core.http{ timeout = 30 } }, Nginx)
   while not (self.pid and self.tail_pid) do
      local line = assert(stream:read("*l"), "the log streamer ended")
      self.pid = self.pid or line:match("^pid=(%d+)$")
      self.tail_pid = self.tail_pid or line:match("^tail=(%d+)$")
   end
   local ok, seen = self:wait_log("start worker process")
   if not ok then
      self.stopped = true
      os.execute("kill " .. self.tail_pid .. " 2>/dev/null")
      stream:close()
      error("nginx did not start:\n" .. tostring(seen))
   end
   return self
end

local function emulator(latency_ms)
   return b24.emulate{ args = { "--code", CODE, "--seed-leads", "3", "--latency", tostring(latency_ms) } }
end

local function webhook(srv)
   return srv.base .. "/rest/1/" .. CODE .. "/"
end

-- The contact vector as another event: name and object ID replaced, token kept.
local function event_body(name, id)
   return (CONTACT:gsub("^event=ONCRMCONTACTADD", "event=" .. name)
                         :gsub("data%%5BFIELDS%%5D%%5BID%%5D=134806", "data%%5BFIELDS%%5D%%5BID%%5D=" .. id))
end

local function post(ngx_srv, body, headers)
   return assert(ngx_srv:request{ method = "POST", path = "/bitrix24/events", headers = headers or FORM,
                                                 body = body })
end

-- A raw HTTP/1.1 request with a chunked body (no Content-Length): the status line's code.
local function post_chunked(port, path, body)
   local c = assert(socket.connect("127.0.0.1", port))
   c:settimeout(30)
   assert(c:send("POST " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
      .. "Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"))
   local step = 65536
   for i = 1, #body, step do
      local chunk = body:sub(i, i + step - 1)
      assert(c:send(string.format("%x\r\n", #chunk) .. chunk .. "\r\n"))
   end
   assert(c:send("0\r\n\r\n"))
   local all = c:receive("*a")
   c:close()
   return tonumber(all:match("^HTTP/1%.%d (%d+)")), all
end

describe("outside nginx", function()
   it("the ngx pieces raise a clear error, and the client keeps its C transport", function()
      local bitrix24 = require "bitrix24"
      for _, bad in ipairs{ 0, 1.5, -1, "2" } do
         local ok, err = pcall(bitrix24.router, { token = "t", max_running = bad })
         assert.is_false(ok)
         assert.matches("max_running", err, 1, true)
      end
      local r = bitrix24.router{ token = "t", max_running = 10 }
      local ok, err = pcall(r.handle_ngx, r)
      assert.is_false(ok)
      assert.matches("only inside nginx", err, 1, true)
      ok, err = pcall(require("bitrix24.transport.ngx").new)
      assert.is_false(ok)
      assert.matches("only inside nginx", err, 1, true)
      assert.is_false(require("bitrix24.transport.ngx").available())
      assert.is_false(require("bitrix24").in_nginx())
      local c = bitrix24.client{ url = "http://127.0.0.1:1/rest/1/code/" }
      assert.is_nil(c.transport.backend)
      assert.equal(core.now, c.now)
   end)
end)

describe("the rock from luarocks --lua-version=5.1 make, in nginx", function()
   local tree, emu, srv
   setup(function()
      tree = b24.tmpdir()
      local out, code = b24.exec(("cd %s && luarocks --lua-version=5.1 --tree=%s make --deps-mode=none %s")
         :format(b24.quote(ROOT), b24.quote(tree), "bitrix24-scm-1.rockspec"))
      assert(code == 0, out)
      emu = emulator(0)
      srv = start_nginx{
         env = "B24_APP_TOKEN=" .. TOKEN .. " B24_WEBHOOK_URL=" .. webhook(emu),
         -- only the tree and the example's handler: no lua/ or build/ of the checkout
         links = { examples = ROOT .. "/examples" },
         transform = function(conf)
            local n1, n2
            local path = ('lua_package_path "%s/share/lua/5.1/?.lua;%s/share/lua/5.1/?/init.lua;'
               .. '$prefix/examples/openresty/?.lua;;";'):format(tree, tree)
            conf, n1 = conf:gsub('lua_package_path "[^"]*";', path)
            conf, n2 = conf:gsub('lua_package_cpath "[^"]*";',
                                 ('lua_package_cpath "%s/lib/lua/5.1/?.so;;";'):format(tree))
            assert(n1 == 1 and n2 == 1, "the example's package paths moved")
            return conf
         end,
      }
   end)
   teardown(function()
      if srv then srv:stop() end
      if emu then emu:stop() end
      if tree then os.execute("rm -rf " .. b24.quote(tree)) end
   end)

   it("loads through lua_package_path/cpath: an event is answered and its handler calls REST", function()
      local res = post(srv, event_body("ONCRMLEADADD", "3"))
      assert.equal(200, res.status)
      assert.equal('{"success":true}', res.body)
      assert.truthy(srv:wait_log('msg="lead fetched" id=3 title="Lead #3"'))
   end)

   it("logs a failing handler, keeps the worker, and runs the handler again on a redelivery", function()
      local from = #srv.lines + 1
      local body = event_body("ONCRMLEADADD", "999") -- no such lead in the emulator
      assert.equal(200, post(srv, body).status)
      local line = assert(srv:wait_log("handler failed", from))
      assert.matches("[error]", line, 1, true)
      assert.matches("crm.lead.get 999", line, 1, true)
      assert.not_matches(CODE, line, 1, true)
      -- the same worker answers, and the failed delivery is not taken for a duplicate
      from = #srv.lines + 1
      local res = post(srv, body)
      assert.equal('{"success":true}', res.body)
      assert.truthy(srv:wait_log("handler failed", from))
      assert.is_false(srv:logged("worker process", from)) -- no worker restarted
   end)
end)

describe("OpenResty (examples/openresty/nginx.conf)", function()
   local emu, slow, srv
   setup(function()
      emu = emulator(0)
      slow = emulator(2000)
      srv = start_nginx{
         env = "B24_APP_TOKEN=" .. TOKEN .. " B24_WEBHOOK_URL=" .. webhook(slow),
         transform = function(conf)
            return (conf:gsub("\nhttp {\n", "\nhttp {\n  lua_shared_dict spec 64k;\n", 1))
         end,
         extra = [[
    location = /t/transport {
      content_by_lua_block {
        local cjson = require "cjson"
        local t = require("bitrix24.transport.ngx").new{ timeout = 20 }
        local args = ngx.req.get_uri_args()
        ngx.log(ngx.INFO, "transport call ", args.tag or "")
        local res, msg, kind, sent = t:request{ url = args.url, method = "POST",
          headers = { ["Content-Type"] = "application/json" }, body = args.body or "{}" }
        ngx.log(ngx.INFO, "transport done ", args.tag or "")
        local many = args.tag == nil and t:request_many{
          { url = args.url, method = "POST", headers = { ["Content-Type"] = "application/json" },
            body = '{"id":2}' },
          { url = "http://127.0.0.1:1/refused" },
          { url = args.url, method = "POST", headers = { ["Content-Type"] = "application/json" },
            body = '{"id":3}' },
        }
        local t0 = t.now()
        t.sleep(0.01)
        t:sleep(0.01)
        ngx.say(cjson.encode{
          backend = t.backend, status = res and res.status, body = res and res.body,
          content_type = res and res.headers["content-type"], err = msg, kind = kind,
          many = many, slept = t.now() - t0 >= 0.019,
        })
      }
    }
    location = /t/nopool {
      content_by_lua_block {
        local t = require("bitrix24.transport.ngx").new{ backend = "thread", thread_pool = "nosuchpool" }
        local ok, err = pcall(t.request, t, { url = "http://127.0.0.1:1/" })
        ngx.say(tostring(ok), " ", tostring(err))
      }
    }
    location = /t/limited {
      content_by_lua_block {
        local limited = package.loaded.spec_limited
        if not limited then
          limited = require("bitrix24").router{ token = os.getenv("B24_APP_TOKEN"), max_running = 1 }
          limited:on("*", function(event, ctx)
            ctx.log("info", "limited started", { id = event.id })
            while not ngx.shared.spec:get("release") do ngx.sleep(0.01) end
            ctx.log("info", "limited done", { id = event.id })
          end)
          package.loaded.spec_limited = limited
        end
        limited:handle_ngx()
      }
    }
    location = /t/release {
      content_by_lua_block { ngx.shared.spec:set("release", true) ngx.say("released") }
    }
    location = /t/ping {
      content_by_lua_block { ngx.say("pong") }
    }
]] }
   end)
   teardown(function()
      if srv then srv:stop() end
      if emu then emu:stop() end
      if slow then slow:stop() end
   end)

   describe("events", function()
      it("answers a real form body with the right token 200 at once, and runs the handlers after", function()
         local from = #srv.lines + 1
         local res = post(srv, CONTACT)
         assert.equal(200, res.status)
         assert.equal('{"success":true}', res.body)
         assert.matches("application/json", res.headers["content-type"], 1, true)
         local line = srv:wait_log("event=ONCRMCONTACTADD", from)
         assert.truthy(line)
         assert.matches("id=134806", line, 1, true)
         assert.matches("bitrix24-php-sdk-playground.bitrix24.com", line, 1, true)
         -- the same delivery again is a duplicate, its handlers not run twice
         res = post(srv, CONTACT)
         assert.equal(200, res.status)
         assert.equal('{"success":true,"duplicate":true}', res.body)
      end)

      it("answers a real JSON body with a wrong token 401 with the reason, and runs no handler", function()
         local from = #srv.lines + 1
         local res = post(srv, DEAL, { ["Content-Type"] = "application/json" })
         assert.equal(401, res.status)
         assert.same({ error = "wrong application token" }, cjson.decode(res.body))
         assert.not_matches(TOKEN, res.body, 1, true)
         -- a later accepted delivery's handler has run: the 401's would have run before it
         assert.equal(200, post(srv, event_body("ONCRMCONTACTADD", "134900")).status)
         assert.truthy(srv:wait_log("id=134900", from))
         assert.is_false(srv:logged("ONCRMDEALADD", from))
         assert.is_false(srv:logged(TOKEN, 1))
      end)

      it("answers 405 to a GET and 415 to a body of another type", function()
         local res = assert(srv:request{ method = "GET", path = "/bitrix24/events" })
         assert.equal(405, res.status)
         assert.equal("POST", res.headers["allow"])
         res = post(srv, CONTACT, { ["Content-Type"] = "text/plain" })
         assert.equal(415, res.status)
      end)

      it("reads a body nginx spilled to a file, and handles the event", function()
         local from = #srv.lines + 1
         -- 200 KB: far over client_body_buffer_size, so nginx keeps it in a temporary file
         local body = event_body("ONCRMCONTACTADD", "134901") .. "&data%5BFIELDS%5D%5BPAD%5D=" .. ("x"):rep(200000)
         local res = post(srv, body)
         assert.equal(200, res.status)
         assert.equal('{"success":true}', res.body)
         assert.truthy(srv:wait_log("id=134901", from))
         assert.truthy(srv:wait_log("buffered to a temporary file", from))
      end)

      it("answers 413 to a body over max_body, declared or chunked into a file, and runs no handler", function()
         local from = #srv.lines + 1
         local big = event_body("ONCRMCONTACTADD", "134902") .. "&pad=" .. ("y"):rep(1100000)
         local res = post(srv, big)
         assert.equal(413, res.status)
         assert.same({ error = "request body too large" }, cjson.decode(res.body))
         -- no Content-Length: nginx reads the whole body into a file, the router reads it back
         local status, raw = post_chunked(srv.port, "/bitrix24/events", event_body("ONCRMCONTACTADD", "134903")
            .. "&pad=" .. ("z"):rep(1100000))
         assert.equal(413, status)
         assert.matches('{"error":"request body too large"}', raw, 1, true)
         -- the same chunked way under the limit is accepted
         status = post_chunked(srv.port, "/bitrix24/events", event_body("ONCRMCONTACTADD", "134904")
            .. "&pad=" .. ("z"):rep(100000))
         assert.equal(200, status)
         assert.truthy(srv:wait_log("id=134904", from))
         assert.is_false(srv:logged("id=134902", from))
         assert.is_false(srv:logged("id=134903", from))
      end)
   end)

   describe("handlers running", function()
      it("answers 503 while max_running handlers run, and 200 again once they are done", function()
         local from = #srv.lines + 1
         local res = assert(srv:request{ method = "POST", path = "/t/limited", headers = FORM,
                                                         body = event_body("ONCRMCONTACTADD", "135001") })
         assert.equal(200, res.status)
         assert.truthy(srv:wait_log('msg="limited started" id=135001', from))
         res = assert(srv:request{ method = "POST", path = "/t/limited", headers = FORM,
                                                body = event_body("ONCRMCONTACTADD", "135002") })
         assert.equal(503, res.status)
         assert.same({ error = "too many handlers running" }, cjson.decode(res.body))
         assert.equal("released\n", assert(srv:request{ method = "GET", path = "/t/release" }).body)
         assert.truthy(srv:wait_log('msg="limited done" id=135001', from))
         -- the refused delivery was not remembered: sent again, it runs
         res = assert(srv:request{ method = "POST", path = "/t/limited", headers = FORM,
                                                body = event_body("ONCRMCONTACTADD", "135002") })
         assert.equal('{"success":true}', res.body)
         assert.truthy(srv:wait_log('msg="limited done" id=135002', from))
      end)
   end)

   describe("a REST call from a handler", function()
      it("fetches the lead through the client, and the worker answers others meanwhile", function()
         local from = #srv.lines + 1
         local res = post(srv, event_body("ONCRMLEADADD", "2"))
         assert.equal(200, res.status) -- at once: the handler runs after the answer
         assert.equal('{"success":true}', res.body)
         assert.truthy(srv:wait_log('msg="fetching lead" id=2', from))
         -- the emulator holds crm.lead.get for 2 s; nginx's one worker answers this meanwhile
         res = post(srv, DEAL, { ["Content-Type"] = "application/json" })
         assert.equal(401, res.status)
         assert.is_false(srv:logged("lead fetched", from))
         local line = assert(srv:wait_log("lead fetched", from))
         assert.matches('id=2 title="Lead #2"', line, 1, true)
         assert.not_matches(CODE, srv:log(from), 1, true)
      end)
   end)

   describe("bitrix24.transport.ngx", function()
      it("calls the emulator from nginx on a worker thread: request, request_many, now, sleep", function()
         local url = webhook(emu) .. "crm.lead.get.json"
         local res = assert(srv:request{ method = "GET",
            path = "/t/transport?url=" .. core.form_encode({ x = url }):sub(3)
               .. "&body=" .. core.form_encode({ x = '{"id":1}' }):sub(3) })
         assert.equal(200, res.status, res.body)
         local out = cjson.decode(res.body)
         assert.equal("thread", out.backend)
         assert.equal(200, out.status)
         assert.matches("application/json", out.content_type, 1, true)
         assert.equal("1", cjson.decode(out.body).result.ID)
         assert.equal(3, #out.many)
         assert.equal(200, out.many[1].status)
         assert.equal("2", cjson.decode(out.many[1].body).result.ID)
         assert.is_nil(out.many[2].status)
         assert.equal("connect", out.many[2].kind)
         assert.is_false(out.many[2].sent)
         assert.is_string(out.many[2].error)
         assert.equal("3", cjson.decode(out.many[3].body).result.ID)
         assert.is_true(out.slept)
      end)

      it("says what to configure when the thread pool is missing", function()
         local res = assert(srv:request{ method = "GET", path = "/t/nopool" })
         assert.equal(200, res.status)
         assert.matches("^false ", res.body)
         assert.matches("thread pool nosuchpool not found", res.body, 1, true)
         assert.matches("thread_pool nosuchpool threads=", res.body, 1, true)
         assert.matches("lua-resty-http", res.body, 1, true)
      end)

      it("does not block the worker while a call is pending", function()
         local from = #srv.lines + 1
         local url = webhook(slow) .. "crm.lead.get.json"
         -- the slow call in a request of its own, on another connection
         local c = assert(socket.connect("127.0.0.1", srv.port))
         c:settimeout(30)
         assert(c:send("GET /t/transport?tag=slow1&url=" .. core.form_encode({ x = url }):sub(3)
            .. " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
         assert.truthy(srv:wait_log("transport call slow1", from))
         -- nginx has one worker: it answers this while the call above waits for the emulator
         local res = assert(srv:request{ method = "GET", path = "/t/ping" })
         assert.equal("pong\n", res.body)
         assert.is_false(srv:logged("transport done slow1", from))
         local all = c:receive("*a")
         c:close()
         assert.matches("^HTTP/1%.1 200", all)
         assert.truthy(srv:wait_log("transport done slow1", from))
      end)
   end)
end)

describe("OpenResty with lua_shared_dict: one dedup store for every worker", function()
   local srv
   setup(function()
      srv = start_nginx{
         env = "B24_APP_TOKEN=" .. TOKEN,
         transform = function(conf)
            conf = conf:gsub("worker_processes 1;", "worker_processes 4;", 1)
            -- each worker its own socket: the kernel spreads connections by their ports
            conf = conf:gsub("(listen 127%.0%.0%.1:%d+);", "%1 reuseport;", 1)
            local dicts = "  lua_shared_dict b24_dedup 1m;\n  lua_shared_dict spec 64k;\n"
            return (conf:gsub("\nhttp {\n", "\nhttp {\n" .. dicts, 1))
         end,
         extra = [[
    location = /t/shared {
      content_by_lua_block {
        local router = package.loaded.spec_shared_router
        if not router then
          router = require("bitrix24").router{ token = os.getenv("B24_APP_TOKEN"), shared_dict = "b24_dedup" }
          router:on("*", function() ngx.shared.spec:incr("runs", 1, 0) end)
          package.loaded.spec_shared_router = router
        end
        ngx.header["X-Worker"] = ngx.worker.pid()
        router:handle_ngx()
      }
    }
    location = /t/runs {
      content_by_lua_block { ngx.say(ngx.shared.spec:get("runs") or 0) }
    }
]],
      }
   end)
   teardown(function() srv:stop() end)

   it("answers a repeat of an add as a duplicate whichever worker takes it", function()
      -- one ADD delivered again and again, each on a new connection, until two workers at
      -- least have answered it (bounded): only the first runs its handler
      local function post_closing() -- a connection of its own each time (the session keeps one)
         local c = assert(socket.connect("127.0.0.1", srv.port))
         c:settimeout(30)
         assert(c:send("POST /t/shared HTTP/1.0\r\nHost: 127.0.0.1\r\n" -- 1.0: no chunks, then closed
            .. "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: " .. #CONTACT
            .. "\r\n\r\n" .. CONTACT))
         local text = assert(c:receive("*a"))
         c:close()
         return { status = tonumber(text:match("^HTTP/1%.%d (%d+)")), pid = text:match("\r\n[Xx]%-[Ww]orker: (%d+)"),
                  body = text:match("\r\n\r\n(.*)$") }
      end
      local workers, n, answers = {}, 0, {}
      for i = 1, 200 do
         local res = post_closing()
         assert.equal(200, res.status)
         answers[#answers + 1] = res.body
         local pid = res.pid
         if pid and not workers[pid] then workers[pid], n = true, n + 1 end
         if n >= 2 and i >= 4 then break end
      end
      assert.is_true(n >= 2, "one worker took every request")
      assert.equal('{"success":true}', answers[1])
      for i = 2, #answers do
         assert.equal('{"success":true,"duplicate":true}', answers[i], "answer " .. i)
      end
      local runs
      for _ = 1, 200 do -- the first delivery's timer runs after its answer
         runs = assert(srv:request{ path = "/t/runs" }).body
         if runs == "1\n" then break end
         socket.select(nil, nil, 0.05)
      end
      assert.equal("1\n", runs)
   end)
end)
