-- bitrix24.core.http against a real HTTP/1.1 server in its own process (spec/helpers/httpd.lua):
-- plain and TLS listeners on loopback, started once for the file and killed in lazy_teardown.
-- Requests and answers, keep-alive, request_many; failures, TLS, redirects, proxies and misuse
-- are in spec/http_errors_spec.lua.
local core = require "bitrix24.core"
local httpd = require "helpers.httpd"

local byte, char, format = string.byte, string.char, string.format
local decode, closed_port = httpd.decode, httpd.closed_port

local function hex(s)
   return (s:gsub(".", function(c)
      return format("%02x", byte(c))
   end))
end

describe("bitrix24.core.http", function()

   local servers, plain, tls

   lazy_setup(function()
      servers = httpd.start_pair()
      plain, tls = servers.plain, servers.tls
   end)

   lazy_teardown(function()
      if servers then servers.stop() end
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

   describe("http_features", function()
      it("describes the libcurl in use", function()
         local f = core.http_features()
         assert.matches("^%d+%.%d+", f.version)
         assert.is_string(f.ssl)
         assert.is_boolean(f.http2)
      end)
   end)
end)
