-- The durable inbox of `b24 serve` over real HTTP: a router script makes b24 store each accepted
-- delivery in SQLite (--inbox FILE) before it answers 200, and handler threads run it later,
-- with retries, dead letters, deduplication and restarts; --sync runs it inside the request.
-- Waits are on log lines (the handler logs msg="saw NAME ID ATTEMPT" after recording its run)
-- or on deterministic points (FIFOs, a marker delivery behind one handler thread), never sleeps.
local b24 = require "helpers.b24"
local inbox = require "helpers.inbox"
local core = require "bitrix24.core"
local cjson = require "cjson"

local post, metric, wait_saw = inbox.post, inbox.metric, inbox.wait_saw
local STORED = 'b24_deliveries_total{result="stored"}'
local DUPLICATE = 'b24_deliveries_total{result="duplicate"}'
local OK_BODY = { success = true }
local DUP_BODY = { success = true, duplicate = true }

local function decoded(res) return cjson.decode(res.body) end

-- Nothing stored, nothing run, and the server still answers.
local function assert_nothing_stored(env, srv)
   local s = env:stats()
   assert.equal(0, s.pending)
   assert.equal(0, s.running)
   assert.equal(0, s.dead)
   assert.equal(0, metric(srv, STORED))
   assert.same({}, env:records())
   local status, h = inbox.healthz(srv)
   assert.equal(200, status)
   assert.equal(0, h.inbox_depth)
end

describe("b24 serve --inbox: the captured deliveries", function()
   for _, format in ipairs{ "form", "json" } do
      it("stores each captured " .. format
         .. " body with the right token, answers 200, and runs the handler on its event", function()
         local env = inbox.env{ tokens = inbox.tokens() }
         finally(function() env:cleanup() end)
         local srv = env:start()
         local ctype = format == "form" and inbox.FORM or (inbox.JSON .. "; charset=utf-8")
         for _, v in ipairs(inbox.vectors) do
            local res = post(srv, v[format], ctype)
            assert.equal(200, res.status, res.body)
            assert.same(OK_BODY, decoded(res))
            wait_saw(srv, v.name, v.id, 1)
         end
         for _, v in ipairs(inbox.vectors) do
            local runs = env:records(v.name)
            assert.equal(1, #runs)
            local r = runs[1]
            assert.equal(v.id, r.id)
            assert.equal(1, r.attempt)
            assert.equal(v.fields.ts, r.ts)
            assert.equal(v.member_id, r.member_id)
            assert.equal(v.domain, r.domain)
            assert.same(v.fields.data, r.data)
            assert.equal("spec client", r.client) -- ctx.client: the script's REST client
            assert.equal("function", r.log)       -- ctx.log
         end
         assert.equal(3, metric(srv, STORED))
         -- the other body of the same CRM event has the same dedup key
         local other = format == "form" and "json" or "form"
         local res = post(srv, inbox.deal[other], other == "form" and inbox.FORM or inbox.JSON)
         assert.equal(200, res.status)
         assert.same(DUP_BODY, decoded(res))
         assert.equal(1, metric(srv, DUPLICATE))
         assert.equal(3, metric(srv, STORED))
      end)
   end
end)

describe("b24 serve --inbox: verification refuses with 401 and stores nothing", function()
   it("refuses a wrong, missing or empty token, another portal's token and an unknown portal", function()
      local env = inbox.env{ tokens = inbox.tokens() }
      finally(function() env:cleanup() end)
      local srv = env:start()
      local contact = inbox.vectors[2]
      local cases = {
         { auth = { application_token = "not-the-token" }, why = "wrong application token" },
         { auth = { application_token = false }, why = "missing application token" },
         { auth = { application_token = "" }, why = "missing application token" },
         { auth = { application_token = contact.token }, why = "wrong application token" },
         { auth = { member_id = "0000000000000000000000000000dead" }, why = "unknown portal" },
      }
      for i, c in ipairs(cases) do
         local t = inbox.event{ name = "ONCRMDEALADD", id = tostring(100 + i), auth = c.auth }
         for _, body in ipairs{ { core.form_encode(t), inbox.FORM }, { cjson.encode(t), inbox.JSON } } do
            local res = post(srv, body[1], body[2])
            assert.equal(401, res.status, body[1])
            assert.equal(c.why, decoded(res).error)
         end
      end
      -- the body with no auth at all
      local res = post(srv, "event=ONCRMDEALADD&data[FIELDS][ID]=1&ts=1766047124")
      assert.equal(401, res.status)
      assert.equal(0, env:stats().pending)
      assert_nothing_stored(env, srv)
      assert.not_matches(contact.token, srv:log(), 1, true)
      -- the same server takes the right token
      assert.equal(200, post(srv, inbox.form{ name = "ONCRMDEALADD", id = "100" }).status)
      wait_saw(srv, "ONCRMDEALADD", "100", 1)
      assert.equal(1, metric(srv, STORED))
   end)

   it("refuses a bad or missing HMAC signature of the raw body (router with secret)", function()
      local secret = "spec-hmac-secret-0123456789"
      local env = inbox.env{ secret = secret }
      finally(function() env:cleanup() end)
      local srv = env:start()
      local body = inbox.form{ name = "ONCRMLEADADD", id = "201" }
      local good = core.hmac_sha256(secret, body, "hex")
      local cases = {
         { headers = {}, why = "missing signature header X-Bitrix-Signature" },
         { headers = { ["X-Bitrix-Signature"] = string.rep("0", 64) } },
         { headers = { ["X-Bitrix-Signature"] = core.hmac_sha256("other secret", body, "hex") } },
         { headers = { ["X-Bitrix-Signature"] = good:sub(1, 63) } },
         { headers = { ["X-Bitrix-Signature"] = good }, body = body .. "&x=1" }, -- changed after signing
         { headers = { ["X-Bitrix-Signature"] = core.hmac_sha256(secret, body .. "&x=1", "hex") } },
      }
      for _, c in ipairs(cases) do
         local res = post(srv, c.body or body, inbox.FORM, c.headers)
         assert.equal(401, res.status)
         assert.equal(c.why or "signature does not match the body", decoded(res).error)
      end
      assert_nothing_stored(env, srv)
      assert.not_matches(secret, srv:log(), 1, true)
      -- signed right, with and without the sha256= prefix
      assert.equal(200, post(srv, body, inbox.FORM, { ["X-Bitrix-Signature"] = good }).status)
      local body2 = inbox.form{ name = "ONCRMLEADADD", id = "202" }
      local res = post(srv, body2, inbox.FORM,
                               { ["X-Bitrix-Signature"] = "sha256=" .. core.hmac_sha256(secret, body2, "hex") })
      assert.equal(200, res.status)
      wait_saw(srv, "ONCRMLEADADD", "201", 1)
      wait_saw(srv, "ONCRMLEADADD", "202", 1)
      assert.equal(2, metric(srv, STORED))
   end)

   it("refuses a stale or future Standard-Webhooks timestamp and a bad signature", function()
      local key = "spec standard webhooks key 0123456789"
      local env = inbox.env{ standard_webhooks_secret = "whsec_" .. core.base64_encode(key) }
      finally(function() env:cleanup() end)
      local srv = env:start()
      local body = inbox.form{ name = "ONCRMDEALUPDATE", id = "301", ts = tostring(os.time()) }
      local function signed(ts, id, k, b)
         local content = (id or "msg_1") .. "." .. ts .. "." .. (b or body)
         local sig = core.base64_encode(core.hmac_sha256(k or key, content, "raw"))
         return { ["webhook-id"] = id or "msg_1", ["webhook-timestamp"] = tostring(ts),
                      ["webhook-signature"] = "v1," .. sig }
      end
      local now = os.time()
      local cases = {
         { signed(now - 600), "webhook-timestamp is outside the 5-minute tolerance" },
         { signed(now - 301 - 5), "webhook-timestamp is outside the 5-minute tolerance" },
         { signed(now + 600), "webhook-timestamp is outside the 5-minute tolerance" },
         { signed(now, "msg_1", "another key"), "no webhook-signature matches the body" },
         { signed(now, "msg_1", nil, body .. "&x=1"), "no webhook-signature matches the body" },
         { { ["webhook-id"] = "msg_1", ["webhook-timestamp"] = tostring(now) },
            "missing webhook-id, webhook-timestamp or webhook-signature header" },
      }
      for _, c in ipairs(cases) do
         local res = post(srv, body, inbox.FORM, c[1])
         assert.equal(401, res.status)
         assert.equal(c[2], decoded(res).error)
      end
      -- a stale timestamp is refused even with a signature that matches it
      local stale = signed(now - 3600)
      assert.equal(401, post(srv, body, inbox.FORM, stale).status)
      assert_nothing_stored(env, srv)
      local res = post(srv, body, inbox.FORM, signed(os.time()))
      assert.equal(200, res.status, res.body)
      wait_saw(srv, "ONCRMDEALUPDATE", "301", 1)
      assert.equal(1, metric(srv, STORED))
   end)
end)

describe("b24 serve --inbox: bodies it must refuse", function()
   local env, srv
   setup(function()
      env = inbox.env{ tokens = inbox.tokens() }
      srv = env:start()
   end)
   teardown(function() env:cleanup() end)
   after_each(function() assert_nothing_stored(env, srv) end)

   local deal, contact = inbox.deal, inbox.vectors[2]

   it("answers 4xx to truncated bodies", function()
      for _, n in ipairs{ 1, 10, math.floor(#deal.json / 2), #deal.json - 2 } do
         local res = post(srv, deal.json:sub(1, n), inbox.JSON)
         assert.equal(400, res.status, n)
         assert.equal("body is not valid JSON", decoded(res).error)
      end
      -- a form cut before auth[application_token] still parses, as PHP's would: no token, 401
      for _, n in ipairs{ 5, 40, math.floor(#contact.form / 2), #contact.form - 33 } do
         local res = post(srv, contact.form:sub(1, n), inbox.FORM)
         assert.is_true(res.status >= 400 and res.status < 500, n .. ": " .. res.status)
      end
   end)

   it("stores nothing from a body cut off on the wire (shorter than its Content-Length)", function()
      -- its own server: libmicrohttpd notices some of these hang-ups only at --client-timeout
      local env2 = inbox.env{ tokens = inbox.tokens() }
      finally(function() env2:cleanup() end)
      local srv2 = env2:start{ "--client-timeout", "1" }
      local socket = require "socket"
      for _, cut in ipairs{ 1, 10, #contact.form - 1 } do
         local from = #srv2.lines + 1
         local c = assert(socket.connect("127.0.0.1", srv2.port))
         c:settimeout(10)
         assert(c:send("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            .. "Content-Length: " .. #contact.form .. "\r\n\r\n" .. contact.form:sub(1, #contact.form - cut)))
         c:close()
         assert(inbox.wait_log_from(srv2, from, 'msg="request aborted"'))
      end
      assert_nothing_stored(env2, srv2)
   end)

   -- a body that carries the deal portal's token (the token is checked first)
   local function signed_form(body)
      return body .. "&auth[member_id]=" .. deal.member_id .. "&auth[application_token]=" .. deal.token
   end
   local function signed_json(body)
      return '{"auth":{"member_id":"' .. deal.member_id .. '","application_token":"' .. deal.token
         .. '"},' .. body:sub(2)
   end

   it("answers 400 to malformed bodies", function()
      local cases = { -- none can be read far enough to find a token
         { "{", inbox.JSON }, { '"ONCRMDEALADD"', inbox.JSON }, { "null", inbox.JSON },
         { '{"event":"X",}', inbox.JSON }, { '{"event":"X"} trailing', inbox.JSON },
         { deal.form, inbox.JSON }, { "\0\1\2\255\254", inbox.JSON }, { '{"a":1e999}', inbox.JSON },
         -- and these carry the right token, but are no event
         { signed_form("garbage"), inbox.FORM }, { signed_form("%%%&&&==="), inbox.FORM },
         { signed_form("event[]=ONCRMDEALADD"), inbox.FORM }, { signed_form(""), inbox.FORM },
         { signed_json('{"event":""}'), inbox.JSON }, { signed_json('{"event":{"a":1}}'), inbox.JSON },
         { signed_json('{"x":1}'), inbox.JSON },
      }
      for _, c in ipairs(cases) do
         local res = post(srv, c[1], c[2])
         assert.equal(400, res.status, c[1])
         assert.is_string(decoded(res).error)
      end
   end)

   it("answers 401 to a readable body without the token before looking at the rest", function()
      local cases = { -- each would be a 400 with the token
         { "", inbox.FORM }, { "garbage", inbox.FORM }, { "[1,2,3]", inbox.JSON },
         { "event[]=ONCRMDEALADD&auth[application_token]=x", inbox.FORM },
         { '{"event":""}', inbox.JSON },
         { "event=ONCRMDEALADD&data" .. string.rep("[x]", 100) .. "=1", inbox.FORM },
      }
      for _, c in ipairs(cases) do
         local res = post(srv, c[1], c[2])
         assert.equal(401, res.status, c[1])
      end
   end)

   it("answers 400 to 100,000 pairs, as a form and as JSON", function()
      local pairs_ = {}
      for i = 1, 100000 do pairs_[i] = "p" .. i .. "=1" end
      local form = "event=ONCRMDEALADD&" .. table.concat(pairs_, "&")
      assert.is_true(#form < 1048576)
      local res = post(srv, form, inbox.FORM)
      assert.equal(400, res.status)
      local keys = {}
      for i = 1, 100000 do keys[i] = ('"%x":1'):format(i) end
      local json = '{"event":"ONCRMDEALADD",' .. table.concat(keys, ",") .. "}"
      assert.is_true(#json < 1048576)
      assert.equal(400, post(srv, json, inbox.JSON).status)
      local list = '{"event":"ONCRMDEALADD","data":[' .. string.rep("1,", 99999) .. "1]}"
      assert.equal(400, post(srv, list, inbox.JSON).status)
   end)

   it("answers 400 to nesting 10,000 deep, as a form and as JSON", function()
      local form = signed_form("event=ONCRMDEALADD&data" .. string.rep("[x]", 10000) .. "=1")
      assert.equal(400, post(srv, form, inbox.FORM).status)
      local json = '{"event":"ONCRMDEALADD","data":' .. string.rep('{"x":', 10000) .. "1"
         .. string.rep("}", 10000) .. "}"
      assert.equal(400, post(srv, json, inbox.JSON).status) -- the scan of JSON counts the depth
      assert.equal(400, post(srv, string.rep("[", 10000) .. string.rep("]", 10000), inbox.JSON).status)
   end)

   it("answers 413 to a 10 MB body, with a Content-Length and chunked", function()
      local big = "event=ONCRMDEALADD&x=" .. string.rep("a", 10 * 1024 * 1024)
      local res = post(srv, big, inbox.FORM)
      assert.equal(413, res.status)
      assert.equal("request body too large", decoded(res).error)
      res = post(srv, big, inbox.FORM, { ["Transfer-Encoding"] = "chunked" })
      assert.equal(413, res.status)
   end)

   it("answers 415 to a wrong or missing content type, and 405 to other methods", function()
      for _, ctype in ipairs{ "text/plain", "application/xml", "multipart/form-data; boundary=x",
                                          "application/jsonx", "application/x-www-form-urlencodedx" } do
         local res = post(srv, deal.form, ctype)
         assert.equal(415, res.status, ctype)
      end
      local res = assert(srv:request{ method = "POST", path = "/hook", body = deal.form,
                                                      headers = { ["Content-Type"] = "" } })
      assert.equal(415, res.status)
      for _, method in ipairs{ "GET", "PUT", "DELETE" } do
         res = assert(srv:request{ method = method, path = "/hook", body = deal.form,
                                                headers = { ["Content-Type"] = inbox.FORM } })
         assert.equal(405, res.status, method)
         assert.equal("POST", res.headers.allow)
      end
   end)
end)

describe("b24 serve --inbox: retries and dead letters", function()
   local env, srv
   setup(function()
      env = inbox.env{ tokens = inbox.tokens() }
      srv = env:start{ "--retry-base", "0.01", "--max-attempts", "3", "--handler-threads", "1",
                               "--handler-timeout", "1" }
   end)
   teardown(function() env:cleanup() end)

   it("runs a handler that fails twice three times (attempts 1, 2, 3), and not again after it succeeds", function()
      local runs_ok, runs_error = metric(srv, 'b24_handler_runs_total{outcome="ok"}'),
         metric(srv, 'b24_handler_runs_total{outcome="error"}')
      local res = post(srv, inbox.form{ name = "ONCRMDEALADD", id = "3001", data = { FAILS = "2" } })
      assert.equal(200, res.status)
      wait_saw(srv, "ONCRMDEALADD", "3001", 3)
      local failed1 = assert(srv:wait_log('msg="delivery failed" event=ONCRMDEALADD attempt=1'))
      assert.matches("planned failure on attempt 1", failed1, 1, true)
      local failed2 = assert(srv:wait_log('msg="delivery failed" event=ONCRMDEALADD attempt=2'))
      assert.matches("planned failure on attempt 2", failed2, 1, true)
      assert(srv:wait_log('msg="delivery handled" event=ONCRMDEALADD attempt=3'))
      inbox.barrier(srv) -- the success is committed, and the delivery gone from the inbox
      assert.same({ 1, 2, 3 }, env:attempts("ONCRMDEALADD", "3001"))
      assert.same({}, env:pending_events())
      assert.equal(2, metric(srv, 'b24_handler_runs_total{outcome="error"}') - runs_error)
      assert.equal(2, metric(srv, 'b24_handler_runs_total{outcome="ok"}') - runs_ok) -- and the marker
      inbox.barrier(srv)
      assert.same({ 1, 2, 3 }, env:attempts("ONCRMDEALADD", "3001"))
   end)

   it("moves a handler that always fails to the dead letters with its last error; retry --dead runs it again",
      function()
      os.remove(env.flag)
      local res = post(srv, inbox.form{ name = "ONCRMLEADADD", id = "3002", data = { FAILS = "99" } })
      assert.equal(200, res.status)
      local dead = assert(srv:wait_log('msg="delivery moved to the dead letters" event=ONCRMLEADADD'))
      assert.matches("planned failure on attempt 3", dead, 1, true)
      inbox.barrier(srv)
      assert.same({ 1, 2, 3 }, env:attempts("ONCRMLEADADD", "3002"))
      local letters = env:list(true)
      assert.equal(1, #letters)
      assert.equal("ONCRMLEADADD", letters[1].event)
      assert.equal("dead", letters[1].state)
      assert.equal(3, letters[1].attempts)
      assert.matches("planned failure on attempt 3", letters[1].last_error, 1, true)
      assert.equal(1, env:stats().dead)
      assert.equal(1, metric(srv, "b24_dead_letters_total"))
      assert.same({}, env:pending_events())
      -- the failure is fixed; the dead letter goes back and runs (the server sees it within its
      -- one-second poll of the file)
      b24.write(env.flag, "fixed")
      local from = #srv.lines + 1
      local out, code = env:inbox_cmd("retry --dead")
      assert.equal(0, code, out)
      assert.same({ retried = 1 }, cjson.decode(out))
      wait_saw(srv, "ONCRMLEADADD", "3002", 1, from)
      assert(inbox.wait_log_from(srv, from, 'msg="delivery handled" event=ONCRMLEADADD attempt=1'))
      inbox.barrier(srv)
      assert.same({ 1, 2, 3, 1 }, env:attempts("ONCRMLEADADD", "3002"))
      assert.same({}, env:list(true))
      assert.same({}, env:pending_events())
      local purge_out, purge_code = env:inbox_cmd("purge --dead")
      assert.equal(0, purge_code)
      assert.same({ purged = 0 }, cjson.decode(purge_out))
   end)

   it("stops a handler that runs past --handler-timeout and retries it", function()
      local res = post(srv, inbox.form{ name = "ONCRMCONTACTUPDATE", id = "3003", data = { SPIN = "1" } })
      assert.equal(200, res.status)
      local failed = assert(srv:wait_log('msg="delivery failed" event=ONCRMCONTACTUPDATE attempt=1'))
      assert.matches("timed out", failed, 1, true)
      wait_saw(srv, "ONCRMCONTACTUPDATE", "3003", 2)
      assert(srv:wait_log('msg="delivery handled" event=ONCRMCONTACTUPDATE attempt=2'))
   end)
end)

-- `b24 inbox retry --dead` adds rows behind the server's back: its count of the inbox
-- (/healthz inbox_depth, b24_inbox_depth) must not drift below what the file holds.
describe("b24 serve --inbox: inbox_depth", function()
   local env, srv
   setup(function()
      env = inbox.env{ tokens = inbox.tokens() }
      srv = env:start{ "--retry-base", "0.01", "--max-attempts", "3", "--handler-threads", "1" }
   end)
   teardown(function() env:cleanup() end)

   it("keeps /healthz inbox_depth equal to what the file holds after b24 inbox retry --dead", function()
      env:fifos()
      local res = post(srv, inbox.form{ name = "ONCRMCOMPANYADD", id = "3004", data = { FAILS = "3" } })
      assert.equal(200, res.status)
      assert(srv:wait_log('msg="delivery moved to the dead letters" event=ONCRMCOMPANYADD'))
      -- while a marker runs, the file holds just it, and so must the count
      env:hold(srv)
      local s = env:stats()
      assert.same({ 0, 1, 1 }, { s.pending, s.running, s.dead })
      assert.equal(1, select(2, inbox.healthz(srv)).inbox_depth)
      assert.equal(1, metric(srv, "b24_inbox_depth"))
      env:release_hold(srv)
      -- the dead letter comes back and is handled
      b24.write(env.flag, "fixed")
      local from = #srv.lines + 1
      assert.equal(0, select(2, env:inbox_cmd("retry --dead")))
      wait_saw(srv, "ONCRMCOMPANYADD", "3004", 1, from)
      env:hold(srv)
      s = env:stats()
      assert.same({ 0, 1, 0 }, { s.pending, s.running, s.dead })
      local depth = select(2, inbox.healthz(srv)).inbox_depth
      local gauge = metric(srv, "b24_inbox_depth")
      env:release_hold(srv)
      assert.equal(1, depth)
      assert.equal(1, gauge)
   end)
end)

describe("b24 serve --inbox: a busy host", function()
   it("stores an add claimed into its ready queue, an update pending to merge into; runs each once", function()
      local env = inbox.env{ tokens = inbox.tokens() }
      finally(function() env:cleanup() end)
      env:fifos()
      local srv = env:start{ "--handler-threads", "1" }
      env:hold(srv) -- the one handler thread is busy
      assert.same(OK_BODY, decoded(post(srv, inbox.form{ name = "ONCRMLEADADD", id = "3101" })))
      assert.same(OK_BODY, decoded(post(srv, inbox.form{ name = "ONCRMLEADUPDATE", id = "3102" })))
      assert.same({ success = true, merged = true },
         decoded(post(srv, inbox.form{ name = "ONCRMLEADUPDATE", id = "3102", ts = "1766048002" })))
      local states = {}
      for _, row in ipairs(env:rows()) do states[row.event] = { row.state, row.attempts } end
      assert.same({ ONCRMLEADADD = { "running", 1 }, ONCRMLEADUPDATE = { "pending", 0 } }, states)
      env:release_hold(srv)
      wait_saw(srv, "ONCRMLEADADD", "3101", 1)
      wait_saw(srv, "ONCRMLEADUPDATE", "3102", 1)
      inbox.barrier(srv)
      assert.same({ 1 }, env:attempts("ONCRMLEADADD", "3101"))
      assert.same({ 1 }, env:attempts("ONCRMLEADUPDATE", "3102"))
      assert.same({}, env:rows())
   end)
end)

describe("b24 serve --inbox: duplicates", function()
   local env, srv
   setup(function()
      env = inbox.env{ tokens = inbox.tokens() }
      -- a failed run waits an hour for its retry: it stays pending for as long as the spec needs
      srv = env:start{ "--retry-base", "3600", "--handler-threads", "1" }
   end)
   teardown(function() env:cleanup() end)

   it("answers the same ADD delivery twice while pending as a duplicate and handles it once; again after success too",
      function()
      local body = inbox.form{ name = "ONCRMLEADADD", id = "4001", data = { FAILS = "1" } }
      local dup0 = metric(srv, DUPLICATE)
      local res = post(srv, body)
      assert.equal(200, res.status)
      assert.same(OK_BODY, decoded(res))
      wait_saw(srv, "ONCRMLEADADD", "4001", 1)
      inbox.barrier(srv) -- the failure is committed: pending, next try in an hour
      local rows = env:rows()
      assert.equal(1, #rows)
      assert.equal("pending", rows[1].state)
      assert.equal(1, rows[1].attempts)
      local stored = metric(srv, STORED)
      res = post(srv, body)
      assert.equal(200, res.status)
      assert.same(DUP_BODY, decoded(res))
      assert.equal(dup0 + 1, metric(srv, DUPLICATE))
      assert.equal(stored, metric(srv, STORED))
      -- b24 inbox retry ID runs the pending delivery now
      local out, code = env:inbox_cmd(("retry %d"):format(rows[1].id))
      assert.equal(0, code, out)
      assert.same({ retried = 1 }, cjson.decode(out))
      wait_saw(srv, "ONCRMLEADADD", "4001", 2)
      assert(srv:wait_log('msg="delivery handled" event=ONCRMLEADADD attempt=2'))
      inbox.barrier(srv)
      assert.same({}, env:pending_events())
      -- after success: remembered
      res = post(srv, body)
      assert.same(DUP_BODY, decoded(res))
      res = post(srv, inbox.form{ name = "ONCRMLEADADD", id = "4001" }) -- same key, other bytes
      assert.same(DUP_BODY, decoded(res))
      assert.equal(dup0 + 3, metric(srv, DUPLICATE))
      inbox.barrier(srv)
      assert.same({ 1, 2 }, env:attempts("ONCRMLEADADD", "4001")) -- one success
      -- a DELETE of the same ID is another delivery
      assert.same(OK_BODY, decoded(post(srv, inbox.form{ name = "ONCRMLEADDELETE", id = "4001" })))
      wait_saw(srv, "ONCRMLEADDELETE", "4001", 1)
   end)

   it("stores one of 20 identical deliveries sent at once and answers the others as duplicates", function()
      local body = inbox.form{ name = "ONCRMCOMPANYADD", id = "4010" }
      local stored, dup = metric(srv, STORED), metric(srv, DUPLICATE)
      local cmd = ("for i in $(seq 20); do curl -s -H 'Content-Type: %s' --data-binary %s %s & done; wait")
         :format(inbox.FORM, b24.quote(body), srv:url("/hook"))
      local p = assert(io.popen(b24.clean .. "sh -c " .. b24.quote(cmd)))
      local out = p:read("a")
      p:close()
      local ok, dups = 0, 0
      for answer in out:gmatch("{[^}]*}") do
         if answer == '{"success":true}' then ok = ok + 1 end
         if answer == '{"success":true,"duplicate":true}' then dups = dups + 1 end
      end
      assert.equal(1, ok, out)
      assert.equal(19, dups, out)
      assert.equal(stored + 1, metric(srv, STORED))
      assert.equal(dup + 19, metric(srv, DUPLICATE))
      wait_saw(srv, "ONCRMCOMPANYADD", "4010", 1)
      inbox.barrier(srv)
      assert.same({ 1 }, env:attempts("ONCRMCOMPANYADD", "4010"))
   end)

   it("runs an UPDATE of one object again once its run ended, and merges one into a pending retry", function()
      local function update(id, ts, data)
         return post(srv, inbox.form{ name = "ONCRMDEALUPDATE", id = id, ts = ts, data = data })
      end
      assert.same(OK_BODY, decoded(update("4002", "1766047200")))
      wait_saw(srv, "ONCRMDEALUPDATE", "4002", 1)
      inbox.barrier(srv)
      assert.same(OK_BODY, decoded(update("4002", "1766047200"))) -- the same bytes: runs again
      inbox.barrier(srv)
      assert.equal(2, #env:records("ONCRMDEALUPDATE", "4002"))
      -- 4003 fails and waits for its retry; a new delivery of it is merged into that retry
      assert.same(OK_BODY, decoded(update("4003", "1766047300", { FAILS = "1" })))
      wait_saw(srv, "ONCRMDEALUPDATE", "4003", 1)
      inbox.barrier(srv)
      assert.same({ success = true, merged = true }, decoded(update("4003", "1766047301")))
      assert.equal(1, #env:records("ONCRMDEALUPDATE", "4003"))
      assert.same({ "ONCRMDEALUPDATE" }, env:pending_events()) -- 4003, waiting for its retry
   end)
end)

describe("b24 serve --inbox: restarts", function()
   it("on SIGTERM lets the running handler finish and keeps what is pending; a restart runs it once", function()
      local env = inbox.env{ tokens = inbox.tokens() }
      finally(function() env:cleanup() end)
      env:fifos()
      local srv = env:start{ "--handler-threads", "1" }
      assert.equal(200, post(srv, inbox.form{ name = "ONCRMDEALADD", id = "5001", data = { BLOCK = "1" } }).status)
      assert.equal("5001", env:started()) -- the one handler thread is busy with it
      for _, id in ipairs{ "5002", "5003", "5004" } do
         assert.equal(200, post(srv, inbox.form{ name = "ONCRMDEALADD", id = id }).status)
      end
      srv:signal("TERM")
      assert(srv:wait_log("msg=stopping"))
      env:release()
      assert.equal(0, srv:stop())
      assert.same({ "5001" }, (function()
         local ids = {}
         for _, r in ipairs(env:records("ONCRMDEALADD")) do ids[#ids + 1] = r.id end
         return ids
      end)())
      local s = env:stats()
      assert.equal(3, s.pending)
      assert.equal(0, s.running)
      -- the next start on the same file runs the three, and not the one that finished
      local srv2 = env:start{ "--handler-threads", "1" }
      for _, id in ipairs{ "5002", "5003", "5004" } do wait_saw(srv2, "ONCRMDEALADD", id, 1) end
      inbox.barrier(srv2)
      for _, id in ipairs{ "5001", "5002", "5003", "5004" } do
         assert.same({ 1 }, env:attempts("ONCRMDEALADD", id))
      end
      assert.same({}, env:pending_events())
      assert.equal(0, srv2:stop())
   end)

   it("keeps a delivery's retry schedule over a restart; b24 inbox retry ID runs it now", function()
      local env = inbox.env{ tokens = inbox.tokens() }
      finally(function() env:cleanup() end)
      local srv = env:start{ "--handler-threads", "1", "--retry-base", "3600" }
      for _, id in ipairs{ "5101", "5102" } do
         assert.equal(200, post(srv, inbox.form{ name = "ONCRMLEADUPDATE", id = id, data = { FAILS = "1" } }).status)
         wait_saw(srv, "ONCRMLEADUPDATE", id, 1)
      end
      inbox.barrier(srv)
      assert.equal(0, srv:stop())
      local rows = env:list()
      assert.equal(2, #rows)
      for _, row in ipairs(rows) do
         assert.equal("pending", row.state)
         assert.equal(1, row.attempts)
         assert.is_true(row.next_at > os.time() + 1000)
      end
      -- the server is down: retry the first now; the second keeps its hour
      local out, code = env:inbox_cmd(("retry %d"):format(rows[1].id))
      assert.equal(0, code, out)
      local srv2 = env:start{ "--handler-threads", "1", "--retry-base", "0.01" }
      wait_saw(srv2, "ONCRMLEADUPDATE", "5101", 2)
      assert(srv2:wait_log('msg="delivery handled" event=ONCRMLEADUPDATE attempt=2'))
      inbox.barrier(srv2)
      assert.same({ 1, 2 }, env:attempts("ONCRMLEADUPDATE", "5101"))
      assert.same({ 1 }, env:attempts("ONCRMLEADUPDATE", "5102"))
      local left = env:rows()
      assert.equal(1, #left)
      assert.equal(rows[2].id, left[1].id)
      assert.equal(0, srv2:stop())
   end)

   it("runs a delivery that was running at SIGKILL again after a restart, as its next attempt", function()
      local env = inbox.env{ tokens = inbox.tokens() }
      finally(function() env:cleanup() end)
      env:fifos()
      local srv = env:start{ "--handler-threads", "1" }
      assert.equal(200, post(srv, inbox.form{ name = "ONTASKADD", id = "5201", data = { BLOCK = "1" } }).status)
      assert.equal("5201", env:started())
      srv:stop("KILL")
      local s = env:stats()
      assert.equal(1, s.running)
      assert.equal(0, s.pending)
      local srv2 = env:start{ "--handler-threads", "1" }
      wait_saw(srv2, "ONTASKADD", "5201", 2)
      assert(srv2:wait_log('msg="delivery handled" event=ONTASKADD attempt=2'))
      inbox.barrier(srv2)
      assert.same({ 2 }, env:attempts("ONTASKADD", "5201")) -- the killed run never got to record
      assert.same({}, env:pending_events())
   end)
end)

describe("b24 serve --inbox: a delivery that kills the host", function()
   -- A run that never ends (the host dies in it: a crash in a C module, the OOM killer) counts as
   -- an attempt when it starts. After --max-attempts such runs the delivery must go to the dead
   -- letters like one whose handler raises, not run again on every start of the host.
   it("runs no more than --max-attempts times over restarts, then is a dead letter", function()
      local env = inbox.env{ tokens = inbox.tokens() }
      finally(function() env:cleanup() end)
      local args = { "--handler-threads", "1", "--max-attempts", "2", "--retry-base", "0.01" }
      local srv = env:start(args)
      -- the handler thread may kill the host before the 200 is written: the delivery is stored
      -- either way (stored is what precedes the answer), which the attempts below show
      local res = srv:request{ method = "POST", path = "/",
                               headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
                               body = inbox.form{ name = "ONCRMDEALADD", id = "5301", data = { CRASH = "1" } } }
      assert.is_true(res == nil or res.status == 200)
      inbox.reap(srv)
      local srv2 = env:start(args) -- attempt 2 kills it again
      inbox.reap(srv2)
      assert.same({ 1, 2 }, env:attempts("ONCRMDEALADD", "5301"))
      local rows = env:list()
      assert.equal(1, #rows)
      assert.equal(2, rows[1].attempts)
      -- a third start must not run it a third time
      local srv3 = env:start(args)
      local ok = pcall(inbox.barrier, srv3)
      assert.same({ 1, 2 }, env:attempts("ONCRMDEALADD", "5301"))
      assert.is_true(ok, "the host died again")
      local letters = env:list(true)
      assert.equal(1, #letters)
      assert.equal(2, letters[1].attempts)
   end)
end)

describe("b24 serve --sync", function()
   it("runs the handler inside the request, without an inbox", function()
      local env = inbox.env{ tokens = inbox.tokens() }
      finally(function() env:cleanup() end)
      local srv = env:start{ "--sync" }
      local body = inbox.form{ name = "ONCRMDEALADD", id = "6001" }
      local res = post(srv, body)
      assert.equal(200, res.status)
      assert.same(OK_BODY, decoded(res))
      -- the run is recorded by the time the answer is here
      local runs = env:records("ONCRMDEALADD", "6001")
      assert.equal(1, #runs)
      assert.equal(1, runs[1].attempt)
      assert.equal("spec client", runs[1].client)
      -- deduplicated in memory
      assert.same(DUP_BODY, decoded(post(srv, body)))
      assert.equal(1, #env:records("ONCRMDEALADD", "6001"))
      -- a failing handler fails the request, and runs again when the delivery comes again
      local failing = inbox.form{ name = "ONCRMDEALADD", id = "6002", data = { FAILS = "1" } }
      res = post(srv, failing)
      assert.equal(500, res.status)
      assert.same({ error = "handler failed" }, decoded(res))
      assert.equal(500, post(srv, failing).status)
      assert.equal(2, #env:records("ONCRMDEALADD", "6002"))
      -- refusals as in the durable mode
      assert.equal(401, post(srv, inbox.form{ name = "ONCRMDEALADD", id = "6003",
                                                                  auth = { application_token = "nope" } }).status)
      assert.equal(0, #env:records("ONCRMDEALADD", "6003"))
      -- no inbox at all
      assert.is_nil(b24.read(env.inbox))
      assert.equal(1, metric(srv, DUPLICATE)) -- counted by the process-wide store
      assert.equal(0, select(2, inbox.healthz(srv)).inbox_depth)
      assert.not_matches('msg="delivery handled"', srv:log(), 1, true)
      assert.matches("inbox=none", srv:log(), 1, true)
   end)
end)
