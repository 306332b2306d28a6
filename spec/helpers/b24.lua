-- Starts `build/b24 serve` on a free loopback port for a spec and talks to it over real HTTP.
local core = require "bitrix24.core"

local M = {}

M.root = (debug.getinfo(1, "S").source:match("^@(.*)/spec/helpers/b24%.lua$")) or "."
-- the sanitizer run points B24_BIN at a b24 built with AddressSanitizer
M.bin = os.getenv("B24_BIN") or (M.root .. "/build/b24")
-- Child processes must not inherit the sanitizer run's preloaded runtime: an uninstrumented
-- program with libasan preloaded can deadlock in its exit handlers (libp11-kit).
M.clean = "env -u LD_PRELOAD "

local function shell_quote(s)
   return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = shell_quote

function M.tmpdir()
   local p = assert(io.popen(M.clean .. "mktemp -d"))
   local d = p:read("l")
   p:close()
   return d
end

function M.write(path, text)
   local f = assert(io.open(path, "wb"))
   f:write(text)
   f:close()
   return path
end

function M.read(path)
   local f = io.open(path, "rb")
   if not f then return nil end
   local s = f:read("a")
   f:close()
   return s
end

-- Runs a command to completion: its combined output and exit status.
function M.exec(cmd)
   local p = assert(io.popen(M.clean .. "sh -c " .. M.quote(cmd) .. " 2>&1; echo \"exit=$?\""))
   local out = p:read("a")
   p:close()
   local code = tonumber(out:match("exit=(%d+)\n?$"))
   return out:gsub("exit=%d+\n?$", ""), code
end

local Server = {}
Server.__index = Server

-- Reads log lines until one matches pattern (a plain substring unless opts say pattern);
-- returns it, or nil and the lines seen when the server exited first.
function Server:wait_log(needle)
   for _, line in ipairs(self.lines) do
      if line:find(needle, 1, true) then return line end
   end
   while true do
      local line = self.stream:read("l")
      if not line then return nil, table.concat(self.lines, "\n") end
      self.lines[#self.lines + 1] = line
      if line:find(needle, 1, true) then return line end
      if line:match("^b24%-exit=") and not needle:match("^b24%-exit") then
         return nil, table.concat(self.lines, "\n")
      end
   end
end

-- The log lines from position `from` on (1-based), as one string.
function Server:log(from)
   return table.concat(self.lines, "\n", from or 1)
end

function Server:url(path)
   return self.base .. (path or "/")
end

function Server:request(req)
   req.url = req.url or self:url(req.path)
   req.path = nil
   return self.http:request(req)
end

function Server:signal(sig)
   os.execute("kill -" .. sig .. " " .. self.pid .. " 2>/dev/null") -- it may have exited by itself
end

-- Stops the server with sig (TERM by default), waits for its exit line, returns the status.
function Server:stop(sig)
   if self.stopped then return self.exit_code end
   self.stopped = true
   self:signal(sig or "TERM")
   local line = self:wait_log("b24-exit=")
   os.execute("kill " .. self.tail_pid .. " 2>/dev/null")
   self.stream:close()
   self.http:close()
   os.execute("rm -rf " .. shell_quote(self.dir))
   self.exit_code = line and tonumber(line:match("b24%-exit=(%d+)"))
   return self.exit_code
end

-- A Server for the run-b24.sh command line cmd: its pid and its streamer's, log lines so far.
local function attach(cmd, dir)
   local stream = assert(io.popen(cmd))
   local self = setmetatable({ dir = dir, stream = stream, lines = {}, http = core.http{ timeout = 30 } }, Server)
   while not (self.pid and self.tail_pid) do
      local line = assert(stream:read("l"), "the streamer ended")
      self.pid = self.pid or line:match("^pid=(%d+)$")
      self.tail_pid = self.tail_pid or line:match("^tail=(%d+)$")
      if not line:match("^pid=") and not line:match("^tail=") then self.lines[#self.lines + 1] = line end
   end
   return self
end

-- Waits for b24's "listening" line (logfmt or JSON) and takes the port from it; raises with the
-- log when the command exited first.
function Server:listening()
   local line, seen = self:wait_log("listening")
   if not line then
      self.stopped = true
      os.execute("kill " .. self.tail_pid .. " 2>/dev/null")
      self.stream:close()
      error("b24 did not start:\n" .. tostring(seen))
   end
   self.port = tonumber(line:match('address"?[=:]"?[%d.]+:(%d+)'))
   self.base = "http://127.0.0.1:" .. self.port
   return self
end

-- M.start{ script = "return function(req) … end" (source) or script_path = …, args = {…} }
-- (opts.command = "emulate" runs `b24 emulate` with args and no script)
function M.start(opts)
   local dir = M.tmpdir()
   local command = opts.command or "serve"
   local script = ""
   if command == "serve" then
      script = shell_quote(opts.script_path or M.write(dir .. "/handler.lua", opts.script))
   end
   local log = dir .. "/b24.log"
   local args = {}
   for _, a in ipairs(opts.args or {}) do args[#args + 1] = shell_quote(a) end
   local cmd = ("%s %s %s %s --listen 127.0.0.1:0 %s %s"):format(
      shell_quote(M.root .. "/spec/helpers/run-b24.sh"), shell_quote(log), shell_quote(M.bin),
      command, table.concat(args, " "), script)
   cmd = M.clean .. (opts.env or "") .. " " .. cmd
   local self = attach(cmd, dir)
   self.script = script
   return self:listening()
end

-- M.spawn(shell_command [, opts]): any command under the log streamer, its stderr and stdout
-- (opts.stdout = true) in the log; a Server without a port (wait_log, signal, stop work).
-- opts.listening = true waits for b24's "listening" line and reads the port from it.
function M.spawn(command, opts)
   opts = opts or {}
   local dir = M.tmpdir()
   local log = dir .. "/b24.log"
   local inner = opts.stdout and ("exec 1>&2; " .. command) or command
   local cmd = M.clean .. shell_quote(M.root .. "/spec/helpers/run-b24.sh") .. " " .. shell_quote(log) ..
      " bash -c " .. shell_quote(inner)
   local self = attach(cmd, dir)
   if opts.listening then self:listening() end
   return self
end

-- A loopback port free at the moment of the call.
function M.free_port()
   local socket = require "socket"
   local s = assert(socket.bind("127.0.0.1", 0))
   local _, port = s:getsockname()
   s:close()
   return tonumber(port)
end

local has_emulate
-- True when the binary has the `emulate` command.
function M.has_emulate()
   if has_emulate == nil then
      local _, code = M.exec(shell_quote(M.bin) .. " emulate --help")
      has_emulate = code == 0
   end
   return has_emulate
end

-- M.emulate{ args = { emulator options… }, env = "VAR=… " }: `b24 emulate` on a free loopback
-- port, or, with a binary that has no emulate command yet, `b24 serve --workers 1` with the
-- script `b24 emulate` runs.
function M.emulate(opts)
   if M.has_emulate() then
      return M.start{ command = "emulate", args = opts.args, env = opts.env }
   end
   local quoted = {}
   for i, a in ipairs(opts.args or {}) do quoted[i] = ("%q"):format(a) end
   return M.start{ args = { "--workers", "1" }, env = opts.env,
      script = "return require('b24.emulator').main({ " .. table.concat(quoted, ", ") .. " })" }
end

-- `b24 run spec/helpers/app_run.lua STORE MODE ARGS…` with the environment env (an
-- application's settings, "NAME=value …"): the JSON line it prints, decoded; raises with its
-- output when it fails (the app_offline specs' way to act as the application's admin).
function M.app_run(env, store, mode, ...)
   local parts = { M.quote(M.bin), "run", M.quote(M.root .. "/spec/helpers/app_run.lua"), M.quote(store),
                   M.quote(mode) }
   for _, a in ipairs({ ... }) do parts[#parts + 1] = M.quote(a) end
   local out, code = M.exec(env .. " " .. table.concat(parts, " "))
   if code ~= 0 then error("app_run " .. mode .. " exited " .. tostring(code) .. ":\n" .. out, 2) end
   local line = out:match("^({[^\n]*})") or out:match("\n({[^\n]*})")
   local value = line and require("cjson").decode(line)
   if not value then error("app_run " .. mode .. " printed no JSON line:\n" .. out, 2) end
   return value
end

-- Installs the application on each portal of the list or map portals ({ admin, member_id }: its
-- REST client and member_id) through the running receiver srv, and binds ONCRMLEADADD to the
-- offline queue with run (a spec's b24.app_run); raises with the log when a step fails.
function M.app_install_offline(srv, portals, run)
   for _, p in pairs(portals) do
      local ok, err = p.admin:call("emulator.app.install", { url = srv.base .. "/" })
      if not ok then error("emulator.app.install failed: " .. tostring(err), 2) end
      if not srv:wait_log('msg="app installed" member_id=' .. p.member_id) then
         error("the receiver logged no install of " .. p.member_id .. ":\n" .. srv:log(), 2)
      end
   end
   for _, p in pairs(portals) do
      local bound = run("bind_offline", p.member_id, "ONCRMLEADADD").bound
      if not (type(bound) == "table" and #bound == 1 and bound[1] == "ONCRMLEADADD") then
         error("bind_offline of " .. p.member_id .. " bound " .. tostring(bound and bound[1]), 2)
      end
   end
end

return M
