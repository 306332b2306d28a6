-- bitrix24.router: handle, accept + in-memory deduplication + dispatch (keys, ttl, memory bound,
-- failures forgotten so a redelivery runs, ctx and the log).
local core = require "bitrix24.core"
local bitrix24 = require "bitrix24"
local cjson = require("cjson.safe").new()
local fx = require "helpers.router"

local FORM = fx.FORM
local JSON = fx.JSON
local VECTORS = fx.VECTORS
local DEAL_JSON = fx.DEAL_JSON
local DEAL_FORM = fx.DEAL_FORM
local DEAL_TOKEN = fx.DEAL_TOKEN
local DEAL_MEMBER = fx.DEAL_MEMBER
local DEAL_DOMAIN = fx.DEAL_DOMAIN
local read = fx.read
local post = fx.post
local body_of = fx.body_of
local recorder = fx.recorder
local log_recorder = fx.log_recorder

describe("bitrix24.router handle", function()
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
         assert.same({ ["Content-Type"] = JSON }, headers)
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

      it("logs through bitrix24.log.default (the host's writer, else stderr) when no log is configured", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         local rec = recorder()
         r:on("*", rec.fn)
         r:handle(post(DEAL_FORM))
         assert.equal(require("bitrix24.log").default, rec.calls[1].ctx.log)
      end)

      it("runs two same-second UPDATEs of one object twice (issue 12: the WON transition was lost)", function()
         local r = new_router()
         local rec = recorder()
         r:on("ONCRMDEALUPDATE", rec.fn)
         local update = body_of("ONCRMDEALUPDATE", "7405", "1766047124")
         assert.same({ success = true }, cjson.decode(select(3, r:handle(post(update)))))
         assert.same({ success = true }, cjson.decode(select(3, r:handle(post(update)))))
         assert.equal(2, #rec.calls)
      end)

      it("runs once more after the run going on an UPDATE that arrives while its handler runs", function()
         local r, lines = new_router()
         local update = body_of("ONCRMDEALUPDATE", "7405", "1766047124")
         local runs, answers = 0, {}
         r:on("ONCRMDEALUPDATE", function()
            runs = runs + 1
            if runs == 1 then -- two more deliveries while the first run goes on
               answers[1] = cjson.decode(select(3, r:handle(post(update))))
               answers[2] = cjson.decode(select(3, r:handle(post(update))))
            end
         end)
         local status, _, body = r:handle(post(update))
         assert.equal(200, status)
         assert.same({ success = true }, cjson.decode(body))
         assert.equal(2, runs) -- the first, and exactly one more after it
         assert.same({ success = true }, answers[1])
         assert.same({ success = true, merged = true }, answers[2])
         local merged
         for _, l in ipairs(lines) do
            if l.msg:find("merged", 1, true) then merged = l end
         end
         assert.equal("info", merged.level)
         assert.equal("ONCRMDEALUPDATE", merged.fields.event)
         assert.equal("7405", merged.fields.id)
      end)

      it("answers an ADD repeated while its handler runs as a duplicate, and logs it", function()
         local r, lines = new_router()
         local add = body_of("ONCRMDEALADD", "9")
         local inner
         r:on("ONCRMDEALADD", function()
            if inner == nil then inner = cjson.decode(select(3, r:handle(post(add)))) end
         end)
         r:handle(post(add))
         assert.same({ success = true, duplicate = true }, inner)
         local line = lines[#lines]
         assert.equal("info", line.level)
         assert.equal("duplicate delivery", line.msg)
         assert.equal("9", line.fields.id)
         assert.is_nil(cjson.encode(line.fields):find(DEAL_TOKEN, 1, true))
      end)

      it("gives the verdict what a host needs: dedup = duplicate for adds and deletes, merge otherwise", function()
         local r = new_router()
         assert.equal("duplicate", r:accept(post(body_of("ONCRMDEALADD", "1"))).dedup)
         assert.equal("duplicate", r:accept(post(body_of("ONCRMDEALDELETE", "1"))).dedup)
         assert.equal("merge", r:accept(post(body_of("ONCRMDEALUPDATE", "1"))).dedup)
         assert.equal("merge", r:accept(post(body_of("ONAPPTEST", "1"))).dedup)
      end)

      it("keys smart-process items by ENTITY_TYPE_ID too: item 22 of type 1224 is not that of type 128", function()
         local r = new_router()
         local rec = recorder()
         r:on("*", rec.fn)
         local function item(type_id)
            return body_of("ONCRMDYNAMICITEMADD", "22", nil,
                           { data = { FIELDS = { ID = "22", ENTITY_TYPE_ID = type_id } } })
         end
         assert.equal(DEAL_MEMBER .. "|ONCRMDYNAMICITEMADD|1224|22", r:accept(post(item("1224"))).key)
         r:handle(post(item("128")))
         assert.same({ success = true }, cjson.decode(select(3, r:handle(post(item("1224"))))))
         assert.same({ success = true, duplicate = true }, cjson.decode(select(3, r:handle(post(item("1224"))))))
         assert.equal(2, #rec.calls)
      end)

      it("keys deliveries by portal, name and object (no ts), else by the body's digest", function()
         local r = new_router()
         local function key(body) return r:accept(post(body)).key end
         assert.equal(DEAL_MEMBER .. "|ONCRMLEADDELETE|3", key(body_of("ONCRMLEADDELETE", "3")))
         assert.equal(DEAL_MEMBER .. "|ONCRMLEADUPDATE|3", key(body_of("ONCRMLEADUPDATE", "3", "99")))
         local other = body_of("ONAPPTEST", "3")
         assert.equal("sha256:" .. core.sha256(other), key(other))
         local task_comment = read(VECTORS .. "events/webhook-ontaskcommentadd.form")
         local ins = bitrix24.router{ insecure = true }
         local v = ins:accept(post(task_comment))
         -- its FIELDS_AFTER.ID is "0", shared by unrelated comments: the comment is its MESSAGE_ID
         assert.equal("c7848c26da9f20fa0d54043bf464b60c|ONTASKCOMMENTADD|2536|48760", v.key)
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

      it("runs an identical other event again once the first run ended (merge semantics)", function()
         local r = new_router()
         local rec = recorder()
         r:on("*", rec.fn)
         r:handle(post("event=ONAPPTEST&x=1&auth[application_token]=" .. DEAL_TOKEN))
         r:handle(post("event=ONAPPTEST&x=1&auth[application_token]=" .. DEAL_TOKEN))
         r:handle(post("event=ONAPPTEST&x=2&auth[application_token]=" .. DEAL_TOKEN))
         assert.equal(3, #rec.calls)
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

      it("logs a refusal with its reason, never the token", function()
         local r, lines = new_router()
         local forged = DEAL_FORM:gsub("application_token%%5D=[^&]+", "application_token%%5D=forged-token")
         assert.equal(401, (r:handle(post(forged))))
         assert.equal(1, #lines)
         assert.equal("info", lines[1].level)
         assert.equal("delivery refused", lines[1].msg)
         assert.same({ status = 401, reason = "wrong application token" }, lines[1].fields)
         assert.not_matches("forged-token", tostring(lines[1].fields.reason), 1, true)
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
         assert.equal(2, #lines) -- the failure, and its traceback at debug
         assert.equal("error", lines[1].level)
         assert.equal("ONCRMDEALADD", lines[1].fields.event)
         assert.equal("7405", lines[1].fields.id)
         assert.matches("downstream is down", lines[1].fields.error, 1, true)
         assert.not_matches("stack traceback", lines[1].fields.error, 1, true)
         assert.equal("debug", lines[2].level)
         assert.matches("stack traceback", lines[2].fields.traceback, 1, true)
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
end)
