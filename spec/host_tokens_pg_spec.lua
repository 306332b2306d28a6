-- b24.host.tokens on PostgreSQL (issue 18), what the contract spec (host_tokens_spec.lua, which
-- runs the same store semantics on PostgreSQL too) cannot show: the schema made on open, open
-- errors with the password masked, database failures under an open store, text PostgreSQL cannot
-- hold, a server restarted and killed under a running `b24 serve` (the store reconnects), and the
-- point of it all: `bitrix24.app` processes sharing one database refresh an expired token once.
-- A real server (helpers/pg.lua), real processes; waits are on log lines, exits and polls with a
-- watchdog, never sleeps.
local bitrix24 = require "bitrix24"
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local pg = require "helpers.pg"
local socket = require "socket"
local cjson = require "cjson"

local HELPERS = b24.root .. "/spec/helpers/"
local SECRET = "at-91c4e2a7-secret-access" -- a token value no error or log line may carry

-- `b24 run tokens_run.lua URL OPS`: the decoded results (one per op).
local function run(url, ops)
   local out, code = b24.exec(("%s run %s %s %s"):format(b24.quote(b24.bin), b24.quote(HELPERS .. "tokens_run.lua"),
      b24.quote(url), b24.quote(cjson.encode(ops))))
   assert.equal(0, code, out)
   return assert(cjson.decode(out:match("([^\n]*)\n?$")), out)
end

-- The values op i returned (asserting it did not raise), JSON nulls as nil.
local function values(res, i)
   assert.is_nil(res[i].error, res[i].error)
   local r = {}
   for k = 1, res[i].n do
      local v = res[i].r[k]
      if v ~= cjson.null then r[k] = v end
   end
   return r
end

-- POST /store to a tokens_serve_main.lua server: the decoded results.
local function over_http(srv, ops)
   local res = assert(srv:request{ method = "POST", path = "/store", body = cjson.encode(ops),
                                   headers = { ["content-type"] = "application/json" } })
   assert.equal(200, res.status, res.body)
   return cjson.decode(res.body)
end

-- Whether process pid is alive (os.execute gives true on Lua 5.4, 0 on LuaJIT).
local function alive(pid)
   local ok = os.execute("kill -0 " .. pid .. " 2>/dev/null")
   return ok == true or ok == 0
end

-- Polls fn until it gives a true value (at most `seconds`): that value.
local function eventually(what, seconds, fn)
   local deadline = socket.gettime() + seconds
   while true do
      local v = fn()
      if v then return v end
      assert(socket.gettime() < deadline, "timed out waiting for " .. what)
      socket.select(nil, nil, 0.05)
   end
end

describe("b24.host.tokens on PostgreSQL", function()
   local db, n = nil, 0

   -- a new empty database on the server: its name and URL
   local function new_database()
      n = n + 1
      local name = "tokens_pg_" .. n
      db:psql(("CREATE DATABASE %s OWNER b24"):format(name), "postgres")
      return name, (db.url:gsub("/b24$", "/" .. name))
   end

   setup(function() db = pg.start() end)
   teardown(function() if db then db:stop() end end)

   it("creates b24's versioned schema when it opens a database that has none, readable by the next process", function()
      local name, url = new_database()
      assert.equal("", db:psql("SELECT to_regclass('b24_app_portals')", name):gsub("%s+", ""))
      local res = run(url, { { "list" }, { "put", { member_id = "m-1", access_token = SECRET } } })
      assert.same({ {} }, values(res, 1))
      assert.equal(1, values(res, 2)[1])
      assert.equal(3, tonumber(db:psql("SELECT max(version) FROM b24_schema", name):match("%d+"))) -- b24_pg.c
      local tables = db:psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables"
         .. " WHERE tablename LIKE 'b24_app_%'", name)
      assert.matches("b24_app_leases,b24_app_portals", tables, 1, true)
      -- stored where another process finds it, under the server's clock
      local rec = values(run(url, { { "get", "m-1" } }), 1)[1]
      assert.equal(SECRET, rec.access_token)
      assert.is_true(math.abs(rec.updated_at - os.time()) < 600)
      -- the postgres:// spelling names the same store
      local other = url:gsub("^postgresql://", "postgres://")
      assert.equal(SECRET, values(run(other, { { "get", "m-1" } }), 1)[1].access_token)
   end)

   it("raises on open with the password masked: a wrong password, a server not listening", function()
      local wrong = db.url:gsub(":" .. db.password .. "@", ":wrong-" .. db.password .. "@")
      local res = run(wrong, { { "list" } })
      assert.matches("b24.host.tokens: cannot connect to postgresql://b24:***@127.0.0.1:" .. db.port .. "/b24",
         res.open_error, 1, true)
      assert.matches("password authentication failed", res.open_error, 1, true)
      assert.is_nil(res.open_error:find(db.password, 1, true), res.open_error)
      local port = b24.free_port()
      res = run(("postgresql://b24:%s@127.0.0.1:%d/b24"):format(db.password, port), { { "list" } })
      assert.matches("cannot connect to postgresql://b24:***@127.0.0.1:" .. port, res.open_error, 1, true)
      assert.is_nil(res.open_error:find(db.password, 1, true), res.open_error)
   end)

   it("answers nil, err naming what failed when the database fails under an open store, no value in it", function()
      local name, url = new_database()
      local drop = ("%s -X -q -h %s -p %d -U postgres -d %s -c %s"):format(b24.quote(pg.bindir .. "/psql"),
         b24.quote(db.dir), db.port, name, b24.quote("DROP TABLE b24_app_portals; DROP TABLE b24_app_leases"))
      local portal = { member_id = "m-drop", access_token = SECRET, domain = "drop.bitrix24.ru" }
      local res = run(url, {
         { "put", portal },
         { "execute", drop },
         { "put", portal },
         { "get", portal.member_id },
         { "swap", portal.member_id, 1, { access_token = SECRET } },
         { "list" },
         { "lease", portal.member_id, "w", 30 },
         { "delete", portal.member_id },
         { "release", portal.member_id, "w" },
      })
      assert.equal(1, values(res, 1)[1])
      assert.is_true(values(res, 2)[1])
      local whats = { "storing a portal", "reading a portal", "swapping a portal's fields", "listing the portals",
                      "taking a lease", "deleting a portal", "releasing a lease" }
      for i, what in ipairs(whats) do
         local r = values(res, i + 2)
         assert.is_nil(r[1])
         assert.matches("token store: " .. what .. " failed: ERROR:  relation \"b24_app_", r[2], 1, true)
         assert.is_nil(r[2]:find(SECRET, 1, true))
      end
   end)

   it("refuses text a PostgreSQL column cannot hold (a NUL, bytes not UTF-8) by field name, never the value", function()
      local _, url = new_database()
      local res = run(url, {
         { "put", { member_id = "m-text", access_token = SECRET .. "\0tail" } },
         { "put", { member_id = "m-text", refresh_token = SECRET .. "\255\254" } },
         { "put", { member_id = "m-\0" } },
         { "swap", "m-text", 0, { scope = "\192\128" } }, -- an overlong NUL
         { "lease", "m-text", "holder-\255", 30 },
         { "get", "m-\0" },
         { "put", { member_id = "m-text", access_token = SECRET, domain = "Ünïcode.bitrix24.ru" } },
         { "get", "ünïcode.bitrix24.ru" },
         { "get", "Ünïcode.BITRIX24.ru" },
      })
      local fields = { "access_token", "refresh_token", "member_id", "scope", "holder" }
      for i, field in ipairs(fields) do
         local r = values(res, i)
         assert.is_nil(r[1])
         assert.equal("token store: " .. field .. " is not UTF-8 text (a PostgreSQL store holds no other)", r[2])
      end
      assert.same({}, values(res, 6)) -- no portal has such a key: nil, no error
      assert.equal(1, values(res, 7)[1])
      -- the domain's ASCII case is ignored, not more (as the SQLite store's NOCASE)
      assert.same({}, values(res, 8))
      assert.equal(SECRET, values(res, 9)[1].access_token)
   end)

   it("lease: an expired one is taken over by the next holder; a refusal names the holder and its expiry", function()
      local _, url = new_database()
      local res = run(url, {
         { "lease", "m-clock", "first", 0.2 },
         { "lease", "m-clock", "second", 30 },
         { "lease_until", "m-clock", "second", 30 },
         { "lease", "m-clock", "first", 30 },
      })
      assert.same({ true }, values(res, 1))
      local r = values(res, 2)
      assert.is_false(r[1])
      assert.equal("first", r[2])
      assert.is_true(r[3] > os.time() - 60 and r[3] < os.time() + 60)
      assert.is_true(values(res, 3)[1])
      r = values(res, 4)
      assert.equal("second", r[2])
      assert.is_true(r[3] > os.time() + 20)
   end)

   it("reconnects under a running b24 serve after the server restarts and after it is killed", function()
      local _, url = new_database()
      local srv = b24.start{ script_path = HELPERS .. "tokens_serve_main.lua",
                             args = { "--inbox", url, "--workers", "1", "--handler-threads", "1" } }
      finally(function() srv:stop() end)
      local portal = { member_id = "m-restart", access_token = SECRET, scope = "0" }
      assert.equal(1, values(over_http(srv, { { "put", portal } }), 1)[1])
      -- a clean restart between two calls: the next call notices the closed connection first
      db:restart("fast")
      local res = over_http(srv, { { "get", "m-restart" }, { "swap", "m-restart", 1, { scope = "1" } } })
      assert.equal(SECRET, values(res, 1)[1].access_token)
      assert.equal(2, values(res, 2)[1])
      -- killed: each call answers nil, err (the store itself still works), never a value
      local pids = { db.pid }
      for pid in b24.exec("pgrep -P " .. db.pid):gmatch("%d+") do pids[#pids + 1] = pid end
      db:kill()
      eventually("the killed server's processes to exit", 60, function()
         for _, pid in ipairs(pids) do
            if alive(pid) then return false end
         end
         return true
      end)
      res = over_http(srv, { { "get", "m-restart" }, { "put", portal }, { "lease", "m-restart", "w", 30 } })
      local whats = { "reading a portal", "storing a portal", "taking a lease" }
      for i, what in ipairs(whats) do
         local r = values(res, i)
         assert.is_nil(r[1])
         assert.matches("token store: " .. what .. " failed: ", r[2], 1, true)
         assert.is_nil(r[2]:find(SECRET, 1, true), r[2])
         assert.is_nil(r[2]:find(db.password, 1, true), r[2])
      end
      -- back (recovered from the kill): within the backoff's 5 s the store connects again
      db:up()
      local rec = eventually("the store to reconnect", 30, function()
         return values(over_http(srv, { { "get", "m-restart" } }), 1)[1]
      end)
      assert.equal("1", rec.scope)
      assert.equal(2, rec.version) -- the failed put changed nothing
      assert.equal(3, values(over_http(srv, { { "swap", "m-restart", 2, { scope = "2" } } }), 1)[1])
      srv:stop()
      local log = srv:log()
      assert.is_nil(log:find(SECRET, 1, true))
      assert.is_nil(log:find(db.password, 1, true))
   end)

   describe("bitrix24.app processes sharing one database", function()
      local CLIENT_ID = "local.spec0pgapp000001"
      local CLIENT_SECRET = "spec0pgapp0secret0value00000001"
      local portal, receiver, dir, url, admin, member_id, env

      -- Expires every token, then runs 8 application processes at once (extra environment
      -- first), each reading lead i; asserts each got its lead; the OAuth stats from before.
      local function race(extra, name)
         assert(admin:call("emulator.tokens.expire"))
         local before = assert(admin:call("emulator.oauth.stats"))
         local cmds = {}
         for i = 1, 8 do
            cmds[i] = ("%s %s %s run %s %s call %s crm.lead.get '{\"id\":%d}' > %s/%s.%d 2>&1"):format(extra, env,
               b24.quote(b24.bin), b24.quote(HELPERS .. "app_run.lua"), b24.quote(url), member_id, i, dir, name, i)
         end
         local _, code = b24.exec("( " .. table.concat(cmds, " & ") .. " & wait )")
         assert.equal(0, code)
         for i = 1, 8 do
            local out = assert(b24.read(("%s/%s.%d"):format(dir, name, i)))
            -- the answer's line; a log line on stderr may come before or after it
            local got = cjson.decode((assert(out:match("^({[^\n]*})") or out:match("\n({[^\n]*})"), out)))
            assert.equal(tostring(i), tostring(got.result and got.result.ID), out)
         end
         return before, assert(admin:call("emulator.oauth.stats"))
      end

      setup(function()
         dir = b24.tmpdir()
         url = select(2, new_database())
         portal = b24.emulate{ args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. CLIENT_SECRET,
                                        "--seed-leads", "8",
                                        -- the OAuth server's answers held 1 s: refreshes overlap
                                        "--oauth-latency", "1000" } }
         env = "APP_CLIENT_ID=" .. CLIENT_ID .. " APP_CLIENT_SECRET=" .. CLIENT_SECRET .. " APP_OAUTH=" .. portal.base
         -- the receiver's b24.host.tokens() is its --inbox database
         receiver = b24.start{ script_path = HELPERS .. "app_receiver_main.lua",
                               args = { "--workers", "2", "--inbox", url }, env = env .. " " }
         admin = bitrix24.client(portal.base .. emu.path(""))
         assert(admin:call("emulator.app.install", { url = receiver.base .. "/" }))
         assert(receiver:wait_log("app installed"), "the install was not handled")
         local res = run(url, { { "list" } })
         member_id = values(res, 1)[1][1].member_id
      end)
      teardown(function()
         if receiver then receiver:stop() end
         if portal then portal:stop() end
         if dir then os.execute("rm -rf " .. b24.quote(dir)) end
      end)

      it("8 processes meeting the expiry at once refresh once: one token, no invalid_grant", function()
         local before, after = race("", "race")
         io.stderr:write(("[app race on PostgreSQL with leases: 8 processes, %d refreshes, %d invalid_grant]\n")
            :format(after.refreshes - before.refreshes, after.invalid_grant - before.invalid_grant))
         assert.equal(1, after.refreshes - before.refreshes)
         assert.equal(0, after.invalid_grant - before.invalid_grant)
         assert.equal(0, after.invalid_client - before.invalid_client)
      end)

      it("without the lease (it runs out at once) the same race spends the refresh token twice or more", function()
         local before, after = race("APP_LEASE=0.000001", "race2")
         assert.equal(1, after.refreshes - before.refreshes)
         assert.is_true(after.invalid_grant - before.invalid_grant >= 1) -- the lease is what prevented it
         io.stderr:write(("[app race on PostgreSQL without leases: 8 processes, %d refreshes, %d invalid_grant]\n")
            :format(after.refreshes - before.refreshes, after.invalid_grant - before.invalid_grant))
      end)

      it("kept the tokens out of every log line", function()
         for _, srv in ipairs{ receiver, portal } do
            local log = srv:log()
            assert.is_nil(log:find(CLIENT_SECRET, 1, true))
            assert.is_nil(log:find(db.password, 1, true))
         end
      end)
   end)
end)
