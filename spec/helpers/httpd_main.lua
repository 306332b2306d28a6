-- A small HTTP/1.1 test server, run as its own process by spec/helpers/httpd.lua:
--
--   lua5.4 spec/helpers/httpd_main.lua [--tls CERT KEY] [--parent PID] [--ttl SECONDS]
--
-- Listens on an ephemeral loopback port and prints "PORT <n>" as its first stdout line; nothing
-- else is ever written to stdout. Every connection runs in a coroutine driven by socket.select,
-- so a stalled request never blocks another. Endpoints (any method unless stated):
--
--   /echo...           JSON {method, target, path, query, headers, body, body_hex, body_length,
--                      request_chunked, connection, proxied}; an absolute-form target (a request
--                      sent to a forward proxy) is answered the same way with proxied = true
--   /status/<code>     that status, with X-Custom, two X-Multi and two Set-Cookie headers
--   /bytes/<n>         n bytes with Content-Length; ?chunked=1 sends them chunked
--   /chunked           a chunked body made of ?n= chunks (default 5)
--   /redirect/<n>      302 to /redirect/<n-1>; /redirect/0 is 200 "final"
--   /loop              302 to itself
--   /gzip              a gzip-encoded text when the request accepts gzip
--   /close             200 with Connection: close, then closes
--   /hangup            closes the connection without answering
--   /truncate          announces 100 bytes, sends 10, closes
--   /stall             reads the request and never answers
--   /stats             JSON {connections = accepted TCP connections, requests = requests served}
--
-- The process exits by itself when the --parent process is gone or after --ttl seconds, so a
-- crashed spec run leaves no server behind.
local socket = require "socket"
local cjson = require("cjson.safe").new()

local concat, format, byte = table.concat, string.format, string.byte
local yield, create, resume, status = coroutine.yield, coroutine.create, coroutine.resume, coroutine.status

local cert, key, parent
local ttl = 600
do
   local i = 1
   while arg[i] do
      if arg[i] == "--tls" then
         cert, key = arg[i + 1], arg[i + 2]
         i = i + 3
      elseif arg[i] == "--parent" then
         parent = arg[i + 1]
         i = i + 2
      elseif arg[i] == "--ttl" then
         ttl = tonumber(arg[i + 1])
         i = i + 2
      else
         io.stderr:write("httpd_main: unknown argument ", arg[i], "\n")
         os.exit(2)
      end
   end
end

local tls_context
if cert then
   local ssl = require "ssl"
   tls_context = assert(ssl.newcontext {
      mode = "server",
      protocol = "any",
      key = key,
      certificate = cert,
      options = { "all", "no_sslv2", "no_sslv3" },
   })
end

local listener = assert(socket.bind("127.0.0.1", 0))
listener:settimeout(0)
local _, port = listener:getsockname()

local stats = { connections = 0, requests = 0 }
local barriers = {} -- /barrier: arrivals by key

-- ---- scheduler: coroutines wait for a socket to become readable ("r") or writable ("w") ----

local waiting_read, waiting_write = {}, {}

local function wait(kind, sock)
   yield(kind, sock)
end

local function step(co, ...)
   local ok, kind, sock = resume(co, ...)
   if not ok then
      io.stderr:write("httpd_main: ", tostring(kind), "\n")
      return
   end
   if status(co) == "dead" then
      return
   end
   if kind == "r" then
      waiting_read[sock] = co
   else
      waiting_write[sock] = co
   end
end

-- ---- I/O on one connection, yielding instead of blocking ----

-- Reads `pattern` ("*l" or a byte count). nil, err when the peer is gone.
local function receive(sock, pattern, prefix)
   local acc = prefix or ""
   while true do
      local data, err, partial = sock:receive(pattern, acc)
      if data then
         return data
      end
      acc = partial or ""
      if err == "timeout" or err == "wantread" then
         wait("r", sock)
      elseif err == "wantwrite" then
         wait("w", sock)
      else
         return nil, err
      end
   end
end

local function send(sock, data)
   local i = 1
   while i <= #data do
      local last, err, partial = sock:send(data, i)
      if last then
         return true
      end
      i = (partial or i - 1) + 1
      if err == "timeout" or err == "wantwrite" then
         wait("w", sock)
      elseif err == "wantread" then
         wait("r", sock)
      else
         return nil, err
      end
   end
   return true
end

local function handshake(sock)
   while true do
      local ok, err = sock:dohandshake()
      if ok then
         return true
      end
      if err == "wantread" then
         wait("r", sock)
      elseif err == "wantwrite" then
         wait("w", sock)
      else
         return nil, err
      end
   end
end

-- ---- HTTP ----

local reasons = {
   [100] = "Continue", [200] = "OK", [201] = "Created", [204] = "No Content", [301] = "Moved Permanently",
   [302] = "Found", [400] = "Bad Request", [404] = "Not Found", [500] = "Internal Server Error",
   [503] = "Service Unavailable",
}

local function hex(s)
   return (s:gsub(".", function(c)
      return format("%02x", byte(c))
   end))
end

local function read_request(sock)
   local first, err = receive(sock, 1)
   if not first then
      return nil, err
   end
   if first == "\22" then -- a TLS ClientHello on the plain port: hang up, as a non-TLS server would
      return nil, "TLS on a plain connection"
   end
   local line
   line, err = receive(sock, "*l", first)
   if not line then
      return nil, err
   end
   local method, target, version = line:match("^(%S+) (%S+) (HTTP/%d%.%d)$")
   if not method then
      return nil, "bad request line: " .. line
   end
   local req = { method = method, target = target, version = version, headers = {}, header_list = {} }
   while true do
      line, err = receive(sock, "*l")
      if not line then
         return nil, err
      end
      if line == "" then
         break
      end
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if not name then
         return nil, "bad header line: " .. line
      end
      local lower = name:lower()
      req.header_list[#req.header_list + 1] = { name, value }
      req.headers[lower] = req.headers[lower] and (req.headers[lower] .. ", " .. value) or value
   end
   if (req.headers["expect"] or ""):lower() == "100-continue" then
      send(sock, "HTTP/1.1 100 Continue\r\n\r\n")
   end
   if (req.headers["transfer-encoding"] or ""):lower():find("chunked", 1, true) then
      req.chunked = true
      local parts = {}
      while true do
         line, err = receive(sock, "*l")
         if not line then
            return nil, err
         end
         local size = tonumber(line:match("^%x+"), 16)
         if not size then
            return nil, "bad chunk size: " .. line
         end
         if size == 0 then
            repeat -- trailers up to the empty line
               line, err = receive(sock, "*l")
               if not line then
                  return nil, err
               end
            until line == ""
            break
         end
         parts[#parts + 1], err = receive(sock, size)
         if not parts[#parts] then
            return nil, err
         end
         receive(sock, "*l")
      end
      req.body = concat(parts)
   else
      local length = tonumber(req.headers["content-length"] or "0")
      if length and length > 0 then
         req.body, err = receive(sock, length)
         if not req.body then
            return nil, err
         end
      else
         req.body = ""
      end
   end
   -- origin-form "/p?q" or, for a forward proxy, absolute-form "http://host/p?q"
   local path = target
   local scheme_host, rest = target:match("^(https?://[^/]+)(.*)$")
   if scheme_host then
      req.proxied = true
      path = rest ~= "" and rest or "/"
   end
   req.path, req.query = path:match("^([^?]*)%??(.*)$")
   return req
end

-- Sends a response. headers: list of {name, value}. opts.chunked sends the body in ~chunk_size
-- pieces with Transfer-Encoding: chunked; a HEAD request gets the headers only.
local function respond(sock, req, code, headers, body, opts)
   opts = opts or {}
   local out = { format("HTTP/1.1 %d %s\r\n", code, reasons[code] or "Status") }
   for _, h in ipairs(headers) do
      out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n"
   end
   if opts.chunked then
      out[#out + 1] = "Transfer-Encoding: chunked\r\n"
   else
      out[#out + 1] = "Content-Length: " .. #body .. "\r\n"
   end
   if opts.close then
      out[#out + 1] = "Connection: close\r\n"
   end
   out[#out + 1] = "\r\n"
   if req.method ~= "HEAD" then
      if opts.chunked then
         local size = opts.chunk_size or 1000
         local i = 1
         while i <= #body do
            local piece = body:sub(i, i + size - 1)
            out[#out + 1] = format("%x\r\n%s\r\n", #piece, piece)
            i = i + size
         end
         out[#out + 1] = "0\r\n\r\n"
      else
         out[#out + 1] = body
      end
   end
   return send(sock, concat(out))
end

local gzip_text = "compressed hello from the test server\n"
local gzip_body
local function gzipped()
   if not gzip_body then
      local name = os.tmpname()
      local f = assert(io.open(name, "wb"))
      f:write(gzip_text)
      f:close()
      local p = assert(io.popen("gzip -c -n < " .. name, "r"))
      gzip_body = p:read("*a")
      p:close()
      os.remove(name)
   end
   return gzip_body
end

local json_type = { { "Content-Type", "application/json" } }

-- Answers one request; returns "close" when the connection must be closed afterwards.
local function route(sock, req, conn_id)
   stats.requests = stats.requests + 1
   local path = req.path
   local wants_close = (req.headers["connection"] or ""):lower() == "close"

   if path:find("^/echo") then
      local body = cjson.encode {
         method = req.method,
         target = req.target,
         path = req.path,
         query = req.query,
         version = req.version,
         headers = req.headers,
         body = req.body,
         body_hex = hex(req.body),
         body_length = #req.body,
         request_chunked = req.chunked or false,
         connection = conn_id,
         proxied = req.proxied or false,
      }
      respond(sock, req, 200, json_type, body, { close = wants_close })
   elseif path:find("^/status/%d+$") then
      local code = tonumber(path:match("%d+$"))
      respond(sock, req, code, {
         { "X-Custom", "yes" },
         { "X-MiXeD-CaSe", "Value Kept" },
         { "X-Multi", "one" },
         { "X-Multi", "two" },
         { "Set-Cookie", "a=1; Path=/" },
         { "Set-Cookie", "b=2; Path=/" },
         { "Content-Type", "text/plain" },
      }, "status " .. code, { close = wants_close })
   elseif path:find("^/bytes/%d+$") then
      local n = tonumber(path:match("%d+$"))
      local body = ("0123456789abcdef"):rep(math.floor(n / 16) + 1):sub(1, n)
      local chunked = req.query:find("chunked=1", 1, true) ~= nil
      respond(sock, req, 200, { { "Content-Type", "application/octet-stream" } }, body,
         { chunked = chunked, chunk_size = 16384, close = wants_close })
   elseif path == "/chunked" then
      local n = tonumber(req.query:match("n=(%d+)") or "5")
      local parts = {}
      for i = 1, n do
         parts[i] = "chunk" .. i .. ";"
      end
      respond(sock, req, 200, { { "Content-Type", "text/plain" } }, concat(parts),
         { chunked = true, chunk_size = 7, close = wants_close })
   elseif path:find("^/redirect/%d+$") then
      local n = tonumber(path:match("%d+$"))
      if n == 0 then
         respond(sock, req, 200, { { "Content-Type", "text/plain" } }, "final", { close = wants_close })
      else
         respond(sock, req, 302, { { "Location", "/redirect/" .. (n - 1) } }, "redirecting",
            { close = wants_close })
      end
   elseif path == "/loop" then
      respond(sock, req, 302, { { "Location", "/loop" } }, "again", { close = wants_close })
   elseif path == "/gzip" then
      local accept = (req.headers["accept-encoding"] or ""):lower()
      if accept:find("gzip", 1, true) then
         respond(sock, req, 200, { { "Content-Type", "text/plain" }, { "Content-Encoding", "gzip" } },
            gzipped(), { close = wants_close })
      else
         respond(sock, req, 200, { { "Content-Type", "text/plain" } }, gzip_text, { close = wants_close })
      end
   elseif path == "/close" then
      respond(sock, req, 200, { { "Content-Type", "text/plain" } }, "bye", { close = true })
      return "close"
   elseif path == "/hangup" then
      return "close" -- no answer at all
   elseif path == "/truncate" then
      send(sock, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
      return "close"
   elseif path == "/stall" then
      while receive(sock, 1) do -- until the client gives up and closes
      end
      return "close"
   elseif path == "/barrier" then
      -- answers only once n requests with this key have arrived: proves they were in flight at once
      local n = tonumber(req.query:match("n=(%d+)") or "2")
      local barrier = req.query:match("key=(%w+)") or ""
      barriers[barrier] = (barriers[barrier] or 0) + 1
      while barriers[barrier] < n do
         wait("w", sock) -- writable at once: back next round of the scheduler
      end
      respond(sock, req, 200, json_type, cjson.encode({ arrived = barriers[barrier], query = req.query,
         body = req.body }), { close = wants_close })
   elseif path == "/stats" then
      respond(sock, req, 200, json_type, cjson.encode(stats), { close = wants_close })
   else
      respond(sock, req, 404, { { "Content-Type", "text/plain" } }, "not found: " .. path,
         { close = wants_close })
   end
   if wants_close then
      return "close"
   end
end

local function serve(sock, conn_id)
   if tls_context then
      local ssl = require "ssl"
      local wrapped, err = ssl.wrap(sock, tls_context)
      if not wrapped then
         io.stderr:write("httpd_main: wrap: ", tostring(err), "\n")
         sock:close()
         return
      end
      sock = wrapped
      sock:settimeout(0)
      if not handshake(sock) then -- e.g. a client that rejected our certificate
         sock:close()
         return
      end
   end
   while true do
      local req = read_request(sock)
      if not req or route(sock, req, conn_id) == "close" then
         break
      end
   end
   sock:close()
end

-- ---- main loop ----

io.stdout:write("PORT ", port, "\n")
io.stdout:flush()

local started = socket.gettime()
local function parent_alive()
   if not parent then
      return true
   end
   local f = io.open("/proc/" .. parent .. "/stat", "r")
   if not f then
      local self = io.open("/proc/self/stat", "r")
      if self then
         self:close()
         return false
      end
      return true -- no /proc at all: cannot tell, keep going until --ttl
   end
   f:close()
   return true
end

local last_check = started
while true do
   local now = socket.gettime()
   if now - last_check >= 1 then
      last_check = now
      if now - started > ttl or not parent_alive() then
         os.exit(0)
      end
   end

   local readers, writers = { listener }, {}
   local ready = {}
   for sock in pairs(waiting_read) do
      readers[#readers + 1] = sock
      if sock.dirty and sock:dirty() then -- TLS bytes already decrypted and buffered
         ready[#ready + 1] = sock
      end
   end
   for sock in pairs(waiting_write) do
      writers[#writers + 1] = sock
   end
   local readable, writable
   if #ready > 0 then
      readable, writable = ready, {}
   else
      readable, writable = socket.select(readers, writers, 1)
   end

   for _, sock in ipairs(readable) do
      if sock == listener then
         while true do
            local client = listener:accept()
            if not client then
               break
            end
            client:settimeout(0)
            client:setoption("tcp-nodelay", true)
            stats.connections = stats.connections + 1
            step(create(serve), client, stats.connections)
         end
      elseif waiting_read[sock] then
         local co = waiting_read[sock]
         waiting_read[sock] = nil
         step(co)
      end
   end
   for _, sock in ipairs(writable) do
      if waiting_write[sock] then
         local co = waiting_write[sock]
         waiting_write[sock] = nil
         step(co)
      end
   end
end
