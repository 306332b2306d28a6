-- b24 serve deduplicates with work-queue semantics in every mode (durable inbox, --inbox memory,
-- --sync): an add or delete repeated is a duplicate; an update (or any other event) that arrives
-- while its object's handler runs gets exactly one more run after it; one more that arrives then
-- is merged. A handler blocked on a FIFO the spec controls makes "while it runs" deterministic.
local socket = require "socket"
local cjson = require("cjson.safe").new()
local inbox = require "helpers.inbox"

local OK_BODY = { success = true }
local DUP_BODY = { success = true, duplicate = true }
local MERGED_BODY = { success = true, merged = true }

local function decoded(res) return cjson.decode(res.body) end
local function post(srv, body) return inbox.post(srv, body) end

local function update(id, extra)
   return inbox.form{ name = "ONCRMDEALUPDATE", id = id, ts = "1766047124", data = extra }
end

-- Sends a POST and returns a function that reads its answer (for --sync, which answers after
-- the run).
local function send(srv, body)
   local c = assert(socket.connect("127.0.0.1", srv.port))
   c:settimeout(120) -- a watchdog, not a synchronization
   assert(c:send("POST /hook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
      .. inbox.FORM .. "\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body))
   return function()
      local text = assert(c:receive("*a"))
      c:close()
      local status = tonumber(text:match("^HTTP/1%.1 (%d+)"))
      return status, cjson.decode(text:match("\r\n\r\n(.*)$"))
   end
end

local MODES = {
   { name = "durable inbox", args = { "--handler-threads", "1" } },
   { name = "--inbox memory", args = { "--handler-threads", "1", "--inbox", "memory" } },
   { name = "--sync", args = { "--sync", "--workers", "4" }, sync = true },
}

for _, mode in ipairs(MODES) do
   describe("b24 serve deduplication (" .. mode.name .. ")", function()
      local env, srv
      before_each(function()
         env = inbox.env{ tokens = inbox.tokens() }
         env:fifos()
         srv = env:start(mode.args)
      end)
      after_each(function() env:cleanup() end)

      local function runs(id) return env:records("ONCRMDEALUPDATE", id) end
      local function settle()
         if not mode.sync then inbox.barrier(srv) end
      end

      it("runs a same-second UPDATE of one object again after its first run (issue 12: WON was lost)", function()
         local res = post(srv, update("7001"))
         assert.same(OK_BODY, decoded(res))
         inbox.wait_saw(srv, "ONCRMDEALUPDATE", "7001", 1) -- the handler fetched PREPARATION
         res = post(srv, update("7001")) -- byte-identical: the WON change
         assert.equal(200, res.status)
         assert.same(OK_BODY, decoded(res))
         settle()
         assert.equal(2, #runs("7001"))
      end)

      it("runs an UPDATE arriving while its handler runs exactly once more, after it; merges a third", function()
         local first = send(srv, update("7002", { BLOCK = "1" }))
         local first_status
         if not mode.sync then first_status = first() end -- stored and answered; the run blocks
         assert.equal("7002", env:started())
         local second, third
         if mode.sync then
            second = send(srv, update("7002", { N = "2" }))
            assert(inbox.wait_log_from(srv, 1, "delivery waits for the run of its object"))
            local res = post(srv, update("7002", { N = "3" }))
            assert.same(MERGED_BODY, decoded(res))
         else
            second = decoded(post(srv, update("7002", { N = "2" })))
            third = decoded(post(srv, update("7002", { N = "3" })))
            assert.same(OK_BODY, second)
            assert.same(MERGED_BODY, third)
         end
         env:release()
         if mode.sync then
            local s1, b1 = first()
            assert.equal(200, s1)
            assert.same(OK_BODY, b1)
            local s2, b2 = second() -- answered after its own run
            assert.equal(200, s2)
            assert.same(OK_BODY, b2)
         else
            assert.equal(200, first_status)
         end
         settle()
         local r = runs("7002")
         assert.equal(2, #r)
         assert.equal("1", r[1].data.BLOCK) -- the blocked run, then exactly one more after it
         assert.is_nil(r[2].data.BLOCK)
         assert.equal(1, inbox.metric(srv, 'b24_deliveries_total{result="rerun"}'))
         assert.equal(1, inbox.metric(srv, 'b24_deliveries_total{result="merged"}'))
         local line = assert(inbox.wait_log_from(srv, 1, "merged"))
         assert.matches("7002", line, 1, true)
         assert.not_matches(inbox.deal.token, srv:log(), 1, true)
      end)

      it("answers an ADD repeated while its handler runs, or after, as a duplicate and logs it", function()
         local add = inbox.form{ name = "ONCRMDEALADD", id = "7003", data = { BLOCK = "1" } }
         local first = send(srv, add)
         if not mode.sync then assert.equal(200, (first())) end
         assert.equal("7003", env:started())
         assert.same(DUP_BODY, decoded(post(srv, add)))
         env:release()
         if mode.sync then assert.equal(200, (first())) end
         settle()
         assert.same(DUP_BODY, decoded(post(srv, add)))
         assert.equal(1, #env:records("ONCRMDEALADD", "7003"))
         assert.equal(2, inbox.metric(srv, 'b24_deliveries_total{result="duplicate"}'))
         local line = assert(inbox.wait_log_from(srv, 1, 'msg="duplicate delivery"'))
         assert.matches("ONCRMDEALADD", line, 1, true)
         assert.matches("7003", line, 1, true)
      end)

      it("keys smart-process items by ENTITY_TYPE_ID: item 22 of type 1224 runs after item 22 of type 128", function()
         local function item(type_id)
            return inbox.form{ name = "ONCRMDYNAMICITEMADD", id = "22",
                               data = { FIELDS = { ID = "22", ENTITY_TYPE_ID = type_id } } }
         end
         assert.same(OK_BODY, decoded(post(srv, item("128"))))
         settle()
         assert.same(OK_BODY, decoded(post(srv, item("1224"))))
         assert.same(DUP_BODY, decoded(post(srv, item("1224"))))
         settle()
         assert.equal(2, #env:records("ONCRMDYNAMICITEMADD", "22"))
      end)
   end)
end
