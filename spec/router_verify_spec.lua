-- bitrix24.router: each verification scheme (application token, tokens per portal, hex HMAC,
-- Standard Webhooks, max_age), its 401 answers in words, and no secret in them.
local core = require "bitrix24.core"
local bitrix24 = require "bitrix24"
local fx = require "helpers.router"

local FORM = fx.FORM
local JSON = fx.JSON
local DEAL_JSON = fx.DEAL_JSON
local DEAL_FORM = fx.DEAL_FORM
local DEAL_TOKEN = fx.DEAL_TOKEN
local DEAL_MEMBER = fx.DEAL_MEMBER
local DEAL_DOMAIN = fx.DEAL_DOMAIN
local CONTACT_FORM = fx.CONTACT_FORM
local CONTACT_TOKEN = fx.CONTACT_TOKEN
local SW = fx.SW
local post = fx.post
local body_of = fx.body_of
local error_of = fx.error_of

describe("bitrix24.router verification", function()
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
         assert.equal("unverified", v.err.code)
         assert.equal(401, v.err.status)
         assert.equal("wrong application token", v.err.description)
         assert.not_matches(DEAL_TOKEN, tostring(v.err), 1, true)
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
end)
