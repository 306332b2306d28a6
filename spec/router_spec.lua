-- bitrix24.router: construction and its misuse, accept's answers with their reasons (405, 415,
-- 413, 400 and the limits; a refusal's bitrix24.Error as verdict.err), and secrets never echoed.
-- Verification: router_verify_spec; dispatch: router_dispatch_spec; handle's deduplication:
-- router_dedup_spec; a router under b24 serve: router_serve_spec.
local core = require "bitrix24.core"
local bitrix24 = require "bitrix24"
local cjson = require("cjson.safe").new()
local router_module = require "bitrix24.router"
local fx = require "helpers.router"

local FORM = fx.FORM
local JSON = fx.JSON
local DEAL_JSON = fx.DEAL_JSON
local DEAL_FORM = fx.DEAL_FORM
local DEAL_TOKEN = fx.DEAL_TOKEN
local DEAL_MEMBER = fx.DEAL_MEMBER
local SW = fx.SW
local post = fx.post
local body_of = fx.body_of
local error_of = fx.error_of

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
         assert.is_nil(v.err)
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
            assert.is_true(bitrix24.Error.is(v.err))
            assert.equal("method_not_allowed", v.err.code)
            assert.equal(405, v.err.status)
            assert.equal("POST expected", v.err.description)
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
            assert.equal("unsupported", v.err.code)
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
         assert.equal("too_large", v.err.code)
         v = small:accept(post(DEAL_JSON, JSON))
         assert.equal(413, v.status)
      end)

      it("answers 400 to malformed bodies, with the reason in words", function()
         local cases = {
            { "{not json", JSON, "JSON" },
            { "42", JSON, "JSON object" },
            { "data[FIELDS][ID]=1&ts=1&auth[application_token]=" .. DEAL_TOKEN, FORM, "event" },
            { '{"ts":"1","auth":{"application_token":"' .. DEAL_TOKEN .. '"}}', JSON, "event" },
            { "auth[application_token]=" .. DEAL_TOKEN, FORM, "event" },
         }
         for _, c in ipairs(cases) do
            local v = r:accept(post(c[1], c[2]))
            assert.equal(400, v.status, c[1])
            assert.matches(c[3], error_of(v), 1, true)
            assert.equal("malformed", v.err.code)
            assert.equal(error_of(v), v.err.description)
            assert.matches(error_of(v), tostring(v.err), 1, true)
         end
      end)

      it("answers 400 over the pair and depth limits", function()
         local limited = bitrix24.router{ token = DEAL_TOKEN, limits = { max_depth = 3, max_pairs = 5 } }
         local v = limited:accept(post(DEAL_FORM))
         assert.equal(400, v.status)
         assert.matches("more than 5 fields", error_of(v))
         assert.equal("too_many", v.err.code)
         v = limited:accept(post("event=X&a[b][c][d][e]=1&auth[application_token]=" .. DEAL_TOKEN))
         assert.equal(400, v.status)
         assert.matches("deeper", error_of(v))
         assert.equal("too_deep", v.err.code)
      end)

      it("keeps the default limits: 1,001 pairs (PHP's max_input_vars) and nesting 65 deep are 400", function()
         local insecure = bitrix24.router{ insecure = true }
         local many = { "event=X" }
         for i = 1, 999 do many[#many + 1] = "p" .. i .. "=1" end
         assert.equal(200, insecure:accept(post(table.concat(many, "&"))).status)
         many[#many + 1] = "p1000=1"
         local v = insecure:accept(post(table.concat(many, "&")))
         assert.equal(400, v.status)
         assert.equal("too_many", v.err.code)
         assert.matches("more than 1000 fields", v.err.description, 1, true)
         local wider = bitrix24.router{ insecure = true, limits = { max_pairs = 10000 } }
         assert.equal(200, wider:accept(post(table.concat(many, "&"))).status)
         local deep = "event=X&a" .. string.rep("[a]", 65) .. "=1"
         assert.equal(400, insecure:accept(post(deep)).status)
         assert.equal(200, insecure:accept(post("event=X&a" .. string.rep("[a]", 63) .. "=1")).status)
      end)

      it("checks the token before the body, finding the one the whole parse finds", function()
         local function form(body) return post(body) end
         local function json(body) return post(body, JSON) end
         local T, other = DEAL_TOKEN, "not-the-token"
         local cases = { -- body, status: the last of repeated keys wins, as PHP reads them
            { form("event=X&auth[application_token]=" .. other .. "&auth[application_token]=" .. T), 200 },
            { form("event=X&auth[application_token]=" .. T .. "&auth[application_token]=" .. other), 401 },
            { form("event=X&auth[application_token]=" .. T .. "&auth=flat"), 401 }, -- auth replaced
            { form("event=X&auth=flat&auth[application_token]=" .. T), 200 }, -- a scalar becomes an array
            { form("event=X&auth[application_token]=" .. T .. "&auth[application_token][]=1"), 401 },
            { form("event=X&auth[application_token]=" .. T .. "&auth[member_id]=m"), 200 }, -- merged
            { form("event=X&%20auth[application_token]=" .. T), 200 }, -- parse_str drops leading spaces
            { form("event=X&auth_application_token=" .. T), 401 },
            { form("event=X&auth[application_token=" .. T), 401 }, -- no ']': auth_application_token
            { json('{"event":"X","auth":{"application_token":"' .. T .. '"}}'), 200 },
            { json('{"event":"X","auth":{"application_token":"' .. T .. '"},"auth":"flat"}'), 401 },
            { json('{"event":"X","auth":{"application_token":"' .. other .. '"},"auth":{"application_token":"'
               .. T .. '"}}'), 200 },
            { json('{"event":"X","auth[application_token]":"' .. T .. '"}'), 200 }, -- brackets in a key
            { json('{"event":"X"," auth":{"application_token":"' .. T .. '"}}'), 200 },
            { json('{"event":"X","data":{"auth":{"application_token":"' .. T .. '"}}}'), 401 },
         }
         -- each case small (decoded whole before the token) and padded past 16 KiB (its auth
         -- fields first): the same answer either way
         local pad = string.rep("x", 16384)
         local function padded(req)
            local body = req.body
            if req.headers["content-type"] == JSON then
               body = '{"pad":"' .. pad .. '",' .. body:sub(2)
            else
               body = "pad=" .. pad .. "&" .. body
            end
            return post(body, req.headers["content-type"])
         end
         for i, c in ipairs(cases) do
            for _, req in ipairs{ c[1], padded(c[1]) } do
               local v = r:accept(req)
               assert.equal(c[2], v.status, "case " .. i .. " of " .. #req.body .. " bytes")
               -- the pre-scan agrees with the event the whole parse builds
               local whole = require("bitrix24.event").parse(req.body, req.headers["content-type"])
               assert.equal(c[2] == 200, whole.auth.application_token == T, "case " .. i)
            end
         end
      end)

      it("builds no more than a large stranger's auth fields", function()
         -- 900 fields of 1 KiB: decoded whole, about 1 MiB of Lua strings; its auth fields alone
         -- (what a body over 16 KiB gets before its token), a few bytes
         local parts = { "event=ONCRMDEALADD", "auth[application_token]=not-the-token" }
         -- each value distinct: LuaJIT interns every string
         for i = 1, 900 do parts[#parts + 1] = "data[" .. i .. "]=" .. i .. string.rep("x", 1020) end
         local req = post(table.concat(parts, "&"))
         local function grown(fn)
            collectgarbage()
            collectgarbage("stop")
            local before = collectgarbage("count")
            fn()
            local after = collectgarbage("count")
            collectgarbage("restart")
            return after - before
         end
         local v
         local stranger = grown(function() v = r:accept(req) end)
         assert.equal(401, v.status)
         local whole = grown(function() assert(require("bitrix24.event").parse(req.body, FORM)) end)
         assert.is_true(whole > 900, "the whole parse built " .. whole .. " KiB")
         assert.is_true(stranger < whole / 10, "the stranger's body built " .. stranger .. " KiB")
      end)

      it("refuses a stranger's body of many pairs without building it", function()
         -- over the pair limit: 400 from the count alone; a deep body with no token: 401
         local body = "event=X&" .. string.rep("a[]=1&", 1000) .. "data" .. string.rep("[x]", 500) .. "=1"
         local v = r:accept(post(body))
         assert.equal(400, v.status)
         assert.equal("too_many", v.err.code)
         v = r:accept(post("event=X&data" .. string.rep("[x]", 500) .. "=1"))
         assert.equal(401, v.status)
         assert.matches("missing application token", v.body, 1, true)
      end)

      it("raises when the request is not a table", function()
         assert.has_error(function() r:accept(nil) end)
         assert.has_error(function() r:accept(post({})) end)
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
               post(DEAL_FORM), post(wrong),
               post(wrong, FORM, { ["x-bitrix-signature"] = core.hmac_sha256(secret, wrong) }),
               post(DEAL_FORM, FORM, { ["x-bitrix-signature"] = "sha256=" .. secret }),
               post(DEAL_FORM, FORM, { ["webhook-id"] = "a", ["webhook-timestamp"] = "1",
                                       ["webhook-signature"] = "v1," .. whsec }),
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
