-- bitrix24.core.http against a real HTTP/1.1 server in its own process (spec/helpers/httpd.lua):
-- plain and TLS listeners on loopback, started once for the file and killed in lazy_teardown.
local core = require "bitrix24.core"
local cjson = require("cjson.safe").new()
local socket = require "socket"
local httpd = require "helpers.httpd"

local byte, char, format = string.byte, string.char, string.format

local function hex(s)
   return (s:gsub(".", function(c)
      return format("%02x", byte(c))
   end))
end

local function decode(res)
   assert.is_table(res)
   local t = cjson.decode(res.body)
   assert.is_table(t, "not JSON: " .. tostring(res.body))
   return t
end

-- A loopback port with nothing listening on it.
local function closed_port()
   local s = assert(socket.bind("127.0.0.1", 0))
   local _, port = s:getsockname()
   s:close()
   return port
end

-- Runs a small Lua script in a child interpreter of the same kind as ours, with `env` prefixed to
-- its command line (environment variables cannot be set from Lua). Returns its stdout.
local function run_child(env, script)
   local name = os.tmpname()
   local f = assert(io.open(name, "w"))
   f:write("package.cpath = ", format("%q", package.cpath), " .. ';' .. package.cpath\n", script)
   f:close()
   local interpreter = jit and "luajit" or "lua5.4"
   local p = assert(io.popen(env .. " " .. interpreter .. " " .. name .. " 2>&1", "r"))
   local out = p:read("*a")
   p:close()
   os.remove(name)
   return out
end

describe("bitrix24.core.http", function()
   local plain, tls, certs

   lazy_setup(function()
      plain = httpd.start { tls = false }
      certs = httpd.make_certs()
      tls = httpd.start { tls = true, certs = certs }
   end)

   lazy_teardown(function()
      if plain then plain.stop() end
      if tls then tls.stop() end
      if certs then certs.remove() end
   end)

   describe("requests", function()
      local http

      before_each(function()
         http = core.http()
      end)

      after_each(function()
         http:close()
      end)

      it("sends a GET with its query and returns status, headers, body, version", function()
         local res = assert(http:request { url = plain.url .. "/echo/a?x=1&y=%20z" })
         assert.equal(200, res.status)
         assert.equal("1.1", res.http_version)
         assert.equal("application/json", res.headers["content-type"])
         assert.is_boolean(res.reused)
         local echo = decode(res)
         assert.equal("GET", echo.method)
         assert.equal("/echo/a", echo.path)
         assert.equal("x=1&y=%20z", echo.query)
         assert.equal(0, echo.body_length)
      end)

      for _, method in ipairs { "POST", "PUT", "PATCH", "DELETE" } do
         it("sends " .. method .. " with a text body", function()
            local body = method .. " body: {\"a\":1}&b=2"
            local res = assert(http:request { url = plain.url .. "/echo", method = method, body = body })
            assert.equal(200, res.status)
            local echo = decode(res)
            assert.equal(method, echo.method)
            assert.equal(body, echo.body)
            assert.equal(tostring(#body), echo.headers["content-length"])
         end)

         it("sends " .. method .. " with an empty body", function()
            local res = assert(http:request { url = plain.url .. "/echo", method = method, body = "" })
            local echo = decode(res)
            assert.equal(method, echo.method)
            assert.equal(0, echo.body_length)
         end)
      end

      it("sends a binary body with every byte value intact", function()
         local bytes = {}
         for i = 0, 255 do
            bytes[#bytes + 1] = char(i)
         end
         local body = table.concat(bytes) .. "\0\r\n\0"
         local res = assert(http:request { url = plain.url .. "/echo", method = "POST", body = body })
         local echo = decode(res)
         assert.equal(#body, echo.body_length)
         assert.equal(hex(body), echo.body_hex)
      end)

      it("sends a 1 MiB body", function()
         local body = ("0123456789abcdef"):rep(65536)
         local res = assert(http:request { url = plain.url .. "/echo", method = "PUT", body = body })
         local echo = decode(res)
         assert.equal(#body, echo.body_length)
         assert.equal(body, echo.body)
      end)

      it("sends a POST without a body field as an empty POST", function()
         local echo = decode(http:request { url = plain.url .. "/echo", method = "POST" })
         assert.equal("POST", echo.method)
         assert.equal("0", echo.headers["content-length"])
      end)

      it("sends a DELETE without a body field with no body", function()
         local echo = decode(http:request { url = plain.url .. "/echo", method = "DELETE" })
         assert.equal("DELETE", echo.method)
         assert.equal(0, echo.body_length)
      end)

      it("sends a HEAD and returns the headers with an empty body", function()
         local res = assert(http:request { url = plain.url .. "/bytes/100", method = "HEAD" })
         assert.equal(200, res.status)
         assert.equal("100", res.headers["content-length"])
         assert.equal("", res.body)
         -- the next request on the session is a full GET again
         res = assert(http:request { url = plain.url .. "/bytes/100" })
         assert.equal(100, #res.body)
      end)

      it("sends other upper-case methods as given", function()
         local echo = decode(http:request { url = plain.url .. "/echo", method = "OPTIONS" })
         assert.equal("OPTIONS", echo.method)
      end)

      it("delivers request headers, numbers as text and empty values included", function()
         local res = assert(http:request {
            url = plain.url .. "/echo",
            method = "POST",
            body = "{}",
            headers = {
               ["X-Test"] = "hello world",
               ["Content-Type"] = "application/json",
               ["X-Number"] = 42,
               ["X-Empty"] = "",
               Accept = "application/json",
            },
         })
         local h = decode(res).headers
         assert.equal("hello world", h["x-test"])
         assert.equal("application/json", h["content-type"])
         assert.equal("42", h["x-number"])
         assert.equal("", h["x-empty"])
         assert.equal("application/json", h["accept"])
         assert.is_nil(h["expect"])
      end)

      it("sends a default user agent that starts with bitrix24-lua/", function()
         local h = decode(http:request { url = plain.url .. "/echo" }).headers
         assert.matches("^bitrix24%-lua/", h["user-agent"])
      end)

      it("sends the user_agent option when given", function()
         local s = core.http { user_agent = "my-app/1.0" }
         local h = decode(s:request { url = plain.url .. "/echo" }).headers
         s:close()
         assert.equal("my-app/1.0", h["user-agent"])
      end)

      it("returns response header names in lower case", function()
         local res = assert(http:request { url = plain.url .. "/status/200" })
         assert.equal("yes", res.headers["x-custom"])
         assert.equal("Value Kept", res.headers["x-mixed-case"])
         assert.is_nil(res.headers["X-Custom"])
         assert.is_nil(res.headers["X-MiXeD-CaSe"])
      end)

      it("joins repeated response headers with ', '", function()
         local res = assert(http:request { url = plain.url .. "/status/200" })
         assert.equal("one, two", res.headers["x-multi"])
         assert.equal("a=1; Path=/, b=2; Path=/", res.headers["set-cookie"])
      end)

      for _, code in ipairs { 200, 404, 503 } do
         it("returns status " .. code .. " as a response, not an error", function()
            local res, err = http:request { url = plain.url .. "/status/" .. code }
            assert.is_nil(err)
            assert.equal(code, res.status)
            assert.equal("status " .. code, res.body)
            assert.equal("yes", res.headers["x-custom"])
         end)
      end

      it("returns 404 for a missing page", function()
         local res = assert(http:request { url = plain.url .. "/no/such/page" })
         assert.equal(404, res.status)
      end)

      it("reads a chunked response", function()
         local res = assert(http:request { url = plain.url .. "/chunked?n=20" })
         assert.equal(200, res.status)
         assert.equal("chunked", res.headers["transfer-encoding"])
         local want = {}
         for i = 1, 20 do
            want[i] = "chunk" .. i .. ";"
         end
         assert.equal(table.concat(want), res.body)
      end)

      it("reads a Content-Length response of 3 MB", function()
         local res = assert(http:request { url = plain.url .. "/bytes/3000000" })
         assert.equal(3000000, #res.body)
         assert.equal("3000000", res.headers["content-length"])
         assert.equal("0123456789abcdef", res.body:sub(1, 16))
      end)

      it("reads a chunked response of 3 MB", function()
         local res = assert(http:request { url = plain.url .. "/bytes/3000000?chunked=1" })
         assert.equal(3000000, #res.body)
         assert.equal("chunked", res.headers["transfer-encoding"])
      end)

      it("asks for and decodes gzip by default", function()
         local res = assert(http:request { url = plain.url .. "/gzip" })
         assert.equal("gzip", res.headers["content-encoding"])
         assert.equal("compressed hello from the test server\n", res.body)
      end)

      it("does not ask for compression with compressed = false", function()
         local s = core.http { compressed = false }
         local echo = decode(s:request { url = plain.url .. "/echo" })
         local res = assert(s:request { url = plain.url .. "/gzip" })
         s:close()
         assert.is_nil(echo.headers["accept-encoding"])
         assert.is_nil(res.headers["content-encoding"])
         assert.equal("compressed hello from the test server\n", res.body)
      end)

      it("speaks HTTP/1.1 with http2 = false", function()
         local s = core.http { http2 = false }
         local res = assert(s:request { url = plain.url .. "/echo" })
         s:close()
         assert.equal("1.1", res.http_version)
         assert.equal("HTTP/1.1", decode(res).version)
      end)
   end)

   describe("keep-alive", function()
      it("sends 50 requests over one connection, reused after the first", function()
         local http = core.http()
         local before = decode(http:request { url = plain.url .. "/stats" })
         local ids = {}
         for i = 1, 50 do
            local res = assert(http:request {
               url = plain.url .. "/echo?i=" .. i,
               method = i % 2 == 0 and "POST" or "GET",
               body = i % 2 == 0 and ("body " .. i) or nil,
            })
            assert.is_true(res.reused)
            ids[decode(res).connection] = true
         end
         local after = decode(http:request { url = plain.url .. "/stats" })
         http:close()
         assert.equal(before.connections, after.connections)
         assert.equal(before.requests + 51, after.requests)
         local count = 0
         for _ in pairs(ids) do
            count = count + 1
         end
         assert.equal(1, count)
      end)

      it("gives a request with fresh = true a connection of its own, closed after it", function()
         local http = core.http()
         finally(function() http:close() end)
         local before = decode(http:request { url = plain.url .. "/stats" })
         local a = assert(http:request { url = plain.url .. "/echo", fresh = true, method = "POST", body = "1" })
         local b = assert(http:request { url = plain.url .. "/echo", fresh = true, method = "POST", body = "2" })
         assert.is_false(a.reused)
         assert.is_false(b.reused)
         local many = http:request_many { { url = plain.url .. "/echo", fresh = true },
                                          { url = plain.url .. "/echo", fresh = true } }
         assert.is_false(many[1].reused)
         assert.is_false(many[2].reused)
         local after = decode(http:request { url = plain.url .. "/stats" })
         assert.equal(4, after.connections - before.connections) -- the last /stats reuses the first one
         assert.has_error(function() http:request { url = plain.url, fresh = 1 } end)
      end)

      it("reports reused = false for the first request of a session", function()
         local http = core.http()
         local first = assert(http:request { url = plain.url .. "/echo" })
         local second = assert(http:request { url = plain.url .. "/echo" })
         http:close()
         assert.is_false(first.reused)
         assert.is_true(second.reused)
         assert.equal(decode(first).connection, decode(second).connection)
      end)

      it("opens a new connection after the server closed the last one", function()
         local http = core.http()
         local first = decode(http:request { url = plain.url .. "/echo" })
         local bye = assert(http:request { url = plain.url .. "/close" })
         assert.equal("close", bye.headers["connection"])
         local res = assert(http:request { url = plain.url .. "/echo" })
         http:close()
         assert.is_false(res.reused)
         assert.are_not.equal(first.connection, decode(res).connection)
      end)

      it("keeps the connection across TLS requests", function()
         local http = core.http { ca_file = tls.ca_file }
         local ids, reused = {}, 0
         for _ = 1, 10 do
            local res = assert(http:request { url = tls.url .. "/echo" })
            ids[decode(res).connection] = true
            if res.reused then
               reused = reused + 1
            end
         end
         http:close()
         local count = 0
         for _ in pairs(ids) do
            count = count + 1
         end
         assert.equal(1, count)
         assert.equal(9, reused)
      end)
   end)

   describe("request_many", function()
      it("runs the requests at once and returns the answers in order", function()
         local http = core.http { timeout = 20 }
         finally(function() http:close() end)
         local reqs = {}
         for i = 1, 8 do
            reqs[i] = { url = plain.url .. "/barrier?n=8&key=many1&i=" .. i, method = "POST", body = "b" .. i }
         end
         local out = http:request_many(reqs)
         assert.equal(8, #out)
         for i = 1, 8 do
            assert.equal(200, out[i].status, tostring(out[i].error))
            local got = decode(out[i])
            assert.equal(8, got.arrived) -- no answer before all eight had arrived
            assert.equal("n=8&key=many1&i=" .. i, got.query)
            assert.equal("b" .. i, got.body)
         end
      end)

      it("keeps its connections alive from one call to the next", function()
         local http = core.http()
         finally(function() http:close() end)
         local before = decode(http:request { url = plain.url .. "/stats" })
         local reqs = {}
         for i = 1, 4 do reqs[i] = { url = plain.url .. "/barrier?n=4&key=alive1" } end
         for _, r in ipairs(http:request_many(reqs)) do assert.equal(200, r.status) end
         for i = 1, 4 do reqs[i] = { url = plain.url .. "/barrier?n=4&key=alive2" } end
         local second = http:request_many(reqs)
         local after = decode(http:request { url = plain.url .. "/stats" })
         for _, r in ipairs(second) do assert.is_true(r.reused) end
         assert.equal(4, after.connections - before.connections)
      end)

      it("reports a failure in its own slot with kind and sent, the others answered", function()
         local http = core.http { timeout = 10 }
         finally(function() http:close() end)
         local out = http:request_many {
            { url = plain.url .. "/echo?a=1" },
            { url = "http://127.0.0.1:" .. closed_port() .. "/x" },
            { url = plain.url .. "/hangup" },
            { url = tls.url .. "/echo" }, -- self-signed: refused
         }
         assert.equal(200, out[1].status)
         assert.is_nil(out[2].status)
         assert.equal("connect", out[2].kind)
         assert.is_false(out[2].sent)
         assert.equal("recv", out[3].kind)
         assert.is_true(out[3].sent)
         assert.equal("tls", out[4].kind)
         assert.is_string(out[4].error)
      end)

      it("is split into calls of 64 by the client's default transport, answers in order", function()
         local transport = require("bitrix24.client").http_transport { timeout = 20 }
         finally(function() transport:close() end)
         local reqs = {}
         for i = 1, 150 do reqs[i] = { url = plain.url .. "/echo?i=" .. i, fresh = i % 50 == 0 } end
         local out = transport:request_many(reqs)
         assert.equal(150, #out)
         for i = 1, 150 do
            assert.equal(200, out[i].status, tostring(out[i].error))
            assert.equal("i=" .. i, decode(out[i]).query)
         end
      end)

      it("returns an empty list for no requests and refuses misuse", function()
         local http = core.http()
         finally(function() http:close() end)
         assert.same({}, http:request_many {})
         assert.has_error(function() http:request_many { "x" } end)
         assert.has_error(function() http:request_many { { url = 1 } } end)
         local many = {}
         for i = 1, 65 do many[i] = { url = plain.url } end
         assert.has_error(function() http:request_many(many) end)
         assert.has_error(function() http:request_many() end)
      end)
   end)

   describe("failures", function()
      it("returns kind 'connect' with connected = false when the port is closed", function()
         local http = core.http()
         local res, msg, kind, connected = http:request { url = "http://127.0.0.1:" .. closed_port() .. "/" }
         http:close()
         assert.is_nil(res)
         assert.is_string(msg)
         assert.equal("connect", kind)
         assert.is_false(connected)
      end)

      it("returns kind 'timeout' with connected = true from a server that never answers", function()
         local http = core.http()
         local res, msg, kind, connected = http:request { url = plain.url .. "/stall", timeout = 0.5 }
         assert.is_nil(res)
         assert.is_string(msg)
         assert.equal("timeout", kind)
         assert.is_true(connected)
         -- the session is still usable afterwards
         local ok = assert(http:request { url = plain.url .. "/echo" })
         http:close()
         assert.equal(200, ok.status)
      end)

      it("applies the session's timeout option", function()
         local http = core.http { timeout = 0.5 }
         local res, _, kind = http:request { url = plain.url .. "/stall" }
         http:close()
         assert.is_nil(res)
         assert.equal("timeout", kind)
      end)

      it("reports connected = true for a timeout on a reused connection (the request was sent)", function()
         local http = core.http()
         assert(http:request { url = plain.url .. "/echo" })
         local res, _, kind, connected = http:request { url = plain.url .. "/stall", timeout = 0.5 }
         http:close()
         assert.is_nil(res)
         assert.equal("timeout", kind)
         assert.is_true(connected)
      end)

      it("returns kind 'dns' with connected = false for a name that does not resolve", function()
         local http = core.http()
         local res, msg, kind, connected = http:request { url = "http://no-such-host.invalid/" }
         http:close()
         assert.is_nil(res)
         assert.is_string(msg)
         assert.equal("dns", kind)
         assert.is_false(connected)
      end)

      for _, url in ipairs { "not a url", "http://", "foo://example.com/", "http://[::1/" } do
         it("returns kind 'request' for the URL " .. format("%q", url), function()
            local http = core.http()
            local res, msg, kind, connected = http:request { url = url }
            http:close()
            assert.is_nil(res)
            assert.is_string(msg)
            assert.equal("request", kind)
            assert.is_false(connected)
         end)
      end

      it("returns kind 'recv' when the server hangs up without answering", function()
         local http = core.http()
         local res, msg, kind, connected = http:request { url = plain.url .. "/hangup" }
         http:close()
         assert.is_nil(res)
         assert.is_string(msg)
         assert.equal("recv", kind)
         assert.is_true(connected)
      end)

      it("returns kind 'recv' for a body cut short", function()
         local http = core.http()
         local res, msg, kind = http:request { url = plain.url .. "/truncate" }
         http:close()
         assert.is_nil(res)
         assert.is_string(msg)
         assert.equal("recv", kind)
      end)

      it("returns kind 'too_large' for a Content-Length response over max_response", function()
         local http = core.http { max_response = 1000 }
         local res, msg, kind = http:request { url = plain.url .. "/bytes/5000" }
         assert.is_nil(res)
         assert.is_string(msg)
         assert.equal("too_large", kind)
         -- exactly the limit is fine, and the session still works
         res = assert(http:request { url = plain.url .. "/bytes/1000" })
         http:close()
         assert.equal(1000, #res.body)
      end)

      it("returns kind 'too_large' for a chunked response over max_response", function()
         local http = core.http { max_response = 1000 }
         local res, msg, kind = http:request { url = plain.url .. "/bytes/50000?chunked=1" }
         assert.is_nil(res)
         assert.matches("1000", msg, 1, true)
         assert.equal("too_large", kind)
         res = assert(http:request { url = plain.url .. "/bytes/1000?chunked=1" })
         http:close()
         assert.equal(1000, #res.body)
      end)
   end)

   describe("TLS", function()
      it("verifies the server with ca_file", function()
         local http = core.http { ca_file = tls.ca_file }
         local res = assert(http:request { url = tls.url .. "/echo", method = "POST", body = "secret" })
         local by_name = assert(http:request { url = "https://localhost:" .. tls.port .. "/status/200" })
         http:close()
         assert.equal(200, res.status)
         assert.equal("secret", decode(res).body)
         assert.equal(200, by_name.status)
      end)

      it("returns kind 'tls' when the server's CA is not trusted", function()
         local http = core.http()
         local res, msg, kind = http:request { url = tls.url .. "/echo" }
         http:close()
         assert.is_nil(res)
         assert.is_string(msg)
         assert.equal("tls", kind)
      end)

      it("returns kind 'tls' when the server does not speak TLS", function()
         local http = core.http { ca_file = tls.ca_file, timeout = 5 }
         local res, _, kind = http:request { url = "https://127.0.0.1:" .. plain.port .. "/echo" }
         http:close()
         assert.is_nil(res)
         assert.equal("tls", kind)
      end)

      it("accepts the untrusted server with verify = false", function()
         local http = core.http { verify = false }
         local res = assert(http:request { url = tls.url .. "/echo" })
         http:close()
         assert.equal(200, res.status)
      end)
   end)

   describe("redirects", function()
      it("are not followed by default: the 302 and its location are returned", function()
         local http = core.http()
         local res = assert(http:request { url = plain.url .. "/redirect/2" })
         http:close()
         assert.equal(302, res.status)
         assert.equal("/redirect/1", res.headers.location)
         assert.equal("redirecting", res.body)
      end)

      it("are followed with follow_redirects = true, returning the final page only", function()
         local http = core.http { follow_redirects = true }
         local res = assert(http:request { url = plain.url .. "/redirect/3" })
         http:close()
         assert.equal(200, res.status)
         assert.equal("final", res.body)
         assert.is_nil(res.headers.location)
      end)

      it("stop after max_redirects with kind 'request'", function()
         local http = core.http { follow_redirects = true, max_redirects = 2 }
         local res, msg, kind = http:request { url = plain.url .. "/loop" }
         local ok = assert(http:request { url = plain.url .. "/redirect/2" })
         http:close()
         assert.is_nil(res)
         assert.is_string(msg)
         assert.equal("request", kind)
         assert.equal("final", ok.body)
      end)
   end)

   describe("proxies", function()
      it("sends the absolute URI to the proxy option", function()
         local http = core.http { proxy = plain.url }
         local res = assert(http:request { url = "http://origin.invalid/echo?via=option" })
         http:close()
         local echo = decode(res)
         assert.is_true(echo.proxied)
         assert.equal("http://origin.invalid/echo?via=option", echo.target)
         assert.equal("origin.invalid", echo.headers.host)
      end)

      local clean_env = "env -u HTTPS_PROXY -u https_proxy -u ALL_PROXY -u all_proxy -u NO_PROXY -u no_proxy"
      local script = [[
      local core = require "bitrix24.core"
      local http = core.http(PROXY_OPTION)
      local res, msg, kind = http:request { url = "http://origin.invalid/echo?via=env" }
      io.write(res and ("status " .. res.status .. "\n" .. res.body) or ("kind " .. kind .. "\n" .. msg))
    ]]

      it("takes http_proxy from the environment", function()
         local out = run_child(clean_env .. " http_proxy=" .. plain.url, script:gsub("PROXY_OPTION", "nil"))
         assert.matches("^status 200\n", out)
         local echo = cjson.decode(out:match("\n(.*)$"))
         assert.is_table(echo, out)
         assert.is_true(echo.proxied)
         assert.equal("http://origin.invalid/echo?via=env", echo.target)
      end)

      it("ignores the environment with proxy = ''", function()
         local out = run_child(clean_env .. " http_proxy=" .. plain.url,
            script:gsub("PROXY_OPTION", "{ proxy = '' }"))
         assert.matches("^kind dns\n", out) -- went straight to origin.invalid, which does not resolve
      end)
   end)

   describe("misuse", function()
      it("raises for unknown options and options of the wrong type", function()
         local bad = {
            { nope = 1 },
            { [1] = true },
            { timeout = "5" },
            { timeout = 0 },
            { timeout = -1 },
            { timeout = 86401 },
            { connect_timeout = false },
            { verify = "no" },
            { verify = 0 },
            { max_response = 0 },
            { max_response = 1.5 },
            { max_response = "10" },
            { max_redirects = -1 },
            { max_redirects = 51 },
            { ca_file = 1 },
            { ca_file = "a\0b" },
            { proxy = true },
            { user_agent = {} },
            { follow_redirects = "yes" },
            { http2 = 1 },
            { compressed = "no" },
         }
         for _, opts in ipairs(bad) do
            local ok = pcall(core.http, opts)
            assert.is_false(ok, "accepted " .. (next(opts) and tostring(next(opts)) or "?"))
         end
         assert.has_error(function()
            core.http("fast")
         end)
      end)

      it("raises for a NaN timeout", function()
         assert.has_error(function()
            core.http { timeout = 0 / 0 }
         end)
         assert.has_error(function()
            core.http { connect_timeout = 0 / 0 }
         end)
      end)

      it("accepts every documented option", function()
         local http = core.http {
            connect_timeout = 1,
            timeout = 2.5,
            ca_file = "/nonexistent/ca.pem",
            verify = true,
            max_response = 1024,
            user_agent = "x/1",
            proxy = "",
            follow_redirects = true,
            max_redirects = 0,
            http2 = false,
            compressed = false,
         }
         assert.matches("open", tostring(http))
         http:close()
         core.http():close()
      end)

      it("raises for header names or values with CR, LF or NUL, ':' in a name, or an empty name", function()
         local http = core.http()
         local bad = {
            { ["X-A"] = "v\r\nX-Injected: 1" },
            { ["X-A"] = "v\nX-Injected: 1" },
            { ["X-A"] = "v\rw" },
            { ["X-A"] = "v\0w" },
            { ["X-A\r\nX-Injected"] = "1" },
            { ["X-A\n"] = "1" },
            { ["X\0A"] = "1" },
            { ["X-A: b"] = "1" },
            { [""] = "1" },
            { ["X-A"] = true },
            { ["X-A"] = {} },
            { "positional" },
         }
         for _, headers in ipairs(bad) do
            assert.has_error(function()
               http:request { url = plain.url .. "/echo", headers = headers }
            end)
         end
         -- nothing reached the server, and the session still works
         local res = assert(http:request { url = plain.url .. "/echo" })
         http:close()
         assert.is_nil(decode(res).headers["x-injected"])
      end)

      it("raises for a method that is not upper case", function()
         local http = core.http()
         for _, method in ipairs { "get", "Post", "GET ", "GE T", "PO\r\nST", 1, true } do
            assert.has_error(function()
               http:request { url = plain.url .. "/echo", method = method }
            end)
         end
         http:close()
      end)

      it("raises for an empty method", function()
         local http = core.http()
         assert.has_error(function()
            http:request { url = plain.url .. "/echo", method = "" }
         end)
         http:close()
      end)

      it("raises for a bad url, body, headers or timeout field", function()
         local http = core.http()
         local bad = {
            {},
            { url = "http://127.0.0.1/\0x" },
            { url = plain.url, body = 42 },
            { url = plain.url, body = {} },
            { url = plain.url, headers = "X-A: 1" },
            { url = plain.url, timeout = 0 },
            { url = plain.url, connect_timeout = "1" },
         }
         for _, req in ipairs(bad) do
            assert.has_error(function()
               http:request(req)
            end)
         end
         assert.has_error(function()
            http:request(plain.url)
         end)
         http:close()
      end)

      it("raises for a url that is a number, not a string", function()
         local http = core.http()
         assert.has_error(function()
            http:request { url = 42, connect_timeout = 0.5, timeout = 0.5 }
         end)
         http:close()
      end)

      it("raises on use of a closed session; close is idempotent", function()
         local http = core.http()
         assert(http:request { url = plain.url .. "/echo" })
         http:close()
         http:close()
         assert.matches("closed", tostring(http))
         assert.has_error(function()
            http:request { url = plain.url .. "/echo" }
         end, "attempt to use a closed http session")
      end)

      it("shares close with __gc and __close", function()
         local mt = getmetatable(core.http())
         assert.is_function(mt.__gc)
         assert.is_function(mt.__close)
         for _, name in ipairs { "__gc", "__close" } do
            local http = core.http()
            mt[name](http)
            assert.matches("closed", tostring(http))
            http:close()
            mt[name](http)
            assert.has_error(function()
               http:request { url = plain.url .. "/echo" }
            end)
         end
      end)

      if _VERSION == "Lua 5.4" and not jit then
         it("closes a to-be-closed session at the end of its scope", function()
            local chunk = assert(load([[
          local core = ...
          local outer
          do
            local http <close> = core.http()
            outer = http
          end
          return outer
        ]]))
            local http = chunk(core)
            assert.matches("closed", tostring(http))
         end)
      end

      it("frees sessions left to the garbage collector", function()
         for _ = 1, 20 do
            local http = core.http { user_agent = "gc", proxy = "", ca_file = "/x" }
            assert(http:request { url = plain.url .. "/echo" })
         end
         collectgarbage()
         collectgarbage()
      end)
   end)

   describe("http_features", function()
      it("describes the libcurl in use", function()
         local f = core.http_features()
         assert.matches("^%d+%.%d+", f.version)
         assert.is_string(f.ssl)
         assert.is_boolean(f.http2)
      end)
   end)
end)
