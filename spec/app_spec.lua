-- bitrix24.app against `b24 emulate` as an OAuth portal, over real HTTP (issue 15): a `b24 serve`
-- receiver (spec/helpers/app_receiver_main.lua) takes the install and the online events, and
-- `b24 run spec/helpers/app_run.lua` processes share its store file (the inbox's SQLite).
local bitrix24 = require "bitrix24"
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local cjson = require "cjson"

local CLIENT_ID = "local.spec0app0000001"
local SECRET = "spec0app0secret0value0000000001"
local LEADS = 3000

describe("bitrix24.app on an emulated portal", function()
   local portal, receiver, dir, store, admin, member_id, env

   local function run(mode, ...)
      local parts = { b24.quote(b24.bin), "run", b24.quote(b24.root .. "/spec/helpers/app_run.lua"), b24.quote(store),
                      b24.quote(mode) }
      for _, a in ipairs({ ... }) do parts[#parts + 1] = b24.quote(a) end
      local out, code = b24.exec(env .. " " .. table.concat(parts, " "))
      assert.equal(0, code, out)
      local line = (out:match("^({[^\n]*})") or out:match("\n({[^\n]*})"))
      return assert(cjson.decode(line), out)
   end

   local function stats()
      return assert(admin:call("emulator.oauth.stats"))
   end

   -- Expires every token, then runs n application processes at once (with extra environment),
   -- each reading lead i; asserts each got its lead. Returns the OAuth stats from before.
   local function race(n, extra, name)
      assert(admin:call("emulator.tokens.expire"))
      local before = stats()
      local tmp = dir .. "/" .. name
      local cmds = {}
      for i = 1, n do
         cmds[i] = ("%s %s %s run %s %s call %s crm.lead.get '{\"id\":%d}' > %s.%d 2>&1"):format(extra, env,
            b24.quote(b24.bin), b24.quote(b24.root .. "/spec/helpers/app_run.lua"), b24.quote(store), member_id, i,
            tmp, i)
      end
      local _, code = b24.exec("( " .. table.concat(cmds, " & ") .. " & wait )")
      assert.equal(0, code)
      for i = 1, n do
         local out = assert(b24.read(tmp .. "." .. i))
         local got = cjson.decode((out:match("^({[^\n]*})") or out:match("\n({[^\n]*})")))
         assert.equal(tostring(i), tostring(got.result and got.result.ID), out)
      end
      return before
   end

   setup(function()
      dir = b24.tmpdir()
      store = dir .. "/inbox.sqlite"
      portal = b24.emulate{ args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET,
                                     "--seed-leads", tostring(LEADS),
                                     -- a slow OAuth server (its answers held 1 s): refreshes started
                                     -- together overlap, as on a real one under load
                                     "--oauth-latency", "1000" } }
      env = "APP_CLIENT_ID=" .. CLIENT_ID .. " APP_CLIENT_SECRET=" .. SECRET .. " APP_OAUTH=" .. portal.base
      receiver = b24.start{ script_path = b24.root .. "/spec/helpers/app_receiver_main.lua",
                            args = { "--workers", "2", "--inbox", store }, env = env .. " " }
      admin = bitrix24.client(portal.base .. emu.path(""))
   end)
   teardown(function()
      if receiver then receiver:stop() end
      if portal then portal:stop() end
      if dir then os.execute("rm -rf " .. b24.quote(dir)) end
   end)

   it("stores a verified install, and its tokens appear in no log line", function()
      assert(admin:call("emulator.app.install", { url = receiver.base .. "/" }))
      assert(receiver:wait_log("app installed"), "the install was not handled")
      local p = run("portal")
      assert.equal(1, p.portals)
      member_id = p.member_id
      assert.is_string(member_id)
      local info = run("call", member_id, "app.info")
      assert.equal(CLIENT_ID, info.result.CODE)
      assert.not_matches(SECRET, receiver:log(), 1, true)
      assert.not_matches(SECRET, portal:log(), 1, true)
   end)

   it("refuses a forged install for the known portal and changes nothing", function()
      local before = run("portal")
      local endpoint = bitrix24.core.form_encode({ v = portal.base .. "/rest/" }):gsub("^v=", "")
      local body = "event=ONAPPINSTALL&data%5BVERSION%5D=1&ts=1700000000"
         .. "&auth%5Baccess_token%5D=forged0access&auth%5Brefresh_token%5D=forged0refresh"
         .. "&auth%5Bmember_id%5D=" .. member_id .. "&auth%5Bdomain%5D=" .. before.domain
         .. "&auth%5Bclient_endpoint%5D=" .. endpoint
         .. "&auth%5Bapplication_token%5D=forged0app0token"
      local res = assert(receiver:request{ method = "POST", path = "/",
         headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }, body = body })
      assert.equal(401, res.status)
      assert.matches("install not verified", res.body, 1, true)
      local after = run("portal")
      assert.equal(before.version, after.version)
      assert.equal(before.access_token_sha, after.access_token_sha)
   end)

   it("binds an event and handles its online delivery with the stored token", function()
      local bound = run("bind", member_id, receiver.base .. "/", "ONCRMDEALADD")
      assert.same({ "ONCRMDEALADD" }, bound.bound)
      assert.same({}, run("bind", member_id, receiver.base .. "/", "ONCRMDEALADD").bound) -- idempotent
      local id = assert(admin:call("crm.deal.add", { fields = { TITLE = "Mirrored deal" } }))
      assert(receiver:wait_log('title="Mirrored deal"'), "the deal event was not handled")
      assert.matches("id=" .. tostring(id), receiver:log(), 1, true)
   end)

   it("lists its bindings, and unbinds idempotently", function()
      local hook = receiver.base .. "/"
      assert.same({ "ONCRMLEADUPDATE" }, run("bind", member_id, hook, "ONCRMLEADUPDATE").bound)
      local names = {}
      for _, b in ipairs(run("bindings", member_id).bindings) do names[#names + 1] = b.event end
      table.sort(names)
      assert.same({ "ONCRMDEALADD", "ONCRMLEADUPDATE" }, names)
      assert.equal(1, run("unbind", member_id, hook, "ONCRMLEADUPDATE").count)
      assert.equal(0, run("unbind", member_id, hook, "ONCRMLEADUPDATE").count) -- nothing left: no error
      assert.equal(1, #run("bindings", member_id).bindings)
   end)

   it("refreshes once when the token expires in the middle of an export, and the export is exact", function()
      local before = stats()
      local got = run("export", member_id, "crm.lead.list", portal.base .. emu.path(""))
      assert.is_true(got.expired)
      assert.equal(LEADS, got.rows)
      assert.equal(LEADS, got.distinct)
      local after = stats()
      assert.equal(before.refreshes + 1, after.refreshes)
      assert.equal(before.invalid_grant, after.invalid_grant)
   end)

   it("refreshes once for 8 processes meeting the expiry at once: one token, no invalid_grant", function()
      local before = race(8, "", "race")
      local after = stats()
      assert.equal(before.refreshes + 1, after.refreshes)
      assert.equal(before.invalid_grant, after.invalid_grant)
   end)

   it("refreshes once for 8 processes meeting the expiry at once: one token, no invalid_grant", function()
      assert(admin:call("emulator.tokens.expire"))
      local before = stats()
      local tmp = dir .. "/race"
      local cmds = {}
      for i = 1, 8 do
         cmds[i] = ("%s %s run %s %s call %s crm.lead.get '{\"id\":%d}' > %s.%d 2>&1"):format(env, b24.quote(b24.bin),
            b24.quote(b24.root .. "/spec/helpers/app_run.lua"), b24.quote(store), member_id, i, tmp, i)
      end
      local _, code = b24.exec("( " .. table.concat(cmds, " & ") .. " & wait )")
      assert.equal(0, code)
      for i = 1, 8 do
         local out = assert(b24.read(tmp .. "." .. i))
         local got = cjson.decode((out:match("^({[^\n]*})") or out:match("\n({[^\n]*})")))
         assert.equal(tostring(i), tostring(got.result and got.result.ID), out)
      end
      local after = stats()
      assert.equal(before.refreshes + 1, after.refreshes)
      assert.equal(before.invalid_grant, after.invalid_grant)
      assert.equal(0, after.invalid_client - before.invalid_client)
   end)

   it("without single flight (leases running out at once) refreshes race: one wins, the rest take its token", function()
      local before = race(8, "APP_LEASE=0.000001", "race2")
      local after = stats()
      -- the processes start well within the OAuth server's second: without leases several
      -- refresh with the same token, the server takes one and refuses the rest (invalid_grant),
      -- and those take the winner's tokens from the store
      assert.equal(1, after.refreshes - before.refreshes)
      assert.is_true(after.invalid_grant - before.invalid_grant >= 1)
      io.stderr:write(("[app race without leases: 8 processes, %d refreshes, %d invalid_grant, 0 failures]\n")
         :format(after.refreshes - before.refreshes, after.invalid_grant - before.invalid_grant))
      assert.equal("1", run("call", member_id, "crm.lead.get", '{"id":1}').result.ID)
   end)

   it("a wrong client secret is a clear error, with no secret in it", function()
      assert(admin:call("emulator.tokens.expire"))
      local wrong = "APP_CLIENT_ID=" .. CLIENT_ID .. " APP_CLIENT_SECRET=wrong0secret0value APP_OAUTH=" .. portal.base
      local saved = env
      env = wrong
      local got = run("call", member_id, "crm.lead.get", '{"id":1}')
      env = saved
      assert.equal("invalid_client", got.code)
      assert.not_matches("wrong0secret0value", got.error, 1, true)
      -- the right secret still works: the failed attempt spent nothing
      assert.equal("1", run("call", member_id, "crm.lead.get", '{"id":1}').result.ID)
   end)
end)
