-- b24 serve's limits and start-up messages (issue 12 item 5): --max-body sizes that overflow or
-- that the SQLite inbox cannot hold are refused at start-up; a script that returns nothing is
-- told what to return; slow clients by the thousand do not take the server (--max-connections,
-- --max-per-ip).
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
         assert.matches("--max-body 1000000000 is over what the inbox stores", out, 1, true)
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

   describe("slow clients", function()
      local socket = require "socket"

      -- n loopback connections to port that each send a request line and one header, then stall
      local function slow_clients(port, n)
         local socks = {}
         for i = 1, n do
            local c = assert(socket.tcp())
            c:settimeout(10)
            local ok, err = c:connect("127.0.0.1", port)
            assert(ok, ("slow client %d: %s"):format(i, tostring(err)))
            assert(c:send("GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n"))
            socks[#socks + 1] = c
         end
         return socks
      end

      local function close_all(socks)
         for _, c in ipairs(socks) do c:close() end
      end

      it("/healthz answers while 1,100 slow connections are open, with the default limits", function()
         local srv = b24.start{ script = "return function() return 200, {}, 'ok' end\n" }
         local socks = {}
         finally(function() close_all(socks); srv:stop() end)
         socks = slow_clients(srv.port, 1100)
         local res = assert(srv:request{ path = "/healthz" })
         assert.equal(200, res.status)
         -- and a burst of 256 requests from this one address is served alongside them
         local burst = {}
         for i = 1, 256 do
            local c = assert(socket.tcp())
            c:settimeout(30)
            assert(c:connect("127.0.0.1", srv.port))
            assert(c:send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
            burst[i] = c
         end
         for i = 1, 256 do
            local line = burst[i]:receive("*l")
            burst[i]:close()
            assert.equal("HTTP/1.1 200 OK", line, "burst request " .. i)
         end
      end)

      it("a client that trickles its headers is cut after --client-timeout, though never idle", function()
         local srv = b24.start{ script = "return function() return 200, {}, 'ok' end\n",
                                args = { "--workers", "1", "--client-timeout", "1" } }
         local c = assert(socket.tcp())
         finally(function() c:close(); srv:stop() end)
         c:settimeout(10)
         assert(c:connect("127.0.0.1", srv.port))
         assert(c:send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"))
         local cut
         for i = 1, 480 do -- bounded watchdog: 480 header lines, one each time the socket stays quiet 0.25 s
            local readable = socket.select({ c }, nil, 0.25)
            if #readable > 0 then
               local data, err = c:receive(1)
               if not data then cut = err break end
            end
            local ok, err = c:send(("X-Trickle-%d: x\r\n"):format(i))
            if not ok then cut = err break end
         end
         assert.is_truthy(cut, "the trickling connection was never cut")
         assert.equal(200, assert(srv:request{ path = "/healthz" }).status)
      end)

      it("a client that trickles its body is cut too: --client-timeout plus a second a KiB", function()
         local srv = b24.start{ script = "return function() return 200, {}, 'ok' end\n",
                                args = { "--workers", "1", "--client-timeout", "1", "--log-level", "debug" } }
         local c, d = assert(socket.tcp()), assert(socket.tcp())
         finally(function() c:close(); d:close(); srv:stop() end) -- one finally: a second replaces it
         c:settimeout(10)
         assert(c:connect("127.0.0.1", srv.port))
         assert(c:send("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
            .. "Content-Length: 100000\r\n\r\n"))
         local cut
         for _ = 1, 480 do -- bounded watchdog: 480 bytes, one each time the socket stays quiet 0.25 s
            local readable = socket.select({ c }, nil, 0.25)
            if #readable > 0 then
               local data, err = c:receive(1)
               if not data then cut = err break end
            end
            local ok, err = c:send("x")
            if not ok then cut = err break end
         end
         assert.is_truthy(cut, "the trickling body was never cut")
         assert(srv:wait_log("connection cut: its body came too slowly"))
         -- a body that keeps a fair pace is read whole, however long it takes past the timeout
         d:settimeout(10)
         assert(d:connect("127.0.0.1", srv.port))
         local chunk = ("y"):rep(2048)
         assert(d:send("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
            .. "Connection: close\r\nContent-Length: " .. 8 * #chunk .. "\r\n\r\n"))
         for _ = 1, 8 do
            socket.select(nil, nil, 0.3) -- 2 KiB every 0.3 s: 2.4 s in all, past --client-timeout 1
            assert(d:send(chunk))
         end
         assert.equal("HTTP/1.1 200 OK", d:receive("*l"))
      end)

      it("--max-per-ip refuses connections from an address over its limit, until one closes", function()
         local srv = b24.start{ script = "return function() return 200, {}, 'ok' end\n",
                                args = { "--workers", "1", "--max-per-ip", "5" } }
         local socks = {}
         finally(function() close_all(socks); srv:stop() end)
         socks = slow_clients(srv.port, 5)
         -- the sixth connection from 127.0.0.1 is accepted and closed without an answer
         local c = assert(socket.tcp())
         c:settimeout(30)
         assert(c:connect("127.0.0.1", srv.port))
         c:send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
         local line, err = c:receive("*l")
         c:close()
         assert.is_nil(line)
         assert.is_truthy(err == "closed" or err:match("reset"), err)
         socks[1]:close()
         table.remove(socks, 1)
         local res
         for _ = 1, 200 do -- bounded: the server sees the close and frees the slot
            res = srv:request{ path = "/healthz" }
            if res and res.status == 200 then break end
         end
         assert.equal(200, res and res.status)
      end)

      it("refuses a bad --max-connections or --max-per-ip with exit 2", function()
         for _, args in ipairs{ "--max-connections 0", "--max-connections lots", "--max-per-ip -1" } do
            local out, code = serve(args .. " x.lua")
            assert.equal(2, code, args)
            assert.matches(args:match("^%S+"), out, 1, true)
         end
      end)
   end)
end)
