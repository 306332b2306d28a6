-- b24.host.tokens, the application token store of the b24 host (issue 15), over real files and
-- real processes: `b24 run` scripts (spec/helpers/tokens_run.lua) on a temp SQLite file, on a
-- real PostgreSQL server (helpers/pg.lua; issue 18) and on the memory store, several processes at
-- once on one file or database (the lease, compare-and-set), and `b24 serve` with a router whose
-- handler writes the store while its inbox works, the store read and written over HTTP
-- (spec/helpers/tokens_serve_main.lua) with --inbox FILE, URL, memory and --sync.
-- Waits are on log lines and process exits, never sleeps.
local b24 = require "helpers.b24"
local pg = require "helpers.pg"
local core = require "bitrix24.core"
local cjson = require "cjson"

local HELPERS = b24.root .. "/spec/helpers/"
local SECRET = "at-7f3e9c1d-secret-access"      -- a token value no error or log line may carry
local REFRESH = "rt-52a1b0e4-secret-refresh"
local APP_TOKEN = "spec-app-token"                -- the router's application token

-- `b24 run tokens_run.lua PATH OPS`: the decoded results (one per op), and the raw output.
local function run(path, ops)
   local out, code = b24.exec(("%s run %s %s %s"):format(b24.quote(b24.bin), b24.quote(HELPERS .. "tokens_run.lua"),
      b24.quote(path or "-"), b24.quote(cjson.encode(ops))))
   assert.equal(0, code, out)
   local line = out:match("([^\n]*)\n?$")
   return assert(cjson.decode(line), out), out
end

-- The values op i returned (asserting it did not raise).
local function values(res, i)
   assert.is_nil(res[i].error, res[i].error)
   local r = {}
   for k = 1, res[i].n do
      local v = res[i].r[k]
      if v ~= cjson.null then r[k] = v end
   end
   return r
end

local function value(res, i) return values(res, i)[1] end

local function tmpfile(name)
   local dir = b24.tmpdir()
   return dir .. "/" .. (name or "tokens.sqlite"), dir
end

local function rmdir(dir) os.execute(b24.clean .. "rm -rf " .. b24.quote(dir)) end

local PORTAL = {
   member_id = "a2a9e3d1b3c4f5e6a7b8c9d0e1f2a3b4", domain = "spec.bitrix24.ru", client_id = "local.5f1a.77",
   client_endpoint = "https://spec.bitrix24.ru/rest/", server_endpoint = "https://oauth.bitrix.info/rest/",
   access_token = SECRET, refresh_token = REFRESH, expires_at = 1796666400.25,
   application_token = "app-tok-1", scope = "crm,user", user_id = "1",
}

-- The PostgreSQL server of this file's PostgreSQL groups, started by the first that needs it.
local db

-- The URL of a new, empty database on that server (each group its own: member_ids repeat).
local function new_database(name)
   if not db then db = pg.start() end
   db:psql(("CREATE DATABASE %s OWNER b24"):format(name), "postgres")
   return (db.url:gsub("/b24$", "/" .. name))
end

-- Every method of the contract, on the store `where` names (a file, a URL or "memory"; or a
-- function giving one when the test runs).
local function semantics(where)
   local function store_path()
      if type(where) == "function" then return where() end
      return where
   end
   it("put stores every field, get finds it by member_id or domain, version counts from 1", function()
      local path = store_path()
      local res = run(path, {
         { "get", PORTAL.member_id },
         { "put", PORTAL },
         { "get", PORTAL.member_id },
         { "get", "SPEC.Bitrix24.RU" },
         { "put", { member_id = PORTAL.member_id, domain = PORTAL.domain, access_token = "second" } },
         { "get", PORTAL.domain },
         { "put", { member_id = "m-num", user_id = 42 } },
         { "get", "m-num" },
         { "get", "nobody.bitrix24.ru" },
      })
      assert.same({}, values(res, 1))
      assert.equal(1, value(res, 2))
      local rec = value(res, 3)
      for k, v in pairs(PORTAL) do assert.equal(v, rec[k], k) end
      assert.equal(1, rec.version)
      assert.is_number(rec.updated_at)
      assert.is_true(rec.updated_at > os.time() - 600)
      assert.same(rec, value(res, 4))
      assert.equal(2, value(res, 5))
      -- put replaces the whole record: fields it does not give are gone
      local second = value(res, 6)
      assert.equal("second", second.access_token)
      assert.is_nil(second.refresh_token)
      assert.is_nil(second.expires_at)
      assert.equal(2, second.version)
      assert.equal("42", value(res, 8).user_id)
      assert.same({}, values(res, 9))
   end)

   it("swap applies the fields given only at the stored version, and keeps the others", function()
      local path = store_path()
      local m = PORTAL.member_id
      local res = run(path, {
         { "delete", m },
         { "put", PORTAL },
         { "swap", m, 1, { access_token = "rotated", refresh_token = "rotated-r", expires_at = 1.5 } },
         { "swap", m, 1, { access_token = "lost" } },
         { "get", m },
         { "swap", m, 2, { refresh_token = false, member_id = "ignored" } },
         { "get", m },
         { "swap", "fresh-member", 3, { scope = "crm" } },
         { "swap", "fresh-member", 0, { scope = "crm", domain = "fresh.bitrix24.ru" } },
         { "swap", "fresh-member", 0, { scope = "again" } },
         { "get", "fresh.bitrix24.ru" },
      })
      assert.equal(2, value(res, 3))
      assert.same({ false, 2 }, values(res, 4))
      local rec = value(res, 5)
      assert.equal("rotated", rec.access_token)
      assert.equal("rotated-r", rec.refresh_token)
      assert.equal(1.5, rec.expires_at)
      assert.equal(PORTAL.domain, rec.domain) -- kept
      assert.equal(PORTAL.client_endpoint, rec.client_endpoint)
      assert.equal(3, value(res, 6))
      rec = value(res, 7)
      assert.is_nil(rec.refresh_token) -- false cleared it
      assert.equal(m, rec.member_id)
      assert.equal("rotated", rec.access_token)
      -- a portal not stored is version 0: swap at 0 creates it, once
      assert.same({ false, 0 }, values(res, 8))
      assert.equal(1, value(res, 9))
      assert.same({ false, 1 }, values(res, 10))
      rec = value(res, 11)
      assert.equal("fresh-member", rec.member_id)
      assert.equal("crm", rec.scope)
      assert.equal(1, rec.version)
   end)

   it("list gives every portal ordered by member_id; delete drops one and its lease", function()
      local path = store_path()
      local res = run(path, {
         { "put", { member_id = "zz-list" } },
         { "put", { member_id = "aa-list" } },
         { "put", { member_id = "mm-list" } },
         { "lease", "mm-list", "holder-1", 30 },
         { "delete", "mm-list" },
         { "delete", "never-stored" },
         { "list" },
         { "get", "mm-list" },
         { "lease", "mm-list", "holder-2", 30 },
      })
      assert.same({ true }, values(res, 4))
      assert.same({ true }, values(res, 5))
      assert.same({ true }, values(res, 6))
      local ids = {}
      for _, rec in ipairs(value(res, 7)) do ids[#ids + 1] = rec.member_id end
      local sorted = {}
      for i, id in ipairs(ids) do sorted[i] = id end
      table.sort(sorted)
      assert.same(sorted, ids)
      local seen = {}
      for _, id in ipairs(ids) do seen[id] = true end
      assert.is_true(seen["zz-list"] and seen["aa-list"])
      assert.is_nil(seen["mm-list"])
      assert.same({}, values(res, 8))
      assert.same({ true }, values(res, 9)) -- the lease went with the portal
   end)

   it("lease: taken when free, refused to another holder, extended by its holder, released", function()
      local path = store_path()
      local res = run(path, {
         { "lease", "lease-m", "w1", 30 },
         { "lease", "lease-m", "w2", 30 },
         { "lease", "lease-m", "w1", 60 },
         { "lease", "lease-m", "w2", 30 },
         { "release", "lease-m", "w2" },
         { "release", "lease-m", "w1" },
         { "release", "lease-m", "w1" },
         { "lease", "lease-m", "w2", 30 },
         { "release", "lease-m", "w2" },
      })
      assert.same({ true }, values(res, 1))
      local refused = values(res, 2)
      assert.is_false(refused[1])
      assert.equal("w1", refused[2])
      assert.is_true(refused[3] > os.time() + 20 and refused[3] < os.time() + 40)
      assert.same({ true }, values(res, 3))
      refused = values(res, 4)
      assert.equal("w1", refused[2])
      assert.is_true(refused[3] > os.time() + 50) -- extended to 60 s
      assert.same({ false }, values(res, 5))    -- w2 does not hold it
      assert.same({ true }, values(res, 6))
      assert.same({ false }, values(res, 7))
      assert.same({ true }, values(res, 8))
   end)

   it("refuses oversized values and empty keys with nil, err, raises on misuse, never echoes a value", function()
      local path = store_path()
      local big = SECRET .. ("x"):rep(4097)
      local res = run(path, {
         { "put", { member_id = "size-m", access_token = big } },
         { "put", { member_id = ("m"):rep(256) } },
         { "put", { member_id = "size-m", domain = ("d"):rep(256) } },
         { "put", { member_id = "" } },
         { "lease", "size-m", "", 30 },
         { "get", ("k"):rep(256) },
         { "put", { member_id = 12345, access_token = SECRET } },
         { "put", { access_token = SECRET } },
         { "put", { member_id = "size-m", access_token = { SECRET } } },
         { "get", 7 },
         { "swap", "size-m", "one", {} },
         { "lease", "size-m", "w", 0 },
         { "put", { member_id = "size-m", access_token = ("y"):rep(4096) } },
         { "get", "size-m" },
         { "get", "" },
      })
      for i = 1, 6 do
         local r = values(res, i)
         assert.is_nil(r[1])
         assert.is_string(r[2])
      end
      assert.matches("access_token is longer than 4096 bytes", values(res, 1)[2], 1, true)
      assert.matches("member_id is longer than 255 bytes", values(res, 2)[2], 1, true)
      assert.matches("domain is longer than 255 bytes", values(res, 3)[2], 1, true)
      assert.matches("member_id is empty", values(res, 4)[2], 1, true)
      assert.matches("holder is empty", values(res, 5)[2], 1, true)
      assert.matches("key is longer than 255 bytes", values(res, 6)[2], 1, true)
      assert.matches("bad record field 'member_id' (string expected, got number)", res[7].error, 1, true)
      assert.matches("bad record field 'member_id' (string expected, got nil)", res[8].error, 1, true)
      assert.matches("bad record field 'access_token' (string expected, got table)", res[9].error, 1, true)
      assert.matches("string expected, got number", res[10].error, 1, true)
      assert.matches("number expected, got string", res[11].error, 1, true)
      assert.matches("seconds (more than 0) expected", res[12].error, 1, true)
      assert.equal(1, value(res, 13)) -- 4 KiB exactly is fine
      assert.equal(4096, #value(res, 14).access_token)
      assert.is_nil(values(res, 15)[1]) -- no portal has an empty key: nil, as for any unknown one
      assert.is_nil(res[15].error)
      for i = 1, 12 do
         local text = cjson.encode(res[i])
         assert.is_nil(text:find(SECRET, 1, true), text)
      end
   end)
end

describe("b24.host.tokens under b24 run", function()
   local path, dir = tmpfile()
   teardown(function() rmdir(dir) end)

   describe("a SQLite file", function()
      semantics(path)

      it("creates the file in WAL mode with its two tables, readable by the next process", function()
         local p, d = tmpfile("new.sqlite")
         finally(function() rmdir(d) end)
         assert.equal(1, value(run(p, { { "put", PORTAL } }), 1))
         local res = run(p, { { "get", PORTAL.member_id } })
         assert.equal(SECRET, value(res, 1).access_token)
         local out = b24.exec("sqlite3 " .. b24.quote(p) .. " 'PRAGMA journal_mode' '.tables'")
         assert.matches("^wal\n", out)
         assert.matches("b24_app_leases", out, 1, true)
         assert.matches("b24_app_portals", out, 1, true)
      end)

      it("answers nil, err naming what failed when SQLite fails under an open store, no value in it", function()
         local p, d = tmpfile("dropped.sqlite")
         finally(function() rmdir(d) end)
         local drop = "sqlite3 " .. b24.quote(p) .. " 'DROP TABLE b24_app_portals; DROP TABLE b24_app_leases'"
         local res = run(p, {
            { "put", PORTAL },
            { "execute", drop },
            { "put", PORTAL },
            { "get", PORTAL.member_id },
            { "swap", PORTAL.member_id, 1, { access_token = SECRET } },
            { "list" },
            { "lease", PORTAL.member_id, "w", 30 },
            { "delete", PORTAL.member_id },
         })
         assert.equal(1, value(res, 1))
         assert.is_true(value(res, 2))
         local whats = { "storing a portal", "reading a portal", "swapping a portal's fields", "listing the portals",
                         "taking a lease", "deleting a portal" }
         for i, what in ipairs(whats) do
            local r = values(res, i + 2)
            assert.is_nil(r[1])
            assert.matches("token store: " .. what .. " failed: no such table: b24_app_", r[2], 1, true)
            assert.is_nil(r[2]:find(SECRET, 1, true))
         end
      end)

      it("raises with a clear message for a file that cannot be opened", function()
         local res = run("/nonexistent-dir/x/tokens.sqlite", { { "list" } })
         assert.matches("cannot open the token store /nonexistent-dir/x/tokens.sqlite", res.open_error, 1, true)
      end)
   end)

   describe("the memory store (\"memory\")", function()
      semantics("memory")

      it("holds at most 100,000 portals: the next one is nil, err; the ones stored still change", function()
         local res = run("memory", {
            { "fill", "bound-", 100001 },
            { "put", { member_id = "bound-000001", access_token = "changed" } },
            { "get", "bound-000001" },
            { "delete", "bound-000002" },
            { "put", { member_id = "bound-x" } },
         })
         local r = values(res, 1)
         assert.equal(100000, r[1])
         assert.matches("the memory store holds 100000 portals", r[2], 1, true)
         assert.equal(2, value(res, 2))
         assert.equal("changed", value(res, 3).access_token)
         assert.equal(1, value(res, 5)) -- room again after a delete
      end)
   end)

   it("raises without a path: only b24 serve has a store of its own", function()
      local res = run(nil, { { "list" } })
      assert.matches("no token store: give the path of a SQLite file", res.open_error, 1, true)
   end)
end)

-- `sh -c` running n `b24 run tokens_run.lua PATH OPS_i` at once, waiting for all: each one's results.
local function run_at_once(path, ops_of, n)
   local dir = b24.tmpdir()
   local parts = {}
   for i = 1, n do
      parts[#parts + 1] = ("%s run %s %s %s > %s 2>&1 &"):format(b24.quote(b24.bin),
         b24.quote(HELPERS .. "tokens_run.lua"), b24.quote(path), b24.quote(cjson.encode(ops_of(i))),
         b24.quote(dir .. "/out." .. i))
   end
   local out, code = b24.exec(table.concat(parts, " ") .. " wait")
   assert.equal(0, code, out)
   local results = {}
   for i = 1, n do
      local text = assert(b24.read(dir .. "/out." .. i))
      results[i] = assert(cjson.decode(text:match("([^\n]*)\n?$")), text)
   end
   rmdir(dir)
   return results
end

-- The contract across processes on one store; fresh() gives a store not used yet (a file, a
-- URL) and a function that removes it.
local function across_processes(fresh)
   local N = 8

   it("lease: of " .. N .. " processes at once exactly one gets it; after release another can", function()
      local path, remove = fresh() -- a fresh file: the processes also race to create it
      finally(remove)
      local results = run_at_once(path, function(i) return { { "lease", "portal-1", "proc-" .. i, 30 } } end, N)
      local winners, winner = 0, nil
      for i, res in ipairs(results) do
         local r = values(res, 1)
         if r[1] then
            winners, winner = winners + 1, "proc-" .. i
         else
            assert.is_false(r[1])
            assert.is_number(r[3])
         end
      end
      assert.equal(1, winners)
      for _, res in ipairs(results) do
         local r = values(res, 1)
         if not r[1] then assert.equal(winner, r[2]) end -- every loser names the winner
      end
      local res = run(path, {
         { "lease", "portal-1", "late", 30 },
         { "release", "portal-1", "late" },
         { "release", "portal-1", winner },
         { "lease", "portal-1", "late", 30 },
      })
      assert.same({ false, winner }, { values(res, 1)[1], values(res, 1)[2] })
      assert.same({ false }, values(res, 2))
      assert.same({ true }, values(res, 3))
      assert.same({ true }, values(res, 4))
   end)

   it("lease: an expired lease is taken over by the next holder, a live one is not", function()
      local path, remove = fresh()
      finally(remove)
      assert.same({ true }, values(run(path, { { "lease", "portal-2", "short", 0.001 } }), 1))
      assert.same({ true }, values(run(path, { { "lease", "portal-3", "long", 30 } }), 1))
      local res = run(path, {
         { "lease_until", "portal-2", "next", 30 },
         { "lease", "portal-2", "short", 30 },
         { "lease", "portal-3", "next", 30 },
      })
      assert.is_true(values(res, 1)[1])
      local r = values(res, 2)
      assert.is_false(r[1])
      assert.equal("next", r[2])
      r = values(res, 3)
      assert.is_false(r[1])
      assert.equal("long", r[2])
   end)

   it("swap is compare-and-set: " .. N .. " processes x 50 increments lose none", function()
      local path, remove = fresh()
      finally(remove)
      assert.equal(1, value(run(path, { { "put", { member_id = "cas", scope = "0" } } }), 1))
      local results = run_at_once(path, function(i) return { { "swap_loop", "cas", 50, "proc-" .. i } } end, N)
      for _, res in ipairs(results) do
         assert.equal(50, values(res, 1)[1])
      end
      local rec = value(run(path, { { "get", "cas" } }), 1)
      assert.equal(1 + N * 50, rec.version)
      assert.equal(tostring(N * 50), rec.scope)
      assert.matches("^proc%-%d$", rec.access_token)
   end)
end

describe("b24.host.tokens across processes on one file", function()
   across_processes(function()
      local path, dir = tmpfile()
      return path, function() rmdir(dir) end
   end)
end)

-- POST /store to the server: the decoded results.
local function over_http(srv, ops)
   local res = assert(srv:request{ method = "POST", path = "/store", body = cjson.encode(ops),
                                   headers = { ["content-type"] = "application/json" } })
   assert.equal(200, res.status, res.body)
   return cjson.decode(res.body)
end

-- An event delivery for the router: a portal's install-like event carrying a token in data.
local function deliver(srv, id, member_id, token)
   local body = core.form_encode{
      event = "ONAPPTEST", event_handler_id = "1", ts = "1766047124",
      data = { FIELDS = { ID = id }, TOKEN = token },
      auth = { domain = member_id .. ".bitrix24.ru", member_id = member_id, application_token = APP_TOKEN },
   }
   local res = assert(srv:request{ method = "POST", path = "/", body = body,
                                   headers = { ["content-type"] = "application/x-www-form-urlencoded" } })
   assert.equal(200, res.status, res.body)
end

local function serve(args)
   return b24.start{ script_path = HELPERS .. "tokens_serve_main.lua", args = args }
end

-- The store behind a server: written by its handler (the inbox's threads, or the request's with
-- --sync) and over HTTP, every write seen by the next request.
local function serve_semantics(srv, log_from)
   local res = over_http(srv, {
      { "put", PORTAL },
      { "get", PORTAL.domain },
      { "swap", PORTAL.member_id, 1, { access_token = SECRET .. "-2" } },
      { "swap", PORTAL.member_id, 1, { access_token = "lost" } },
      { "lease", PORTAL.member_id, "req-1", 30 },
      { "lease", PORTAL.member_id, "req-2", 30 },
      { "release", PORTAL.member_id, "req-1" },
      { "put", { member_id = PORTAL.member_id, access_token = ("z"):rep(5000) } },
      { "put", { member_id = "counter", scope = "0" } },
   })
   assert.equal(1, value(res, 1))
   assert.equal(SECRET, value(res, 2).access_token)
   assert.equal(2, value(res, 3))
   assert.same({ false, 2 }, values(res, 4))
   assert.same({ true }, values(res, 5))
   assert.equal("req-1", values(res, 6)[2])
   assert.same({ true }, values(res, 7))
   assert.matches("longer than 4096 bytes", values(res, 8)[2], 1, true)
   -- deliveries write the store from the handler while requests write it too
   for i = 1, 5 do
      deliver(srv, tostring(i), "portal-" .. i, SECRET .. "-ev" .. i)
      assert.equal(1, value(over_http(srv, { { "swap_loop", "counter", 1, "req" } }), 1))
   end
   for i = 1, 5 do assert(srv:wait_log("stored " .. i .. " 1"), srv:log(log_from)) end
   deliver(srv, "6", "portal-1", SECRET .. "-ev6") -- the same portal again: a swap from 1 to 2
   assert(srv:wait_log("stored 6 2"), srv:log(log_from))
   res = over_http(srv, { { "list" }, { "get", "portal-1.bitrix24.ru" }, { "get", "counter" } })
   local ids = {}
   for _, rec in ipairs(value(res, 1)) do ids[#ids + 1] = rec.member_id end
   assert.same({ PORTAL.member_id, "counter", "portal-1", "portal-2", "portal-3", "portal-4", "portal-5" }, ids)
   local rec = value(res, 2)
   assert.equal(SECRET .. "-ev6", rec.access_token)
   assert.equal(2, rec.version)
   assert.equal("2", rec.scope)
   rec = value(res, 3)
   assert.equal(1 + 5, rec.version) -- five swaps over HTTP, each on the version it read
   assert.equal("5", rec.scope)
end

-- No token value in the server's log.
local function assert_no_secret(srv)
   local log = srv:log()
   assert.is_nil(log:find(SECRET, 1, true), log)
   assert.is_nil(log:find(REFRESH, 1, true), log)
end

describe("b24.host.tokens under b24 serve", function()
   it("--inbox FILE: the store is the inbox's file, written beside the inbox as it works", function()
      local path, dir = tmpfile("inbox.sqlite")
      finally(function() rmdir(dir) end)
      local srv = serve{ "--inbox", path, "--workers", "2", "--handler-threads", "2" }
      finally(function() srv:stop() end)
      serve_semantics(srv, 1)
      -- another process sees what the server wrote, in the inbox's own file
      local res = run(path, { { "get", "portal-3" }, { "lease", PORTAL.member_id, "outside", 30 } })
      assert.equal(SECRET .. "-ev3", value(res, 1).access_token)
      assert.same({ true }, values(res, 2))
      local held = values(over_http(srv, { { "lease", PORTAL.member_id, "req-9", 30 } }), 1)
      assert.same({ false, "outside" }, { held[1], held[2] })
      -- the inbox ran every delivery and holds none
      local out, code = b24.exec(b24.quote(b24.bin) .. " inbox stats --inbox " .. b24.quote(path))
      assert.equal(0, code, out)
      local stats = cjson.decode(out)
      assert.equal(0, stats.pending)
      assert.equal(0, stats.dead)
      assert.equal(0, srv:stop())
      assert_no_secret(srv)
   end)

   for _, mode in ipairs{ { "--inbox", "memory" }, { "--sync" } } do
      it(table.concat(mode, " ") .. ": the process-wide memory store, shared by every thread", function()
         local srv = serve{ mode[1], mode[2], "--workers", "4", "--handler-threads", "2" }
         finally(function() srv:stop() end)
         serve_semantics(srv, 1)
         -- four worker threads, one store: what one request wrote, every other one reads
         for i = 1, 12 do
            local res = over_http(srv, { { "put", { member_id = "shared-" .. i, access_token = "v" .. i } } })
            assert.equal(1, value(res, 1))
         end
         for i = 1, 12 do
            local rec = value(over_http(srv, { { "get", "shared-" .. i } }), 1)
            assert.equal("v" .. i, rec.access_token)
         end
         assert.equal(0, srv:stop())
         assert_no_secret(srv)
      end)
   end
end)

describe("b24.host.tokens on PostgreSQL", function()
   teardown(function() if db then db:stop() end end)

   describe("under b24 run", function()
      local url
      semantics(function()
         url = url or new_database("tokens_semantics")
         return url
      end)
   end)

   describe("across processes on one database", function()
      local n = 0
      across_processes(function()
         n = n + 1
         return new_database("tokens_across_" .. n), function() end
      end)
   end)

   it("--inbox URL under b24 serve: the store is the inbox's database, written beside the inbox", function()
      local url = new_database("tokens_serve")
      local srv = serve{ "--inbox", url, "--workers", "2", "--handler-threads", "2" }
      finally(function() srv:stop() end)
      serve_semantics(srv, 1)
      -- another process sees what the server wrote, in the inbox's own database
      local res = run(url, { { "get", "portal-3" }, { "lease", PORTAL.member_id, "outside", 30 } })
      assert.equal(SECRET .. "-ev3", value(res, 1).access_token)
      assert.same({ true }, values(res, 2))
      local held = values(over_http(srv, { { "lease", PORTAL.member_id, "req-9", 30 } }), 1)
      assert.same({ false, "outside" }, { held[1], held[2] })
      -- in the tables b24_pg.c made, read by psql
      assert.equal("7", db:psql("SELECT count(*) FROM b24_app_portals", "tokens_serve"):match("%d+"))
      local out, code = b24.exec(b24.quote(b24.bin) .. " inbox stats --inbox " .. b24.quote(url))
      assert.equal(0, code, out)
      local stats = cjson.decode(out)
      assert.equal(0, stats.pending)
      assert.equal(0, stats.dead)
      assert.equal(0, srv:stop())
      assert_no_secret(srv)
      assert.is_nil(srv:log():find(db.password, 1, true))
   end)
end)
