-- Starts spec/helpers/httpd_main.lua, a real HTTP/1.1 server on loopback, as a separate process.
--
--   local httpd = require "helpers.httpd"
--   local certs = httpd.make_certs()           -- self-signed CA + server cert for 127.0.0.1/localhost
--   local srv = httpd.start{ tls = true, certs = certs }
--   -- srv.port, srv.url ("http(s)://127.0.0.1:PORT"), srv.ca_file
--   srv.stop()                                  -- kills the process and waits for it; idempotent
--   certs.remove()
--
-- The server is told our pid and exits by itself when we are gone, so a crashed run leaves no
-- orphan even when no teardown ran. The interpreter for the server is lua5.4 (it needs luasocket,
-- luasec and cjson), whichever interpreter runs the specs; B24_TEST_SERVER_LUA overrides it.
local cjson = require("cjson.safe").new()
local socket = require "socket"

local httpd = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/helpers"
local server_lua = os.getenv("B24_TEST_SERVER_LUA") or "lua5.4"

local function quote(s)
   return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs a shell command (without the sanitizer run's LD_PRELOAD); raises with its output when it fails.
local function run(cmd)
   local p = assert(io.popen("{ unset LD_PRELOAD; " .. cmd .. "; } 2>&1", "r"))
   local out = p:read("*a")
   local ok, _, code = p:close()
   if ok ~= true and ok ~= 0 then -- LuaJIT without 5.2 compat returns the raw status
      error(("command failed (%s): %s\n%s"):format(tostring(code or ok), cmd, out), 2)
   end
   return out
end
httpd.run = run

local own_pid
-- The pid of this interpreter: the parent of the shell that io.popen starts.
function httpd.pid()
   if not own_pid then
      local p = assert(io.popen("echo $PPID", "r"))
      own_pid = p:read("*l")
      p:close()
   end
   return own_pid
end

-- A temporary directory with ca.pem (a self-signed CA) and server.pem/server.key (signed by it,
-- subjectAltName IP:127.0.0.1, DNS:localhost), made with the openssl command.
function httpd.make_certs()
   local dir = run('mktemp -d "${TMPDIR:-/tmp}/b24-httpd.XXXXXX"'):gsub("%s+$", "")
   local d = quote(dir)
   run(("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      .. " -keyout ca.key -out ca.pem -days 2 -subj '/CN=bitrix24 test CA'"
      .. " -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign'"):format(d))
   local ext = assert(io.open(dir .. "/server.ext", "w"))
   ext:write("basicConstraints=CA:FALSE\n",
      "keyUsage=critical,digitalSignature,keyEncipherment\n",
      "extendedKeyUsage=serverAuth\n",
      "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
   ext:close()
   run(("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      .. " -keyout server.key -out server.csr -subj '/CN=localhost'"
      .. " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
      .. " -days 2 -extfile server.ext -out server.pem"):format(d))
   for _, name in ipairs { "ca.pem", "server.pem", "server.key" } do -- LuaJIT's popen hides exit codes
      local f = io.open(dir .. "/" .. name, "r")
      if not f then
         error("openssl did not produce " .. dir .. "/" .. name, 2)
      end
      f:close()
   end
   return {
      dir = dir,
      ca_file = dir .. "/ca.pem",
      cert = dir .. "/server.pem",
      key = dir .. "/server.key",
      remove = function()
         os.execute("rm -rf " .. d)
      end,
   }
end

-- Starts a server: opts.tls (boolean) with opts.certs from make_certs (made, and removed on stop,
-- when not given). Returns { port, url, ca_file, stop }.
function httpd.start(opts)
   opts = opts or {}
   local certs, own_certs = opts.certs, false
   if opts.tls and not certs then
      certs, own_certs = httpd.make_certs(), true
   end
   local args = { quote(here .. "/httpd_main.lua"), "--parent", httpd.pid() }
   if opts.tls then
      args[#args + 1] = "--tls " .. quote(certs.cert) .. " " .. quote(certs.key)
   end
   -- `exec` keeps the shell's pid, so the first line is the server's own pid
   -- and the server does not inherit the sanitizer run's LD_PRELOAD: it is not the code under test
   local cmd = "echo $$; unset LD_PRELOAD; exec " .. server_lua .. " " .. table.concat(args, " ")
   local pipe = assert(io.popen(cmd, "r"))
   local pid = pipe:read("*l")
   local line = pipe:read("*l") -- blocks until the server listens, or EOF when it died
   local port = line and tonumber(line:match("^PORT (%d+)$"))
   local srv = { pid = pid }
   local stopped = false
   function srv.stop()
      if stopped then
         return
      end
      stopped = true
      if pid and pid:match("^%d+$") then
         os.execute("kill " .. pid .. " 2>/dev/null")
      end
      pipe:close() -- waits for the process: no zombie either
      if own_certs then
         certs.remove()
      end
   end
   if not port then
      srv.stop()
      error("test server did not start (first line: " .. tostring(line) .. ")", 2)
   end
   srv.port = port
   srv.url = (opts.tls and "https" or "http") .. "://127.0.0.1:" .. port
   srv.ca_file = certs and certs.ca_file
   return srv
end

-- A plain and a TLS listener sharing one set of certificates, as spec/http*_spec.lua use them:
-- pair.plain, pair.tls, pair.certs; pair.stop() stops both and removes the certificates.
function httpd.start_pair()
   local pair = {}
   function pair.stop()
      if pair.plain then pair.plain.stop() end
      if pair.tls then pair.tls.stop() end
      if pair.certs then pair.certs.remove() end
   end
   local ok, err = pcall(function()
      pair.plain = httpd.start { tls = false }
      pair.certs = httpd.make_certs()
      pair.tls = httpd.start { tls = true, certs = pair.certs }
   end)
   if not ok then
      pair.stop()
      error(err, 0)
   end
   return pair
end

-- The JSON body of a server answer (the server echoes requests as JSON) as a table.
function httpd.decode(res)
   assert(type(res) == "table", "expected a response table, got " .. tostring(res))
   local t = cjson.decode(res.body)
   assert(type(t) == "table", "not JSON: " .. tostring(res.body))
   return t
end

-- A loopback port with nothing listening on it.
function httpd.closed_port()
   local s = assert(socket.bind("127.0.0.1", 0))
   local _, port = s:getsockname()
   s:close()
   return port
end

return httpd
