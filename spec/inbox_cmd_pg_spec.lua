-- `b24 inbox stats|list|retry|purge` on a PostgreSQL inbox (issue 18), against a real server
-- (helpers/pg.lua) while real `b24 serve --inbox postgresql://…` hosts work on it (the recording
-- router of helpers/inbox.lua): the SQLite command's output formats, dead letters moved back and
-- run, a dead letter whose key already has a pending delivery merged into it, a pending delivery
-- run now, purge, B24_INBOX, and a database that is no inbox (left alone) or cannot be reached
-- (the password masked). Waits are on log lines and FIFOs, never sleeps.
if rawget(_G, "jit") then return end -- long scenarios: the Lua 5.4 pass only

local b24 = require "helpers.b24"
local inbox = require "helpers.inbox"
local pg = require "helpers.pg"
local cjson = require "cjson"

local post, wait_saw = inbox.post, inbox.wait_saw

-- `b24 inbox ARGS --inbox url` (env: variables before the command): output, exit status.
local function inbox_cmd(url, args, env)
   local cmd = (env or "") .. " " .. b24.quote(b24.bin) .. " inbox " .. args
   if url then cmd = cmd .. " --inbox " .. b24.quote(url) end
   return b24.exec(cmd)
end

-- The decoded JSON of a command that must succeed.
local function ok_json(out, code)
   assert.equal(0, code, out)
   return cjson.decode(out)
end

describe("b24 inbox on PostgreSQL", function()
   local db, n = nil, 0

   -- a new empty database on the server: its name and URL
   local function new_database()
      n = n + 1
      local name = "inbox_cmd_" .. n
      db:psql(("CREATE DATABASE %s OWNER b24"):format(name), "postgres")
      return name, (db.url:gsub("/b24$", "/" .. name))
   end

   setup(function() db = pg.start() end)
   teardown(function() if db then db:stop() end end)

   it("refuses a database without b24's schema (left as it is) and one it cannot reach, the password masked", function()
      local name, url = new_database()
      local out, code = inbox_cmd(url, "stats")
      assert.equal(1, code, out)
      assert.matches("b24 inbox: " .. db.masked_url:gsub("/b24$", "/" .. name) .. " is not an inbox", out, 1, true)
      assert.equal("", (db:psql("SELECT to_regclass('b24_deliveries')", name):gsub("%s+", ""))) -- nothing made
      local wrong = db.url:gsub(":" .. db.password .. "@", ":x" .. db.password .. "@")
      for _, cmd in ipairs{ "stats", "list --dead", "retry --dead", "purge --dead" } do
         out, code = inbox_cmd(wrong, cmd)
         assert.equal(1, code, out)
         assert.matches("b24 inbox: cannot connect to " .. db.masked_url, out, 1, true)
         assert.is_nil(out:find(db.password, 1, true), out)
      end
      -- misuse is refused before any connection, as for a file
      out, code = inbox_cmd(url, "purge")
      assert.equal(2, code, out)
      out, code = inbox_cmd(url, "retry")
      assert.equal(2, code, out)
      assert.matches("a delivery id or --dead expected", out, 1, true)
   end)

   describe("beside a host that retries fast", function()
      local env, srv, url

      setup(function()
         url = select(2, new_database())
         env = inbox.env{ tokens = inbox.tokens() }
         env.inbox = url
         srv = env:start{ "--retry-base", "0.01", "--max-attempts", "3", "--handler-threads", "1" }
      end)
      teardown(function() env:cleanup() end)

      it("lists a dead letter by its object and error (never its body), counts it, and retry --dead runs it again",
         function()
         os.remove(env.flag)
         local res = post(srv, inbox.form{ name = "ONCRMLEADADD", id = "3002", data = { FAILS = "99" } })
         assert.equal(200, res.status)
         assert(srv:wait_log('msg="delivery moved to the dead letters" event=ONCRMLEADADD'))
         inbox.barrier(srv)
         assert.same({ 1, 2, 3 }, env:attempts("ONCRMLEADADD", "3002"))
         local out, code = inbox_cmd(url, "list --dead")
         assert.equal(0, code, out)
         assert.is_nil(out:find(inbox.deal.token, 1, true), out) -- the body and its token stay inside
         local letters = env:list(true)
         assert.equal(1, #letters)
         local l = letters[1]
         assert.equal("ONCRMLEADADD", l.event)
         assert.equal("3002", l.object)
         assert.equal("dead", l.state)
         assert.equal(3, l.attempts)
         assert.matches("planned failure on attempt 3", l.last_error, 1, true)
         assert.is_true(l.died_at >= l.received_at and math.abs(l.died_at - os.time()) < 600)
         local stats = env:stats()
         assert.same({ 0, 0, 1 }, { stats.pending, stats.running, stats.dead })
         assert.is_number(stats.remembered_keys)
         -- B24_INBOX names the database as --inbox does
         assert.same(stats.dead, ok_json(inbox_cmd(nil, "stats", "B24_INBOX=" .. b24.quote(url))).dead)
         -- fixed: back as pending, and the host (woken by NOTIFY b24_inbox) runs it
         b24.write(env.flag, "fixed")
         local from = #srv.lines + 1
         assert.same({ retried = 1, merged = 0 }, ok_json(inbox_cmd(url, "retry --dead")))
         wait_saw(srv, "ONCRMLEADADD", "3002", 1, from)
         assert(inbox.wait_log_from(srv, from, 'msg="delivery handled" event=ONCRMLEADADD attempt=1'))
         inbox.barrier(srv)
         assert.same({ 1, 2, 3, 1 }, env:attempts("ONCRMLEADADD", "3002"))
         assert.same({}, env:list(true))
         assert.same({}, env:pending_events())
         assert.same({ retried = 0, merged = 0 }, ok_json(inbox_cmd(url, "retry --dead")))
      end)

      it("retry ID of a dead letter whose key has a pending delivery merges it: one run, not two", function()
         env:fifos()
         os.remove(env.flag)
         local body = inbox.form{ name = "ONCRMLEADUPDATE", id = "3005", data = { FAILS = "99" } }
         assert.equal(200, post(srv, body).status)
         assert(srv:wait_log('msg="delivery moved to the dead letters" event=ONCRMLEADUPDATE'))
         local dead = env:list(true)
         assert.equal(1, #dead)
         -- the one handler thread held: a repeat of the object is stored and stays pending
         env:hold(srv)
         b24.write(env.flag, "fixed")
         assert.equal(200, post(srv, body).status)
         local rows = env:rows()
         assert.equal(1, #rows)
         assert.same({ "pending", "3005" }, { rows[1].state, rows[1].object })
         local out, code = inbox_cmd(url, ("retry %d"):format(dead[1].id))
         assert.same({ retried = 0, merged = 1 }, ok_json(out, code))
         assert.same({}, env:list(true)) -- the dead letter is gone
         rows = env:rows()
         assert.equal(1, #rows) -- into the pending one, not beside it
         local from = #srv.lines + 1
         env:release_hold(srv)
         wait_saw(srv, "ONCRMLEADUPDATE", "3005", 1, from)
         inbox.barrier(srv)
         assert.same({ 1, 2, 3, 1 }, env:attempts("ONCRMLEADUPDATE", "3005"))
         assert.same({}, env:pending_events())
      end)

      it("purge --dead drops every dead letter and says how many", function()
         os.remove(env.flag)
         for _, id in ipairs{ "3010", "3011" } do
            local from = #srv.lines + 1
            assert.equal(200, post(srv, inbox.form{ name = "ONCRMDEALADD", id = id, data = { FAILS = "99" } }).status)
            assert(inbox.wait_log_from(srv, from, 'msg="delivery moved to the dead letters" event=ONCRMDEALADD'))
         end
         inbox.barrier(srv)
         local out = assert(inbox_cmd(url, "list --dead --limit 1"))
         assert.equal(1, select(2, out:gsub("\n", ""))) -- --limit holds
         assert.equal(2, env:stats().dead)
         assert.same({ purged = 2 }, ok_json(inbox_cmd(url, "purge --dead")))
         assert.equal(0, env:stats().dead)
         assert.same({ purged = 0 }, ok_json(inbox_cmd(url, "purge --dead")))
         assert.is_nil(srv:log():find(db.password, 1, true))
      end)
   end)

   describe("beside a host whose retries wait an hour", function()
      local env, srv, url

      setup(function()
         url = select(2, new_database())
         env = inbox.env{ tokens = inbox.tokens() }
         env.inbox = url
         srv = env:start{ "--retry-base", "3600", "--handler-threads", "1" }
      end)
      teardown(function() env:cleanup() end)

      it("retry ID runs a pending delivery now; an ID that is neither is refused", function()
         os.remove(env.flag)
         assert.equal(200, post(srv, inbox.form{ name = "ONCRMLEADADD", id = "4001", data = { FAILS = "1" } }).status)
         wait_saw(srv, "ONCRMLEADADD", "4001", 1)
         inbox.barrier(srv) -- the failure committed: pending, its next try in an hour
         local rows = env:rows()
         assert.equal(1, #rows)
         assert.same({ "pending", 1 }, { rows[1].state, rows[1].attempts })
         assert.is_true(rows[1].next_at > os.time() + 600)
         local stats = env:stats()
         assert.equal(1, stats.pending)
         assert.is_true(stats.oldest_age_seconds >= 0 and stats.oldest_age_seconds < 600)
         local from = #srv.lines + 1
         assert.same({ retried = 1, merged = 0 }, ok_json(inbox_cmd(url, ("retry %d"):format(rows[1].id))))
         wait_saw(srv, "ONCRMLEADADD", "4001", 2, from)
         assert(inbox.wait_log_from(srv, from, 'msg="delivery handled" event=ONCRMLEADADD attempt=2'))
         inbox.barrier(srv)
         assert.same({}, env:pending_events())
         local out, code = inbox_cmd(url, "retry 999999")
         assert.equal(1, code, out)
         assert.matches("no dead letter or pending delivery 999999", out, 1, true)
      end)
   end)
end)
