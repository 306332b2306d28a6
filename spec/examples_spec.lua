-- Every example is run as a user would run it.
local run = require("helpers.b24").exec

describe("examples/demo.lua", function()
   it("decodes the sample delivery, verifies its token and masks it in the output", function()
      local out, code = run("lua5.4 examples/demo.lua")
      assert.equal(0, code)
      assert.matches("event ONCRMLEADADD for id 4021 from example.bitrix24.com: token verified", out, 1, true)
      assert.not_matches("demo0token0for0the0readme", out, 1, true)
      assert.matches("fields%5BPHONE%5D%5B0%5D%5BVALUE%5D=%2B7+900+000-00-00", out, 1, true)
   end)

   it("rejects a delivery whose token does not match, with exit status 1", function()
      local out, code = run("B24_APP_TOKEN=another lua5.4 examples/demo.lua")
      assert.equal(1, code)
      assert.matches("token REJECTED", out, 1, true)
   end)
end)

-- The seed's examples end to end: `b24 emulate` as the portal (real HTTP), and a recording
-- `b24 serve` on loopback as the external system and as Telegram. Waits are on log lines.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local cjson = require "cjson"

local q = b24.quote
local APP_TOKEN = "spec0examples0app0token00000001"
local SYNC_TOKEN = "spec-sync-bearer-0123456789"
local BOT_TOKEN = "123456789:spec-bot-token-AAbbCCdd"

-- A free loopback port (the emulator's, so the example server can be told its webhook before
-- the emulator, which needs the example server's URL for its events, starts).
local free_port = b24.free_port

-- A recording stand-in for an external HTTP API: each request becomes a JSON line of file
-- { method, path, authorization, idempotency_key, content_type, body } and a log line
-- "recorded … seq=rNr". It answers 200 {"ok":true,…}; a body with "Flaky" gets 500 the first
-- time it comes, a body with "Refused" gets 400 {"ok":false,"description":…} every time.
local function standin(dir)
   local file = dir .. "/requests.ndjson"
   local srv = b24.start{ args = { "--workers", "1" }, script = ([[
    local host = require "b24.host"
    local cjson = require "cjson"
    local n, seen = 0, {}
    return function(req)
      n = n + 1
      local h = req.headers
      local f = assert(io.open(%q, "ab"))
      f:write(cjson.encode{ method = req.method, path = req.path, body = req.body,
        authorization = h["authorization"] or "", idempotency_key = h["idempotency-key"] or "",
        content_type = h["content-type"] or "" }, "\n")
      f:close()
      seen[req.body] = (seen[req.body] or 0) + 1
      local status, body = 200, '{"ok":true,"result":{"message_id":1}}'
      if req.body:find("Flaky", 1, true) and seen[req.body] == 1 then
        status, body = 500, '{"ok":false,"error_code":500,"description":"Internal Server Error"}'
      elseif req.body:find("Refused", 1, true) then
        status, body = 400, '{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}'
      end
      host.log("info", "recorded", { seq = "r" .. n .. "r", status = status })
      return status, { ["Content-Type"] = "application/json" }, body
    end]]):format(file) }
   -- every request so far (after waiting for the n-th)
   function srv.requests(n)
      if n then assert(srv:wait_log("seq=r" .. n .. "r"), "request " .. n .. " did not arrive") end
      local out = {}
      local f = io.open(file, "rb")
      if not f then return out end
      for line in f:lines() do out[#out + 1] = cjson.decode(line) end
      f:close()
      return out
   end
   return srv
end

-- An example router script served with the durable inbox (a SQLite file) and fast retries,
-- and the emulator whose webhook it calls and whose events it receives.
local function portal_and_app(dir, script, env)
   local port = free_port()
   local webhook = "http://127.0.0.1:" .. port .. "/rest/1/" .. emu.CODE .. "/"
   local vars = { "B24_APP_TOKEN=" .. q(APP_TOKEN), "B24_WEBHOOK_URL=" .. q(webhook) }
   for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. q(v) end
   table.sort(vars)
   local app = b24.start{ script_path = b24.root .. "/examples/" .. script, env = table.concat(vars, " "),
      args = { "--inbox", dir .. "/inbox.sqlite", "--retry-base", "0.02", "--max-attempts", "4" } }
   local ok, portal = pcall(b24.emulate, { args = { "--listen", "127.0.0.1:" .. port, "--code", emu.CODE,
      "--token", APP_TOKEN, "--events-to", app.base .. "/b24", "--domain", "spec.bitrix24.test" } })
   if not ok then
      app:stop()
      error(portal)
   end
   return app, portal
end

-- Waits for a log line of srv (from line `from` on) matching the Lua pattern; returns it and
-- its index (nil when srv exited first).
local function wait_line(srv, pattern, from)
   local i = from or 1
   while true do
      while srv.lines[i] do
         if srv.lines[i]:match(pattern) then return srv.lines[i], i end
         i = i + 1
      end
      local line = srv.stream:read("l")
      if not line or line:match("^b24%-exit=") then return nil end
      srv.lines[#srv.lines + 1] = line
   end
end

-- The log line of a handler's success: msg="NAME" attempt=N … id=ID (fields sorted by name).
local function wait_done(srv, msg, id, extra)
   return wait_line(srv, 'msg="' .. msg:gsub("%p", "%%%0") .. '" attempt=%d+ ' .. (extra or "")
      .. "id=" .. id .. "%f[%D]") or error("no " .. msg .. " for " .. id .. " in\n" .. srv:log())
end

-- The lines of a server's log that contain needle.
local function lines_with(srv, needle)
   local out = {}
   for _, line in ipairs(srv.lines) do
      if line:find(needle, 1, true) then out[#out + 1] = line end
   end
   return out
end

local function assert_no_secrets(...)
   for _, srv in ipairs{ ... } do
      local log = srv:log()
      for _, secret in ipairs{ APP_TOKEN, SYNC_TOKEN, BOT_TOKEN, emu.CODE, "spec-bot-token" } do
         assert.not_matches(secret, log, 1, true)
      end
   end
end

describe("examples/create_lead.lua", function()
   local portal, webhook
   setup(function()
      portal = b24.emulate{ args = { "--code", emu.CODE } }
      webhook = portal.base .. "/rest/1/" .. emu.CODE .. "/"
   end)
   teardown(function() if portal then portal:stop() end end)

   -- the lead as the portal keeps it
   local function lead(id)
      local status, body = emu.call(portal, "crm.lead.get", { id = id })
      assert.equal(200, status)
      return body.result
   end

   it("creates a lead under b24 run and prints its ID", function()
      local out, code = run("B24_WEBHOOK_URL=" .. q(webhook) .. " " .. q(b24.bin)
         .. " run examples/create_lead.lua 'Acme order' Ivan")
      assert.equal(0, code, out)
      local id = assert(out:match("^(%d+)\n$"), out)
      local got = lead(id)
      assert.equal("Acme order", got.TITLE)
      assert.equal("Ivan", got.NAME)
      assert.equal("WEB", got.SOURCE_ID)
   end)

   it("runs under plain " .. (jit and "luajit" or "lua5.4") .. " with the rock on the path", function()
      local lua, abi = "lua5.4", "5.4"
      if jit then lua, abi = "luajit", "5.1" end
      local out, code = run(("LUA_PATH=%s LUA_CPATH=%s B24_WEBHOOK_URL=%s %s examples/create_lead.lua 'From %s'")
         :format(q("./lua/?.lua;./lua/?/init.lua;;"), q("./build/" .. abi .. "/?.so;;"), q(webhook), lua, lua))
      assert.equal(0, code, out)
      local id = assert(out:match("^(%d+)\n$"), out)
      assert.equal("From " .. lua, lead(id).TITLE)
   end)

   it("reports a wrong webhook code as one readable line, the code masked, with exit status 1", function()
      local wrong = portal.base .. "/rest/1/wrongcode0secret77/"
      local out, code = run("B24_WEBHOOK_URL=" .. q(wrong) .. " " .. q(b24.bin) .. " run examples/create_lead.lua")
      assert.equal(1, code, out)
      assert.equal("create_lead: bitrix24: crm.lead.add: INVALID_CREDENTIALS: Invalid request credentials"
         .. " (HTTP 401, " .. portal.base .. "/rest/1/***/crm.lead.add) — the webhook's user number or code is"
         .. " wrong, or the webhook was deleted: copy its URL again from the portal (Developer resources > Other"
         .. " > Incoming webhook)\n", out)
      assert.not_matches("wrongcode0secret77", out, 1, true)
   end)

   it("prints its usage with exit status 2 without B24_WEBHOOK_URL, or with a URL that is not http(s)", function()
      for _, env in ipairs{ "env -u B24_WEBHOOK_URL", "B24_WEBHOOK_URL=", "B24_WEBHOOK_URL=ftp://portal/rest/1/x/" } do
         local out, code = run(env .. " " .. q(b24.bin) .. " run examples/create_lead.lua")
         assert.equal(2, code, out)
         assert.matches("usage: B24_WEBHOOK_URL=https://PORTAL/rest/USER_ID/CODE/ b24 run examples/create_lead.lua",
            out, 1, true)
      end
   end)
end)

describe("examples/lead_sync.lua", function()
   local dir, ext, app, portal
   setup(function()
      dir = b24.tmpdir()
      ext = standin(dir)
      app, portal = portal_and_app(dir, "lead_sync.lua",
         { SYNC_URL = ext.base .. "/api/leads", SYNC_TOKEN = SYNC_TOKEN })
   end)
   teardown(function()
      for _, srv in ipairs{ portal, app, ext } do srv:stop() end
      os.execute("rm -rf " .. q(dir))
   end)

   -- Adds a lead through the portal's REST API; its ID.
   local function add_lead(fields)
      local status, body = emu.call(portal, "crm.lead.add", { fields = fields })
      assert.equal(200, status)
      return emu.str(body.result)
   end

   it("posts the lead an ONCRMLEADADD event names as JSON with the Bearer token, retrying a 500 through the inbox",
   function()
      local id = add_lead{ TITLE = "Flaky sync", NAME = "Ivan", LAST_NAME = "Flaky",
         EMAIL = { { VALUE = "ivan@example.com", VALUE_TYPE = "WORK" },
                   { VALUE = "home@example.com", VALUE_TYPE = "HOME" } },
         PHONE = { { VALUE = "+7 900 000-00-01", VALUE_TYPE = "WORK" } } }
      local synced = wait_done(app, "lead_sync: lead synced", id)
      assert.matches("attempt=2", synced, 1, true)
      local reqs = ext.requests(2)
      assert.equal(2, #reqs)
      for _, r in ipairs(reqs) do
         assert.equal("POST", r.method)
         assert.equal("/api/leads", r.path)
         assert.equal("Bearer " .. SYNC_TOKEN, r.authorization)
         assert.equal("application/json", r.content_type)
         assert.matches("^%x+:lead:" .. id .. "$", r.idempotency_key)
         assert.same({ id = tonumber(id), name = "Ivan Flaky", email = "ivan@example.com",
                       phone = "+7 900 000-00-01" }, cjson.decode(r.body))
      end
      assert.equal(reqs[1].body, reqs[2].body)
      -- the first attempt failed on the 500 and was retried by the inbox
      local failed = lines_with(app, "delivery failed")
      assert.equal(1, #failed, app:log())
      assert.matches("attempt=1", failed[1], 1, true)
      assert.matches("HTTP 500", failed[1], 1, true)
      assert_no_secrets(app, portal, ext)
   end)

   it("sends null for a missing e-mail and phone, and logs a 4xx refusal once without retrying it", function()
      local before = #ext.requests()
      local refused = add_lead{ TITLE = "Refused sync", NAME = "Refused" }
      local _, at = wait_line(app, '"lead_sync: lead refused" id=' .. refused .. " status=400$")
      assert(at, app:log())
      -- the handler returned: the inbox is done with the delivery
      assert.matches('msg="delivery handled"', (wait_line(app, 'msg="delivery %a+" event=ONCRMLEADADD', at + 1)))
      -- a later lead goes through at once; the refused one was not tried again meanwhile
      local ok = add_lead{ TITLE = "Plain", NAME = "Olga" }
      wait_done(app, "lead_sync: lead synced", ok)
      local reqs = ext.requests(before + 2)
      assert.equal(before + 2, #reqs)
      assert.same({ id = tonumber(refused), name = "Refused", email = cjson.null, phone = cjson.null },
                  cjson.decode(reqs[before + 1].body))
      assert.same({ id = tonumber(ok), name = "Olga", email = cjson.null, phone = cjson.null },
                  cjson.decode(reqs[before + 2].body))
      assert.equal(1, #lines_with(app, "delivery failed"), app:log())
      assert_no_secrets(app, portal, ext)
   end)

   it("refuses a delivery with a wrong application token (401) and syncs nothing for it", function()
      local before = #ext.requests()
      local res = assert(app:request{ method = "POST", path = "/b24",
         headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
         body = "event=ONCRMLEADADD&data%5BFIELDS%5D%5BID%5D=1&ts=1766047124"
            .. "&auth%5Bdomain%5D=spec.bitrix24.test&auth%5Bapplication_token%5D=not0the0token" })
      assert.equal(401, res.status)
      assert.equal(before, #ext.requests())
   end)
end)

describe("examples/lead_sync.lua when the external system is down", function()
   it("retries a delivery that cannot connect, then keeps it as a dead letter", function()
      local dir = b24.tmpdir()
      local app, portal = portal_and_app(dir, "lead_sync.lua",
         { SYNC_URL = "http://127.0.0.1:" .. free_port() .. "/api/leads", SYNC_TOKEN = SYNC_TOKEN })
      finally(function()
         portal:stop()
         app:stop()
         os.execute("rm -rf " .. q(dir))
      end)
      local status, body = emu.call(portal, "crm.lead.add", { fields = { TITLE = "Nowhere", NAME = "Ivan" } })
      assert.equal(200, status)
      assert(app:wait_log("delivery moved to the dead letters"), app:log())
      local failed = lines_with(app, "delivery failed")
      assert.equal(4, #failed, app:log()) -- --max-attempts 4
      for i, line in ipairs(failed) do
         assert.matches("attempt=" .. i, line, 1, true)
         assert.matches("lead_sync: lead " .. emu.str(body.result) .. " not synced: connect: ", line, 1, true)
      end
      assert_no_secrets(app, portal)
   end)

   it("does not start without its settings, and says which one is missing", function()
      for _, case in ipairs{ { "lead_sync.lua", "SYNC_TOKEN" }, { "telegram_notify.lua", "TELEGRAM_BOT_TOKEN" } } do
         local out, code = run(("B24_APP_TOKEN=t B24_WEBHOOK_URL=http://127.0.0.1:1/rest/1/c0de/"
            .. " SYNC_URL=http://127.0.0.1:1/"
            .. " env -u SYNC_TOKEN -u TELEGRAM_BOT_TOKEN %s serve --listen 127.0.0.1:0 --inbox memory examples/%s")
            :format(q(b24.bin), case[1]))
         assert.equal(1, code, out)
         assert.matches(case[1]:gsub("%.lua$", "") .. ": set " .. case[2], out, 1, true)
      end
   end)
end)

describe("examples/telegram_notify.lua", function()
   local dir, tg, app, portal
   setup(function()
      dir = b24.tmpdir()
      tg = standin(dir)
      app, portal = portal_and_app(dir, "telegram_notify.lua",
         { TELEGRAM_API = tg.base, TELEGRAM_BOT_TOKEN = BOT_TOKEN, TELEGRAM_CHAT_ID = "-1001234567890" })
   end)
   teardown(function()
      for _, srv in ipairs{ portal, app, tg } do srv:stop() end
      os.execute("rm -rf " .. q(dir))
   end)

   local function added(method, params)
      local status, body = emu.call(portal, method, params)
      assert.equal(200, status)
      return body.result
   end

   -- the sendMessage requests so far, by text
   local function messages(n)
      local out = {}
      for _, r in ipairs(tg.requests(n)) do
         assert.equal("POST", r.method)
         assert.equal("/bot" .. BOT_TOKEN .. "/sendMessage", r.path)
         assert.equal("application/json", r.content_type)
         local m = cjson.decode(r.body)
         assert.equal("-1001234567890", m.chat_id)
         out[#out + 1] = m.text
      end
      return out
   end

   it("sends a message naming each new lead, deal and task, with the title fetched through REST", function()
      local lead = emu.str(added("crm.lead.add", { fields = { TITLE = "Acme order" } }))
      wait_done(app, "telegram_notify: sent", lead, "event=ONCRMLEADADD ")
      local deal = emu.str(added("crm.deal.add", { fields = { TITLE = "Big deal" } }))
      wait_done(app, "telegram_notify: sent", deal, "event=ONCRMDEALADD ")
      local task = added("tasks.task.add", { fields = { TITLE = "Call back", RESPONSIBLE_ID = 1 } }).task.id
      wait_done(app, "telegram_notify: sent", task, "event=ONTASKADD ")
      local texts = messages(3)
      assert.same({
         "New lead #" .. lead .. ": Acme order\nhttps://spec.bitrix24.test/crm/lead/details/" .. lead .. "/",
         "New deal #" .. deal .. ": Big deal\nhttps://spec.bitrix24.test/crm/deal/details/" .. deal .. "/",
         "New task #" .. task .. ": Call back",
      }, texts)
      assert.equal(0, #lines_with(app, "delivery failed"), app:log())
      assert_no_secrets(app, portal)
   end)

   it("sends again after a 500 from Telegram, and logs a refusal with Telegram's reason without retrying", function()
      local before = #tg.requests()
      local flaky = emu.str(added("crm.lead.add", { fields = { TITLE = "Flaky lead" } }))
      local sent = wait_done(app, "telegram_notify: sent", flaky, "event=ONCRMLEADADD ")
      assert.matches("attempt=2", sent, 1, true)
      local failed = lines_with(app, "delivery failed")
      assert.equal(1, #failed, app:log())
      assert.matches("telegram sendMessage failed: HTTP 500", failed[1], 1, true)
      local refused = emu.str(added("crm.deal.add", { fields = { TITLE = "Refused deal" } }))
      local _, at = wait_line(app, '"telegram sendMessage refused" event=ONCRMDEALADD id=' .. refused
         .. ' reason="Bad Request: chat not found" status=400$')
      assert(at, app:log())
      assert.matches('msg="delivery handled"', (wait_line(app, 'msg="delivery %a+" event=ONCRMDEALADD', at + 1)))
      -- the next event goes through; the refused one was not sent again meanwhile
      local task = added("tasks.task.add", { fields = { TITLE = "After", RESPONSIBLE_ID = 1 } }).task.id
      wait_done(app, "telegram_notify: sent", task, "event=ONTASKADD ")
      local texts = messages(before + 4)
      assert.equal(before + 4, #texts)
      assert.matches("New lead #" .. flaky .. ": Flaky lead", texts[before + 1], 1, true)
      assert.equal(texts[before + 1], texts[before + 2])
      assert.matches("New deal #" .. refused .. ": Refused deal", texts[before + 3], 1, true)
      assert.equal("New task #" .. task .. ": After", texts[before + 4])
      assert.equal(1, #lines_with(app, "delivery failed"), app:log())
      assert_no_secrets(app, portal)
   end)
end)

describe("examples/app.lua", function()
   local CLIENT_ID, SECRET = "local.spec0example0app01", "spec0example0app0secret00000001"
   local dir, mirror, app, portal, admin, start_app
   setup(function()
      dir = b24.tmpdir()
      -- the outside system: logs each deal it is sent
      mirror = b24.start{ args = { "--workers", "1" }, script = [[
         local host = require "b24.host"
         local cjson = require "cjson.safe"
         return function(req)
            local d = cjson.decode(req.body or "") or {}
            host.log("info", "mirror got", { id = d.id, title = d.title, portal = d.portal })
            return 200, { ["Content-Type"] = "application/json" }, '{"ok":true}'
         end]] }
      portal = b24.emulate{ args = { "--code", emu.CODE, "--app", CLIENT_ID .. ":" .. SECRET } }
      local port = free_port()
      local public = "http://127.0.0.1:" .. port .. "/"
      start_app = function()
         return b24.start{ script_path = b24.root .. "/examples/app.lua",
            env = table.concat({ "APP_PUBLIC_URL=" .. q(public), "B24_CLIENT_ID=" .. q(CLIENT_ID),
               "B24_CLIENT_SECRET=" .. q(SECRET), "B24_OAUTH_SERVER=" .. q(portal.base),
               "MIRROR_URL=" .. q(mirror.base .. "/deals") }, " "),
            args = { "--listen", "127.0.0.1:" .. port, "--inbox", dir .. "/inbox.sqlite" } }
      end
      app = start_app()
      admin = require("bitrix24").client(portal.base .. emu.path(""))
   end)
   teardown(function()
      for _, srv in ipairs({ app, portal, mirror }) do if srv then srv:stop() end end
      if dir then os.execute("rm -rf " .. q(dir)) end
   end)

   it("binds on install and mirrors each new deal into the outside system", function()
      assert(admin:call("emulator.app.install", { url = app.base .. "/" }))
      assert(wait_line(app, 'msg="app: installed" bound=2'), app:log())
      local id = emu.str(assert(admin:call("crm.deal.add", { fields = { TITLE = "Mirror me" } })))
      assert(wait_line(app, 'msg="app: mirrored" .*id=' .. id .. "%f[%D]"), app:log())
      assert(wait_line(mirror, 'msg="mirror got" id=' .. id .. ' portal=[^ ]+ title="Mirror me"'), mirror:log())
      assert.not_matches(SECRET, app:log() .. portal:log(), 1, true)
      assert.is_true(assert(admin:call("emulator.offline.stats")).taken >= 1) -- it came through the queue
   end)

   it("mirrors the deals made while it was down, once it is back", function()
      app:stop()
      local ids = {}
      for i = 1, 3 do
         ids[i] = emu.str(assert(admin:call("crm.deal.add", { fields = { TITLE = "While down " .. i } })))
      end
      app = start_app()
      for i = 1, 3 do
         assert(wait_line(mirror, 'msg="mirror got" id=' .. ids[i] .. ' portal=[^ ]+ title="While down ' .. i .. '"'),
            mirror:log())
      end
   end)
end)
