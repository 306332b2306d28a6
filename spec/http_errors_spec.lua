-- bitrix24.core.http when things go wrong, against the same real server as spec/http_spec.lua:
-- failures and their kinds, TLS verification, redirects, proxies from the environment, misuse.
local core = require "bitrix24.core"
local cjson = require("cjson.safe").new()
local httpd = require "helpers.httpd"

local format = string.format
local decode, closed_port = httpd.decode, httpd.closed_port

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

   local servers, plain, tls

   lazy_setup(function()
      servers = httpd.start_pair()
      plain, tls = servers.plain, servers.tls
   end)

   lazy_teardown(function()
      if servers then servers.stop() end
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
end)
