-- bitrix24.router: every answer with its reason, each verification scheme (application token,
-- tokens per portal, hex HMAC, Standard Webhooks, max_age), routing patterns, dispatch of stored
-- deliveries, deduplication in handle, and a router served end to end by `b24 serve`.
local core = require "bitrix24.core"
local bitrix24 = require "bitrix24"
local router_module = require "bitrix24.router"
local cjson = require("cjson.safe").new()

local FORM = "application/x-www-form-urlencoded"
local JSON = "application/json"

local shared = require "helpers.shared"
local shared_dir, read = function() return shared.dir end, shared.read

local VECTORS = shared_dir() .. "/vectors/"
local DEAL_JSON = read(VECTORS .. "events/webhook-oncrmdealadd.json")
local DEAL = assert(cjson.decode(DEAL_JSON))
local DEAL_FORM = core.form_encode(DEAL)
local DEAL_TOKEN = DEAL.auth.application_token
local DEAL_MEMBER = DEAL.auth.member_id
local DEAL_DOMAIN = DEAL.auth.domain
local CONTACT_FORM = read(VECTORS .. "events/app-oncrmcontactadd.form")
local CONTACT_TOKEN = "3c6c9248ec54af6bea1159b43ee0ab32"
local SW = assert(cjson.decode(read(VECTORS .. "hmac.json"))).standard_webhooks[1]

local function post(body, content_type, headers)
   local h = { ["content-type"] = content_type or FORM }
   for k, v in pairs(headers or {}) do h[k] = v end
   return { method = "POST", path = "/", query = "", headers = h, body = body,
                remote_addr = "127.0.0.1" }
end

-- A form body for an event with the deal vector's portal and token.
local function body_of(name, id, ts, extra)
   local t = {
      event = name, data = { FIELDS = { ID = id } }, ts = ts or "1766047124",
      auth = { domain = DEAL_DOMAIN, member_id = DEAL_MEMBER, application_token = DEAL_TOKEN },
   }
   for k, v in pairs(extra or {}) do t[k] = v end
   return core.form_encode(t)
end

local function error_of(verdict_or_body)
   local body = type(verdict_or_body) == "table" and verdict_or_body.body or verdict_or_body
   local t = cjson.decode(body)
   return t and t.error
end

-- A recorder for handler calls: fn records (event, ctx) into calls.
local function recorder()
   local r = { calls = {} }
   function r.fn(event, ctx)
      r.calls[#r.calls + 1] = { event = event, ctx = ctx }
   end
   return r
end

-- A log collaborator for the router's log option: records each line.
local function log_recorder()
   local lines = {}
   return lines, function(level, msg, fields)
      lines[#lines + 1] = { level = level, msg = msg, fields = fields }
   end
end

describe("bitrix24.router", function()
   describe("construction", function()
      it("is bitrix24.router", function()
         assert.equal(router_module.new, bitrix24.router)
      end)

      it("raises for a router with no verification unless insecure = true", function()
         assert.has_error(function() bitrix24.router{} end)
         assert.has_error(function() bitrix24.router() end)
         assert.has_error(function() bitrix24.router{ max_age = 300 } end)
         assert.is_table(bitrix24.router{ insecure = true })
      end)

      it("raises on bad options", function()
         local bad = {
            { token = 1 }, { token = "" }, { tokens = "x" }, { tokens = {} },
            { tokens = { a = 1 } }, { token = "t", tokens = { a = "b" } }, { secret = {} },
            { standard_webhooks_secret = "whsec_!!!" }, { token = "t", key = "k" },
            { token = "t", now = 1 }, { token = "t", dedup_ttl = -1 }, { token = "t", max_age = "5" },
            { token = "t", max_body = 0 }, { token = "t", limits = { max_depth = 0 } },
            { token = "t", limits = 5 }, { token = "t", insecure = "yes" }, { token = "t", log = 1 },
         }
         for _, opts in ipairs(bad) do
            assert.has_error(function() bitrix24.router(opts) end)
         end
      end)

      it("never puts a secret in a construction error", function()
         local ok, err = pcall(bitrix24.router, { standard_webhooks_secret = "whsec_$ecret$" })
         assert.is_false(ok)
         assert.not_matches("$ecret$", err, 1, true)
      end)

      it("raises on bad on() arguments and chains", function()
         local r = bitrix24.router{ token = "t" }
         assert.has_error(function() r:on(nil, function() end) end)
         assert.has_error(function() r:on("X", "not a function") end)
         assert.has_error(function() r:on("ONCRM*ADD", function() end) end)
         assert.equal(r, r:on("X", function() end))
      end)
   end)

   describe("accept", function()
      local r
      before_each(function() r = bitrix24.router{ token = DEAL_TOKEN } end)

      it("answers 200 with the event, its dedup key and kind for a good form delivery", function()
         local v = r:accept(post(DEAL_FORM))
         assert.equal(200, v.status)
         assert.same({ ["Content-Type"] = JSON }, v.headers)
         assert.same({ success = true }, cjson.decode(v.body))
         assert.equal("ONCRMDEALADD", v.event.name)
         assert.equal("7405", v.event.id)
         assert.equal(DEAL_MEMBER .. "|ONCRMDEALADD|7405", v.key)
         assert.equal("add", v.kind)
      end)

      it("answers 200 for the JSON delivery, charset parameter allowed, with the same key", function()
         local v = r:accept(post(DEAL_JSON, "application/json; charset=utf-8"))
         assert.equal(200, v.status)
         assert.equal(DEAL_MEMBER .. "|ONCRMDEALADD|7405", v.key)
         assert.equal(DEAL_JSON, v.event.raw)
      end)

      it("answers 405 to a method other than POST", function()
         for _, m in ipairs{ "GET", "PUT", "DELETE", "HEAD" } do
            local req = post(DEAL_FORM)
            req.method = m
            local v = r:accept(req)
            assert.equal(405, v.status)
            assert.equal("POST expected", error_of(v))
            assert.is_nil(v.event)
            assert.is_nil(v.key)
         end
      end)

      it("answers 415 to another content type or none", function()
         for _, ct in ipairs{ "text/plain", "multipart/form-data; boundary=x", "application/jsonp", false } do
            local req = post(DEAL_FORM, ct or nil)
            if not ct then req.headers["content-type"] = nil end
            local v = r:accept(req)
            assert.equal(415, v.status)
            assert.matches("content type", error_of(v))
         end
      end)

      it("finds headers whatever their case when the host keeps it", function()
         local v = r:accept{ method = "POST", headers = { ["Content-Type"] = FORM }, body = DEAL_FORM }
         assert.equal(200, v.status)
      end)

      it("answers 413 to a body over max_body", function()
         local small = bitrix24.router{ token = DEAL_TOKEN, max_body = 100 }
         local v = small:accept(post(DEAL_FORM))
         assert.equal(413, v.status)
         assert.equal("request body too large", error_of(v))
         v = small:accept(post(DEAL_JSON, JSON))
         assert.equal(413, v.status)
      end)

      it("answers 400 to malformed bodies, with the reason in words", function()
         local cases = {
            { "{not json", JSON, "JSON" },
            { "[1,2,3]", JSON, "" },
            { "42", JSON, "JSON object" },
            { "data[FIELDS][ID]=1&ts=1", FORM, "event" },
            { '{"ts":"1"}', JSON, "event" },
            { "", FORM, "event" },
         }
         for _, c in ipairs(cases) do
            local v = r:accept(post(c[1], c[2]))
            assert.equal(400, v.status, c[1])
            assert.matches(c[3], error_of(v), 1, true)
         end
      end)

      it("answers 400 over the pair and depth limits", function()
         local limited = bitrix24.router{ token = DEAL_TOKEN, limits = { max_depth = 3, max_pairs = 5 } }
         local v = limited:accept(post(DEAL_FORM))
         assert.equal(400, v.status)
         assert.matches("more than 5 fields", error_of(v))
         v = limited:accept(post("event=X&a[b][c][d][e]=1"))
         assert.equal(400, v.status)
         assert.matches("deeper", error_of(v))
      end)

      it("keeps the default limits: 10,001 pairs and nesting 65 deep are 400", function()
         local insecure = bitrix24.router{ insecure = true }
         local many = { "event=X" }
         for i = 1, 10001 do many[#many + 1] = "p" .. i .. "=1" end
         assert.equal(400, insecure:accept(post(table.concat(many, "&"))).status)
         local deep = "event=X&a" .. string.rep("[a]", 65) .. "=1"
         assert.equal(400, insecure:accept(post(deep)).status)
         assert.equal(200, insecure:accept(post("event=X&a" .. string.rep("[a]", 63) .. "=1")).status)
      end)

      it("raises when the request is not a table", function()
         assert.has_error(function() r:accept(nil) end)
         assert.has_error(function() r:accept(post({})) end)
      end)
   end)

   describe("token", function()
      it("answers 401 to a wrong token, in words, echoing neither token", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         local v = r:accept(post(body_of("ONCRMDEALADD", "1", nil,
            { auth = { member_id = DEAL_MEMBER, application_token = "received-wrong-token" } })))
         assert.equal(401, v.status)
         assert.equal("wrong application token", error_of(v))
         assert.not_matches(DEAL_TOKEN, v.body, 1, true)
         assert.not_matches("received-wrong-token", v.body, 1, true)
         assert.is_nil(v.event)
      end)

      it("answers 401 to a missing token", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         local v = r:accept(post("event=ONCRMDEALADD&data[FIELDS][ID]=1&auth[member_id]=x"))
         assert.equal(401, v.status)
         assert.equal("missing application token", error_of(v))
         v = r:accept(post("event=ONCRMDEALADD&auth[application_token][]=" .. DEAL_TOKEN))
         assert.equal(401, v.status)
      end)

      it("rejects a token that is a prefix or an extension of the right one", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         for _, t in ipairs{ DEAL_TOKEN:sub(1, -2), DEAL_TOKEN .. "x", DEAL_TOKEN:upper() } do
            local v = r:accept(post(body_of("ONCRMDEALADD", "1", nil,
               { auth = { member_id = DEAL_MEMBER, application_token = t } })))
            assert.equal(401, v.status)
         end
      end)

      describe("tokens per portal", function()
         it("picks the token by member_id", function()
            local r = bitrix24.router{ tokens = { [DEAL_MEMBER] = DEAL_TOKEN, other = "zzz" } }
            assert.equal(200, r:accept(post(DEAL_FORM)).status)
         end)

         it("picks the token by domain, in any case", function()
            local r = bitrix24.router{ tokens = { [DEAL_DOMAIN:upper()] = DEAL_TOKEN,
                                                                     ["b24-other.bitrix24.ru"] = "zzz" } }
            assert.equal(200, r:accept(post(DEAL_FORM)).status)
            local contact = bitrix24.router{ tokens = { ["bitrix24-php-sdk-playground.bitrix24.com"] = CONTACT_TOKEN } }
            assert.equal(200, contact:accept(post(CONTACT_FORM)).status)
         end)

         it("prefers member_id over domain", function()
            local r = bitrix24.router{ tokens = { [DEAL_MEMBER] = DEAL_TOKEN, [DEAL_DOMAIN] = "zzz" } }
            assert.equal(200, r:accept(post(DEAL_FORM)).status)
            local wrong = bitrix24.router{ tokens = { [DEAL_MEMBER] = "zzz", [DEAL_DOMAIN] = DEAL_TOKEN } }
            assert.equal(401, wrong:accept(post(DEAL_FORM)).status)
         end)

         it("answers 401 for an unknown portal, and for a known portal's wrong token", function()
            local r = bitrix24.router{ tokens = { ["someone-else"] = DEAL_TOKEN } }
            local v = r:accept(post(DEAL_FORM))
            assert.equal(401, v.status)
            assert.equal("unknown portal", error_of(v))
            r = bitrix24.router{ tokens = { [DEAL_MEMBER] = CONTACT_TOKEN } }
            v = r:accept(post(DEAL_FORM))
            assert.equal(401, v.status)
            assert.equal("wrong application token", error_of(v))
            assert.not_matches(CONTACT_TOKEN, v.body, 1, true)
         end)
      end)
   end)

   describe("HMAC signature", function()
      local SECRET = "relay-secret-0123"
      local good = core.hmac_sha256(SECRET, DEAL_FORM, "hex")

      it("accepts the hex HMAC-SHA256 of the raw body, with or without 'sha256=', any case", function()
         local r = bitrix24.router{ secret = SECRET }
         for _, sig in ipairs{ good, "sha256=" .. good, good:upper(), " sha256=" .. good .. " " } do
            local v = r:accept(post(DEAL_FORM, FORM, { ["x-bitrix-signature"] = sig }))
            assert.equal(200, v.status, sig)
         end
      end)

      it("answers 401 to a wrong signature and to a missing header, echoing nothing secret", function()
         local r = bitrix24.router{ secret = SECRET }
         local wrong = core.hmac_sha256("other", DEAL_FORM, "hex")
         local v = r:accept(post(DEAL_FORM, FORM, { ["x-bitrix-signature"] = wrong }))
         assert.equal(401, v.status)
         assert.equal("signature does not match the body", error_of(v))
         assert.not_matches(wrong, v.body, 1, true)
         assert.not_matches(good, v.body, 1, true)
         assert.not_matches(SECRET, v.body, 1, true)
         v = r:accept(post(DEAL_FORM, FORM))
         assert.equal(401, v.status)
         assert.equal("missing signature header X-Bitrix-Signature", error_of(v))
         v = r:accept(post(DEAL_FORM, FORM, { ["x-bitrix-signature"] = "" }))
         assert.equal(401, v.status)
      end)

      it("verifies the raw bytes: the same fields in another order do not pass", function()
         local r = bitrix24.router{ secret = SECRET }
         local reordered = DEAL_FORM:gsub("^([^&]+)&(.*)$", "%2&%1")
         assert.are_not.equal(DEAL_FORM, reordered)
         local v = r:accept(post(reordered, FORM, { ["x-bitrix-signature"] = good }))
         assert.equal(401, v.status)
      end)

      it("checks the signature before parsing: a badly signed malformed body is 401", function()
         local r = bitrix24.router{ secret = SECRET }
         local v = r:accept(post("{broken", JSON, { ["x-bitrix-signature"] = good }))
         assert.equal(401, v.status)
         local sig = core.hmac_sha256(SECRET, "{broken", "hex")
         v = r:accept(post("{broken", JSON, { ["x-bitrix-signature"] = sig }))
         assert.equal(400, v.status)
      end)

      it("reads a configured header name", function()
         local r = bitrix24.router{ secret = SECRET, signature_header = "X-Hub-Signature-256" }
         assert.equal(200, r:accept(post(DEAL_FORM, FORM, { ["x-hub-signature-256"] = "sha256=" .. good })).status)
         local v = r:accept(post(DEAL_FORM, FORM, { ["x-bitrix-signature"] = good }))
         assert.equal(401, v.status)
         assert.equal("missing signature header X-Hub-Signature-256", error_of(v))
      end)

      it("requires the token as well when both are configured", function()
         local r = bitrix24.router{ secret = SECRET, token = "not-the-deal-token" }
         local v = r:accept(post(DEAL_FORM, FORM, { ["x-bitrix-signature"] = good }))
         assert.equal(401, v.status)
         assert.equal("wrong application token", error_of(v))
      end)
   end)

   describe("Standard Webhooks", function()
      local function sw_headers(id, ts, sig)
         return { ["webhook-id"] = id, ["webhook-timestamp"] = ts, ["webhook-signature"] = sig }
      end
      local function sign(id, ts, body)
         local key = core.base64_decode(SW.secret:sub(7))
         return "v1," .. core.hmac_sha256(key, id .. "." .. ts .. "." .. body, "base64")
      end
      local function at(ts)
         return function() return ts end
      end

      it("passes the vector of hmac.json (its payload is no event, so 400, not 401)", function()
         local r = bitrix24.router{ standard_webhooks_secret = SW.secret, now = at(tonumber(SW.timestamp)) }
         local v = r:accept(post(SW.payload, JSON, sw_headers(SW.id, SW.timestamp, SW.signature)))
         assert.equal(400, v.status)
         assert.equal("no 'event' field in the body", error_of(v))
         assert.equal(SW.signature, sign(SW.id, SW.timestamp, SW.payload))
      end)

      it("accepts an event signed the same way", function()
         local r = bitrix24.router{ standard_webhooks_secret = SW.secret, now = at(1766047124) }
         local v = r:accept(post(DEAL_JSON, JSON, sw_headers("msg_1", "1766047124",
            sign("msg_1", "1766047124", DEAL_JSON))))
         assert.equal(200, v.status)
         assert.equal("7405", v.event.id)
      end)

      it("answers 401 to a timestamp outside the 5-minute tolerance, either way", function()
         local ts = tonumber(SW.timestamp)
         for _, now in ipairs{ ts + 301, ts - 301, ts + 86400 } do
            local r = bitrix24.router{ standard_webhooks_secret = SW.secret, now = at(now) }
            local v = r:accept(post(SW.payload, JSON, sw_headers(SW.id, SW.timestamp, SW.signature)))
            assert.equal(401, v.status)
            assert.matches("tolerance", error_of(v))
         end
         local r = bitrix24.router{ standard_webhooks_secret = SW.secret, now = at(ts + 300) }
         assert.equal(400, r:accept(post(SW.payload, JSON, sw_headers(SW.id, SW.timestamp, SW.signature))).status)
      end)

      it("accepts when one of several space-separated signatures matches", function()
         local r = bitrix24.router{ standard_webhooks_secret = SW.secret, now = at(tonumber(SW.timestamp)) }
         local bogus = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
         local sigs = bogus .. " v1a,xyz " .. SW.signature .. " v1,not-base64!"
         local v = r:accept(post(SW.payload, JSON, sw_headers(SW.id, SW.timestamp, sigs)))
         assert.equal(400, v.status) -- verified; the payload is not an event
         v = r:accept(post(SW.payload, JSON, sw_headers(SW.id, SW.timestamp, bogus .. " v1,xyz")))
         assert.equal(401, v.status)
         assert.equal("no webhook-signature matches the body", error_of(v))
      end)

      it("reads signatures from repeated headers joined with ', '", function()
         local r = bitrix24.router{ standard_webhooks_secret = SW.secret, now = at(tonumber(SW.timestamp)) }
         local joined = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=, " .. SW.signature
         assert.equal(400, r:accept(post(SW.payload, JSON, sw_headers(SW.id, SW.timestamp, joined))).status)
         joined = SW.signature .. ", v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
         assert.equal(400, r:accept(post(SW.payload, JSON, sw_headers(SW.id, SW.timestamp, joined))).status)
      end)

      it("counts only v1 signatures", function()
         local r = bitrix24.router{ standard_webhooks_secret = SW.secret, now = at(tonumber(SW.timestamp)) }
         local v2 = "v2," .. SW.signature:sub(4)
         assert.equal(401, r:accept(post(SW.payload, JSON, sw_headers(SW.id, SW.timestamp, v2))).status)
      end)

      it("answers 401 to a changed id, timestamp or body, or a missing header", function()
         local ts = tonumber(SW.timestamp)
         local r = bitrix24.router{ standard_webhooks_secret = SW.secret, now = at(ts) }
         local cases = {
            post(SW.payload, JSON, sw_headers("msg_other", SW.timestamp, SW.signature)),
            post(SW.payload, JSON, sw_headers(SW.id, tostring(ts + 1), SW.signature)),
            post(SW.payload .. " ", JSON, sw_headers(SW.id, SW.timestamp, SW.signature)),
            post(SW.payload, JSON, sw_headers(nil, SW.timestamp, SW.signature)),
            post(SW.payload, JSON, sw_headers(SW.id, nil, SW.signature)),
            post(SW.payload, JSON, sw_headers(SW.id, SW.timestamp, nil)),
            post(SW.payload, JSON, sw_headers(SW.id, "soon", SW.signature)),
         }
         for i, req in ipairs(cases) do
            local v = r:accept(req)
            assert.equal(401, v.status, "case " .. i)
            assert.not_matches(SW.secret, v.body, 1, true)
            assert.not_matches(SW.secret:sub(7), v.body, 1, true)
         end
      end)
   end)

   describe("max_age", function()
      local function router_at(now)
         return bitrix24.router{ token = DEAL_TOKEN, max_age = 300, now = function() return now end }
      end

      it("accepts a delivery whose ts is within max_age", function()
         assert.equal(200, router_at(1766047124 + 300):accept(post(DEAL_FORM)).status)
         assert.equal(200, router_at(1766047124 - 300):accept(post(DEAL_FORM)).status)
      end)

      it("answers 401 to a stale delivery, one from the future, and one without ts", function()
         local v = router_at(1766047124 + 301):accept(post(DEAL_FORM))
         assert.equal(401, v.status)
         assert.equal("delivery is older than max_age", error_of(v))
         v = router_at(1766047124 - 301):accept(post(DEAL_FORM))
         assert.equal(401, v.status)
         local no_ts = "event=ONCRMDEALADD&data[FIELDS][ID]=1&auth[application_token]=" .. DEAL_TOKEN
         v = router_at(1766047124):accept(post(no_ts))
         assert.equal(401, v.status)
         assert.equal("missing or malformed ts", error_of(v))
      end)
   end)

   describe("patterns and dispatch", function()
      local function stored(body, ct)
         return { body = body, headers = { ["content-type"] = ct or FORM } }
      end

      it("runs exact (any case), prefix and '*' handlers in registration order", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         local order = {}
         r:on("*", function() order[#order + 1] = "any" end)
         r:on("oncrmdealadd", function() order[#order + 1] = "exact" end)
         r:on("ONCRMLEAD*", function() order[#order + 1] = "lead" end)
         r:on("ONCRMDEAL*", function() order[#order + 1] = "deal" end)
         r:on("ONCRMDEALUPDATE", function() order[#order + 1] = "update" end)
         assert.is_true(r:dispatch(stored(DEAL_FORM), { attempt = 1 }))
         assert.same({ "any", "exact", "deal" }, order)
      end)

      it("passes the event and the host's ctx to the handler", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         local rec = recorder()
         r:on("ONCRMDEALADD", rec.fn)
         local ctx = { attempt = 3, log = function() end, client = {} }
         assert.is_true(r:dispatch(stored(DEAL_JSON, JSON), ctx))
         assert.equal(1, #rec.calls)
         assert.equal(ctx, rec.calls[1].ctx)
         assert.equal("7405", rec.calls[1].event.id)
         assert.equal(DEAL_JSON, rec.calls[1].event.raw)
      end)

      it("does not verify again: a stored delivery is trusted", function()
         local r = bitrix24.router{ token = "another-token", secret = "s" }
         local rec = recorder()
         r:on("*", rec.fn)
         assert.is_true(r:dispatch(stored(DEAL_FORM)))
         assert.equal(1, #rec.calls)
         assert.equal(1, rec.calls[1].ctx.attempt)
      end)

      it("returns true when no handler matches", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         r:on("ONTASK*", function() error("must not run") end)
         assert.is_true(r:dispatch(stored(DEAL_FORM), {}))
      end)

      it("returns nil and the error with its traceback when a handler raises, and runs the rest", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         local ran = false
         r:on("ONCRMDEAL*", function() error("deal sync exploded") end)
         r:on("*", function() ran = true end)
         r:on("ONCRMDEALADD", function() error(setmetatable({}, { __tostring = function() return "custom" end })) end)
         r:on("ONCRMDEALADD", function() error({}) end)
         local ok, err = r:dispatch(stored(DEAL_FORM), {})
         assert.is_nil(ok)
         assert.equal("string", type(err))
         assert.matches("deal sync exploded", err, 1, true)
         assert.matches("stack traceback", err, 1, true)
         assert.matches("router_spec.lua", err, 1, true)
         assert.matches("custom", err, 1, true)
         assert.matches("error object is a table value", err, 1, true)
         assert.is_true(ran)
      end)

      it("returns nil, err for a stored body that does not parse", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         local ok, err = r:dispatch(stored("{", JSON), {})
         assert.is_nil(ok)
         assert.matches("does not parse", err)
         ok = r:dispatch({ headers = {} }, {})
         assert.is_nil(ok)
         assert.has_error(function() r:dispatch(nil, {}) end)
      end)
   end)

   describe("handle", function()
      local function new_router(opts)
         opts = opts or {}
         opts.token = opts.token or DEAL_TOKEN
         local clock = opts.clock or { t = 1766047124 }
         opts.now = function() return clock.t end
         opts.clock = nil
         local lines, log = log_recorder()
         opts.log = log
         return bitrix24.router(opts), lines, clock
      end

      it("runs an ADD once: the second delivery is a duplicate", function()
         local r = new_router()
         local rec = recorder()
         r:on("ONCRMDEALADD", rec.fn)
         local status, headers, body = r:handle(post(DEAL_FORM))
         assert.equal(200, status)
         assert.same({ ["Content-Type"] = JSON }, headers)
         assert.same({ success = true }, cjson.decode(body))
         status, headers, body = r:handle(post(DEAL_JSON, JSON)) -- the same event as JSON
         assert.equal(200, status)
         assert.same({ success = true, duplicate = true }, cjson.decode(body))
         assert.equal(1, #rec.calls)
      end)

      it("gives handlers ctx with attempt 1, a log function and the configured client", function()
         local client = {}
         local r = new_router{ client = client }
         local rec = recorder()
         r:on("*", rec.fn)
         r:handle(post(DEAL_FORM))
         local ctx = rec.calls[1].ctx
         assert.equal(1, ctx.attempt)
         assert.equal("function", type(ctx.log))
         assert.equal(client, ctx.client)
      end)

      it("logs through b24.host or stderr when no log is configured", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         local rec = recorder()
         r:on("*", rec.fn)
         r:handle(post(DEAL_FORM))
         assert.equal("function", type(rec.calls[1].ctx.log))
      end)

      it("runs an UPDATE again for a new ts, not for the same ts", function()
         local r = new_router()
         local rec = recorder()
         r:on("ONCRMDEALUPDATE", rec.fn)
         local first = body_of("ONCRMDEALUPDATE", "7405", "1766047124")
         local again = body_of("ONCRMDEALUPDATE", "7405", "1766047125")
         assert.same({ success = true }, cjson.decode(select(3, r:handle(post(first)))))
         assert.same({ success = true }, cjson.decode(select(3, r:handle(post(again)))))
         assert.same({ success = true, duplicate = true }, cjson.decode(select(3, r:handle(post(first)))))
         assert.equal(2, #rec.calls)
         assert.equal("1766047124", rec.calls[1].event.ts)
         assert.equal("1766047125", rec.calls[2].event.ts)
      end)

      it("keys deliveries by portal, name and ID (and ts for updates), else by the body's digest", function()
         local r = new_router()
         local function key(body) return r:accept(post(body)).key end
         assert.equal(DEAL_MEMBER .. "|ONCRMLEADDELETE|3", key(body_of("ONCRMLEADDELETE", "3")))
         assert.equal(DEAL_MEMBER .. "|ONCRMLEADUPDATE|3|99", key(body_of("ONCRMLEADUPDATE", "3", "99")))
         local other = body_of("ONAPPTEST", "3")
         assert.equal("sha256:" .. core.sha256(other), key(other))
         local task_comment = read(VECTORS .. "events/webhook-ontaskcommentadd.form")
         local ins = bitrix24.router{ insecure = true }
         local v = ins:accept(post(task_comment))
         -- its FIELDS_AFTER.ID is "0", shared by unrelated comments: the digest keeps them apart
         assert.equal("sha256:" .. core.sha256(task_comment), v.key)
         assert.equal("add", v.kind)
         local by_domain = "event=ONCRMLEADADD&data[FIELDS][ID]=3&auth[domain]=d.example"
         assert.equal("d.example|ONCRMLEADADD|3", ins:accept(post(by_domain)).key)
         assert.equal("update", r:accept(post(body_of("ONCRMLEADUPDATE", "3"))).kind)
         assert.equal("delete", r:accept(post(body_of("ONCRMLEADDELETE", "3"))).kind)
         assert.equal("other", r:accept(post(other)).kind)
      end)

      it("runs a DELETE once and keys it apart from the ADD of the same ID", function()
         local r = new_router()
         local rec = recorder()
         r:on("*", rec.fn)
         r:handle(post(body_of("ONCRMDEALADD", "5")))
         r:handle(post(body_of("ONCRMDEALDELETE", "5")))
         r:handle(post(body_of("ONCRMDEALDELETE", "5", "1766047199")))
         assert.equal(2, #rec.calls)
      end)

      it("drops an identical other event, runs a different one", function()
         local r = new_router()
         local rec = recorder()
         r:on("*", rec.fn)
         r:handle(post("event=ONAPPTEST&x=1&auth[application_token]=" .. DEAL_TOKEN))
         r:handle(post("event=ONAPPTEST&x=1&auth[application_token]=" .. DEAL_TOKEN))
         r:handle(post("event=ONAPPTEST&x=2&auth[application_token]=" .. DEAL_TOKEN))
         assert.equal(2, #rec.calls)
      end)

      it("forgets a key dedup_ttl after processing", function()
         local r, _, clock = new_router{ dedup_ttl = 60 }
         local rec = recorder()
         r:on("*", rec.fn)
         r:handle(post(DEAL_FORM))
         clock.t = clock.t + 59
         r:handle(post(DEAL_FORM))
         assert.equal(1, #rec.calls)
         clock.t = clock.t + 1
         r:handle(post(DEAL_FORM))
         assert.equal(2, #rec.calls)
      end)

      it("keeps the memory bounded: the oldest key goes first", function()
         local r = new_router{ dedup_max = 2 }
         local rec = recorder()
         r:on("*", rec.fn)
         for _, id in ipairs{ "1", "2", "3", "1", "3" } do r:handle(post(body_of("ONCRMDEALADD", id))) end
         assert.equal(4, #rec.calls) -- "1" was evicted by "3", so it ran again; "3" was still known
         local ids = {}
         for _, c in ipairs(rec.calls) do ids[#ids + 1] = c.event.id end
         assert.same({ "1", "2", "3", "1" }, ids)
      end)

      it("uses a custom key function", function()
         local r = new_router{ key = function(e) return e.domain .. "/" .. e.name end }
         local rec = recorder()
         r:on("*", rec.fn)
         assert.equal(DEAL_DOMAIN .. "/ONCRMDEALADD", r:accept(post(DEAL_FORM)).key)
         r:handle(post(body_of("ONCRMDEALADD", "1")))
         local _, _, body = r:handle(post(body_of("ONCRMDEALADD", "2")))
         assert.same({ success = true, duplicate = true }, cjson.decode(body))
         assert.equal(1, #rec.calls)
         local bad = new_router{ key = function() return nil end }
         assert.has_error(function() bad:accept(post(DEAL_FORM)) end)
      end)

      it("answers 500 when a handler fails, logs the error, and lets the same delivery run again", function()
         local r, lines = new_router()
         local attempts = 0
         r:on("ONCRMDEALADD", function()
            attempts = attempts + 1
            if attempts == 1 then error("downstream is down") end
         end)
         local status, headers, body = r:handle(post(DEAL_FORM))
         assert.equal(500, status)
         assert.same({ ["Content-Type"] = JSON }, headers)
         assert.equal('{"error":"handler failed"}', body)
         assert.equal(1, #lines)
         assert.equal("error", lines[1].level)
         assert.equal("ONCRMDEALADD", lines[1].fields.event)
         assert.equal("7405", lines[1].fields.id)
         assert.matches("downstream is down", lines[1].fields.error, 1, true)
         assert.matches("stack traceback", lines[1].fields.error, 1, true)
         assert.equal(200, (r:handle(post(DEAL_FORM))))
         assert.equal(2, attempts)
         local _, _, third = r:handle(post(DEAL_FORM))
         assert.same({ success = true, duplicate = true }, cjson.decode(third))
      end)

      it("runs no handler for anything but an accepted new event", function()
         local r = new_router{ secret = "sig-secret" }
         local rec = recorder()
         r:on("*", rec.fn)
         local sig = core.hmac_sha256("sig-secret", DEAL_FORM)
         local rejected = {
            { method = "GET", headers = { ["content-type"] = FORM }, body = DEAL_FORM },
            post(DEAL_FORM, "text/plain", { ["x-bitrix-signature"] = sig }),
            post(DEAL_FORM, FORM),
            post(DEAL_FORM, FORM, { ["x-bitrix-signature"] = core.hmac_sha256("other", DEAL_FORM) }),
            post("{", JSON, { ["x-bitrix-signature"] = core.hmac_sha256("sig-secret", "{") }),
         }
         for _, req in ipairs(rejected) do
            local status = r:handle(req)
            assert.is_true(status >= 400 and status < 500)
         end
         assert.equal(0, #rec.calls)
         assert.equal(200, (r:handle(post(DEAL_FORM, FORM, { ["x-bitrix-signature"] = sig }))))
         assert.equal(1, #rec.calls)
      end)

      it("raises for a request that is not a table", function()
         local r = new_router()
         assert.has_error(function() r:handle("POST /") end)
      end)
   end)

   describe("secrets", function()
      it("never appear in an answer body or a handler error log", function()
         local secret, whsec = "hmac-secret-value", SW.secret
         local r = bitrix24.router{ token = DEAL_TOKEN, secret = secret }
         local sw = bitrix24.router{ standard_webhooks_secret = whsec, tokens = { [DEAL_MEMBER] = DEAL_TOKEN } }
         local wrong = body_of("ONCRMDEALADD", "1", nil,
            { auth = { member_id = DEAL_MEMBER, application_token = "sent-token-xyz" } })
         local bodies = {}
         for _, router in ipairs{ r, sw } do
            for _, req in ipairs{
               post(DEAL_FORM), post(wrong), post(wrong, FORM, { ["x-bitrix-signature"] = core.hmac_sha256(secret, wrong) }),
               post(DEAL_FORM, FORM, { ["x-bitrix-signature"] = "sha256=" .. secret }),
               post(DEAL_FORM, FORM, { ["webhook-id"] = "a", ["webhook-timestamp"] = "1", ["webhook-signature"] = "v1," .. whsec }),
               post("{", JSON), post(DEAL_FORM, "text/html"),
            } do
               local v = router:accept(req)
               bodies[#bodies + 1] = v.body
            end
         end
         for _, body in ipairs(bodies) do
            for _, s in ipairs{ DEAL_TOKEN, secret, whsec, whsec:sub(7), "sent-token-xyz" } do
               assert.not_matches(s, body, 1, true)
            end
         end
      end)
   end)
end)

describe("bitrix24.router under b24 serve", function()
   local b24 = require "helpers.b24"
   local srv
   local SCRIPT = [[
local bitrix24 = require "bitrix24"
local host = require "b24.host"
local router = bitrix24.router{ token = %q }
router:on("ONCRMDEAL*", function(event, ctx)
  host.log("info", "deal event seen", { event = event.name, id = event.id, domain = event.domain,
                                         attempt = ctx.attempt })
end)
router:on("ONCRMLEADADD", function(event) error("lead handler broke") end)
return router
]]

   setup(function()
      -- one worker: handle's in-memory dedup lives in one Lua state. A host with a durable inbox
      -- runs a router through accept and dispatch unless --sync, which keeps it on handle.
      local args = { "--workers", "1" }
      local help = b24.exec(b24.quote(b24.bin) .. " serve --help")
      if help:find("--sync", 1, true) then args[#args + 1] = "--sync" end
      srv = b24.start{ script = SCRIPT:format(DEAL_TOKEN), args = args }
   end)
   teardown(function() if srv then srv:stop() end end)

   it("answers 200 to the captured deal delivery and the handler sees the event", function()
      local res = assert(srv:request{ method = "POST", path = "/b24/events",
         headers = { ["Content-Type"] = FORM }, body = DEAL_FORM })
      assert.equal(200, res.status)
      assert.equal('{"success":true}', res.body)
      local line = assert(srv:wait_log("deal event seen"))
      assert.matches("ONCRMDEALADD", line, 1, true)
      assert.matches("7405", line, 1, true)
      assert.matches(DEAL_DOMAIN, line, 1, true)
   end)

   it("answers a duplicate of it, sent as JSON, as a duplicate", function()
      local res = assert(srv:request{ method = "POST", path = "/b24/events",
         headers = { ["Content-Type"] = JSON }, body = DEAL_JSON })
      assert.equal(200, res.status)
      assert.same({ success = true, duplicate = true }, cjson.decode(res.body))
   end)

   it("answers 401, 405, 415, 400 with the reason, and 500 when a handler fails", function()
      local wrong = body_of("ONCRMDEALADD", "8", nil,
         { auth = { member_id = DEAL_MEMBER, application_token = "wrong-one" } })
      local cases = {
         { 401, "wrong application token", { method = "POST", headers = { ["Content-Type"] = FORM }, body = wrong } },
         { 405, "POST expected", { method = "GET" } },
         { 415, nil, { method = "POST", headers = { ["Content-Type"] = "text/plain" }, body = DEAL_FORM } },
         { 400, nil, { method = "POST", headers = { ["Content-Type"] = JSON }, body = "{" } },
         { 500, "handler failed", { method = "POST", headers = { ["Content-Type"] = FORM },
                                                 body = body_of("ONCRMLEADADD", "1") } },
      }
      for _, c in ipairs(cases) do
         c[3].path = "/"
         local res = assert(srv:request(c[3]))
         assert.equal(c[1], res.status)
         if c[2] then assert.equal(c[2], cjson.decode(res.body).error) end
         assert.not_matches(DEAL_TOKEN, res.body, 1, true)
      end
      assert(srv:wait_log("lead handler broke"))
      assert.not_matches(DEAL_TOKEN, srv:log(), 1, true)
   end)

   it("answers 200 to a new UPDATE of the same deal", function()
      local res = assert(srv:request{ method = "POST", path = "/",
         headers = { ["Content-Type"] = FORM }, body = body_of("ONCRMDEALUPDATE", "7405", "1766047200") })
      assert.equal(200, res.status)
      assert.equal('{"success":true}', res.body)
      assert(srv:wait_log("ONCRMDEALUPDATE"))
   end)
end)
