-- A real PostgreSQL 15 server for the specs and the benches, never a mock: `initdb` into a fresh
-- directory (outside the checkout by default), started with `pg_ctl` on a free private port of
-- 127.0.0.1 (never 5432: a cluster the Debian package may run there is left alone), its unix
-- socket in that directory, fsync and synchronous_commit on. initdb refuses to run as root, so
-- when the specs run as root the server is run as the `postgres` user (`runuser`), which owns the
-- directory. A role and a database named b24 are made; TCP connections need the role's password
-- (scram-sha-256), so the URL handed to b24 exercises libpq's password path, while the helper's
-- own psql talks to the server over the unix socket (trust).
--
--   local pg = require "helpers.pg"
--   local db = pg.start{ dir = PARENT?, settings = { name = value }? }
--   db.url        postgresql://b24:PASSWORD@127.0.0.1:PORT/b24
--   db.password, db.port, db.dir (the temp dir), db.data (PGDATA), db.log (the server's log)
--   db:psql(sql)  runs sql in the b24 database as the superuser: its output (-A -t), or raises
--   db:rows(sql)  the output's lines, each split at "|"
--   db:shutdown(mode)  pg_ctl stop -m MODE (fast), the data kept; db:kill() SIGKILLs the
--                 postmaster and every backend, the data kept;
--   db:up()       starts it again on the same data and port; db:restart(mode) = shutdown + up
--   db:stop()     stops it for good and removes the directory (idempotent; for `finally`)
-- A watcher process (its own session) stops the server and removes the directory when the Lua
-- process that started it dies without calling stop (a watchdog's kill, a crash).
local b24 = require "helpers.b24"
local core = require "bitrix24.core"

local M = {}

M.bindir = os.getenv("B24_PG_BINDIR") or "/usr/lib/postgresql/15/bin"

local quote = b24.quote

-- Runs a shell command to completion; raises with its output when it fails.
local function must(cmd, what)
   local out, code = b24.exec(cmd)
   if code ~= 0 then error((what or cmd) .. " failed (exit " .. tostring(code) .. "):\n" .. out, 2) end
   return out
end

local uid
-- Whether this process runs as root (then the server runs as postgres).
local function is_root()
   if uid == nil then uid = tonumber((must("id -u"):match("%d+"))) end
   return uid == 0
end

-- cmd run as the server's user, in dir (the postgres user cannot enter every cwd).
local function as_server(cmd, dir)
   local inner = "cd " .. quote(dir) .. " && " .. cmd
   if is_root() then return "runuser -u postgres -- sh -c " .. quote(inner) end
   return "sh -c " .. quote(inner)
end

-- The pid of this Lua process (the watcher waits for it to die).
local function own_pid()
   local f = assert(io.open("/proc/self/stat", "r"))
   local line = f:read("l")
   f:close()
   return assert(tonumber(line:match("^(%d+)")))
end

-- A random hex string of n bytes.
local function random_hex(n)
   local f = assert(io.open("/dev/urandom", "rb"))
   local s = f:read(n)
   f:close()
   return core.hex_encode(s)
end

-- Whether the server binaries are there; the message says how to get them when not.
function M.available()
   local f = io.open(M.bindir .. "/initdb", "r")
   if f then f:close() return true end
   return false, "no " .. M.bindir .. "/initdb: `scripts/deps.sh test` installs the Debian package postgresql"
end

local DB = {}
DB.__index = DB

-- The postmaster's pid from postmaster.pid, or nil when there is none.
function DB:postmaster_pid()
   local text = b24.read(self.data .. "/postmaster.pid")
   return text and tonumber(text:match("^(%d+)"))
end

-- The postmaster's pid and those of its children (every backend and auxiliary process), from
-- /proc (a minimal Debian has no procps, so no pgrep): "pid (comm) state ppid …" per process.
local function server_pids(pid)
   local out = b24.exec("cat /proc/[0-9]*/stat 2>/dev/null | sed 's/^\\([0-9]*\\) (.*) /\\1 /'"
      .. " | awk -v p=" .. pid .. " '$3 == p { print $1 }'")
   local pids = { pid }
   for child in out:gmatch("%d+") do pids[#pids + 1] = tonumber(child) end
   return pids
end

-- Whether any of pids lives.
local function any_alive(pids)
   for _, pid in ipairs(pids) do
      local r = os.execute("kill -0 " .. pid .. " 2>/dev/null")
      if r == true or r == 0 then return true end -- Lua 5.4: true; LuaJIT: 0
   end
   return false
end

-- Polls until fn() is true, at most `seconds`; raises with what on timeout.
local function wait_until(what, seconds, fn)
   local socket = require "socket"
   local deadline = socket.gettime() + seconds
   while not fn() do
      if socket.gettime() > deadline then error("timed out after " .. seconds .. " s waiting for " .. what, 2) end
      socket.sleep(0.02)
   end
end

-- pg_ctl start on the data directory and port; waits (pg_ctl -w, a 60-second watchdog) until it
-- accepts connections. Returns true, or false and the log's tail when it did not start.
function DB:try_up()
   local pgctl = quote(M.bindir .. "/pg_ctl")
   local cmd = ("%s -D %s -l %s -w -t 60 -o %s start"):format(pgctl, quote(self.data), quote(self.log),
      quote("-p " .. self.port))
   local out, code = b24.exec(as_server(cmd, self.dir))
   if code ~= 0 then return false, out .. "\n" .. (b24.read(self.log) or ""):sub(-3000) end
   self.pid = self:postmaster_pid()
   self.running = true
   return true
end

-- Starts the server again on the same data and port (after shutdown or kill).
function DB:up()
   assert(not self.running, "the server is running")
   local ok, why = self:try_up()
   if not ok then error("PostgreSQL did not start on port " .. self.port .. ":\n" .. why, 2) end
   self:ready()
   return self
end

-- Waits until pg_isready says the server accepts TCP connections (a watchdog of 60 s).
function DB:ready()
   local cmd = quote(M.bindir .. "/pg_isready") .. " -q -h 127.0.0.1 -p " .. self.port .. " -d b24 -U b24"
   wait_until("pg_isready on port " .. self.port, 60, function()
      local _, code = b24.exec(cmd)
      return code == 0
   end)
end

-- pg_ctl stop -m mode (fast: active sessions are ended; immediate: no checkpoint, a crash
-- recovery at the next start); the data is kept.
function DB:shutdown(mode)
   if not self.running then return end
   local pids = server_pids(self.pid)
   local cmd = ("%s -D %s -w -t 60 -m %s stop"):format(quote(M.bindir .. "/pg_ctl"), quote(self.data),
      mode or "fast")
   must(as_server(cmd, self.dir), "pg_ctl stop")
   self.running = false
   wait_until("the server's processes to exit", 60, function() return not any_alive(pids) end)
end

-- SIGKILL to the postmaster and every backend at once (as when the database's processes die
-- with their machine); returns once none is left. With postmaster_only, only the postmaster is
-- killed, and its backends notice and exit by themselves. The data is kept: up() recovers it.
function DB:kill(postmaster_only)
   assert(self.running and self.pid, "the server is not running")
   local pids = server_pids(self.pid)
   local targets = postmaster_only and { self.pid } or pids
   os.execute("kill -KILL " .. table.concat(targets, " ") .. " 2>/dev/null")
   wait_until("the killed server's processes to exit", 60, function() return not any_alive(pids) end)
   self.running = false
end

-- Shutdown (fast unless mode says) and up again.
function DB:restart(mode)
   self:shutdown(mode)
   return self:up()
end

-- Runs sql in the database (b24 unless dbname) as the superuser over the unix socket; returns
-- psql's unaligned, tuples-only output, or raises with psql's message.
function DB:psql(sql, dbname)
   local cmd = ("%s -X -q -A -t -v ON_ERROR_STOP=1 -h %s -p %d -U postgres -d %s -c %s"):format(
      quote(M.bindir .. "/psql"), quote(self.dir), self.port, quote(dbname or "b24"), quote(sql))
   local out, code = b24.exec(cmd)
   if code ~= 0 then error("psql failed: " .. out .. "\nSQL: " .. sql, 2) end
   return out
end

-- The output's rows, each a list of its "|"-separated columns.
function DB:rows(sql)
   local rows = {}
   for line in self:psql(sql):gmatch("[^\n]+") do
      local cols = {}
      for c in (line .. "|"):gmatch("(.-)|") do cols[#cols + 1] = c end
      rows[#rows + 1] = cols
   end
   return rows
end

-- A setting as the server reports it (SHOW name).
function DB:show(name)
   return (self:psql("SHOW " .. name):gsub("%s+$", ""))
end

-- Stops the server (fast, then immediate, then SIGKILL) and removes its directory. Idempotent.
function DB:stop()
   if self.stopped then return end
   self.stopped = true
   -- its session: the shell and its tail (dash's kill takes -PGID, not -- -PGID)
   if self.watcher then os.execute("kill -TERM -" .. self.watcher .. " 2>/dev/null") end
   if self.running then
      local ok = pcall(self.shutdown, self, "fast")
      if not ok then ok = pcall(self.shutdown, self, "immediate") end
      if not ok and self.running then pcall(self.kill, self) end
   end
   os.execute(b24.clean .. "rm -rf " .. quote(self.dir))
end

-- Runs in the background, in its own session: once the Lua process pid is gone, stops the
-- server (immediate) and removes dir, unless stop() ended this watcher first.
local function start_watcher(self, pid)
   local cleanup = ("tail --pid=%d -f /dev/null; %s; rm -rf %s"):format(pid,
      as_server(("%s -D %s -w -t 30 -m immediate stop >/dev/null 2>&1"):format(quote(M.bindir .. "/pg_ctl"),
         quote(self.data)), self.dir), quote(self.dir))
   local out = must(b24.clean .. "setsid sh -c " .. quote(cleanup) .. " </dev/null >/dev/null 2>&1 & echo $!")
   self.watcher = tonumber(out:match("(%d+)"))
end

-- The lines postgresql.conf gets: a private TCP address, the socket in the directory, and the
-- durability settings stated, not assumed.
local function server_conf(dir, settings)
   local conf = {
      listen_addresses = "'127.0.0.1'", unix_socket_directories = "'" .. dir .. "'",
      fsync = "on", synchronous_commit = "on", full_page_writes = "on", wal_sync_method = "fdatasync",
      password_encryption = "'scram-sha-256'", max_connections = "100", shared_buffers = "'32MB'",
      logging_collector = "off", log_line_prefix = "'%m [%p] %u@%d '",
   }
   for k, v in pairs(settings or {}) do conf[k] = v end
   local names = {}
   for k in pairs(conf) do names[#names + 1] = k end
   table.sort(names)
   local lines = { "", "# helpers/pg.lua" }
   for _, k in ipairs(names) do lines[#lines + 1] = k .. " = " .. conf[k] end
   return table.concat(lines, "\n") .. "\n"
end

-- M.start{ dir = PARENT (a fresh directory is made in it; mktemp's default, /tmp, without),
-- settings = { postgresql.conf name = value } }: a running server with role and database b24.
function M.start(opts)
   opts = opts or {}
   assert(M.available())
   local dir
   if opts.dir then
      dir = must(b24.clean .. "mktemp -d " .. quote(opts.dir .. "/b24-pg.XXXXXX")):gsub("%s+$", "")
   else
      dir = b24.tmpdir()
   end
   local self = setmetatable({ dir = dir, data = dir .. "/data", log = dir .. "/postgres.log",
                               password = random_hex(16) }, DB)
   local ok, err = pcall(function()
      if is_root() then must("chown postgres: " .. quote(dir)) end
      must("chmod 700 " .. quote(dir))
      start_watcher(self, own_pid())
      -- trust on the unix socket (the helper's psql, as postgres), a password over TCP
      must(as_server(("%s -D %s -U postgres -E UTF8 --no-locale --auth-local=trust --auth-host=scram-sha-256"
         .. " >%s 2>&1"):format(quote(M.bindir .. "/initdb"), quote(self.data), quote(dir .. "/initdb.log")), dir),
         "initdb")
      local f = assert(io.open(self.data .. "/postgresql.conf", "a"))
      f:write(server_conf(dir, opts.settings))
      f:close()
      -- a port free a moment ago may be taken by the time the server binds it: another one then
      local why
      for _ = 1, 5 do
         self.port = b24.free_port()
         assert(self.port ~= 5432)
         local started
         started, why = self:try_up()
         if started then break end
         self.port = nil
         if not why:find("could not bind", 1, true) and not why:find("in use", 1, true) then break end
      end
      if not self.port then error("PostgreSQL did not start:\n" .. tostring(why)) end
      self:ready()
      self:psql(("CREATE ROLE b24 LOGIN PASSWORD '%s'"):format(self.password), "postgres")
      self:psql("CREATE DATABASE b24 OWNER b24", "postgres")
      self.url = ("postgresql://b24:%s@127.0.0.1:%d/b24"):format(self.password, self.port)
      -- the URL with the password masked, for messages
      self.masked_url = ("postgresql://b24:***@127.0.0.1:%d/b24"):format(self.port)
   end)
   if not ok then
      self.running = self.running or (self:postmaster_pid() ~= nil)
      self:stop()
      error(err, 2)
   end
   return self
end

return M
