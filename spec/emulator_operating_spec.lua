-- The operating limit as the portal reports it, over real HTTP against `b24 emulate`: batch is
-- neither blocked nor billed, its sub-calls are billed to their own methods, and a blocked
-- sub-call is OPERATION_TIME_LIMIT in result_error of an HTTP 200 batch
-- (rest/lib/engine/access/loadlimiter.php $ignoreMethod, rest/classes/general/rest_provider.php
-- CRestProvider::batch, rest/classes/general/rest.php processCall and appendDebugInfo in
-- yuliai/bitrix-modules); time.operating and time.operating_reset_at in every answer; the block
-- lifted once the window has moved past the method's basket.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local core = require "bitrix24.core"

local call = emu.call

local BLOCKED = { error = "OPERATION_TIME_LIMIT", error_description = "Method is blocked due to operation time limit." }
local WINDOW = 600

-- A page of 50 leads costs 50 × 4 ms = 0.2 s of operating time, over a limit of 0.1 s: the first
-- page crosses it, and crm.lead.list is blocked for the window.
local function start(extra)
   local args = { "--code", emu.CODE, "--seed-leads", "50", "--row-cost", "4000", "--operating-limit", "0.1" }
   for _, a in ipairs(extra or {}) do args[#args + 1] = a end
   return b24.emulate{ args = args }
end

local function is_integer(x)
   return type(x) == "number" and x == math.floor(x)
end

-- The time of an answer holds operating and operating_reset_at as the portal gives them: seconds
-- used in the window, and an integer unix time a window after the method's first billing in it.
local function check_time(t, what, window)
   window = window or WINDOW
   assert.equal("number", type(t.operating), what)
   assert.is_true(t.operating >= 0, what)
   assert.is_true(is_integer(t.operating_reset_at), what .. ": " .. tostring(t.operating_reset_at))
   assert.is_true(t.operating_reset_at <= t.finish + window + 1, what)
end

describe("emulator operating limit in a batch", function()
   it("does not block a batch whose sub-method is blocked: the others run, the blocked one is in result_error",
      function()
      local srv = start()
      finally(function() srv:stop() end)
      local status, body = emu.batch(srv, {
         { "c0", "crm.lead.list?select[]=ID" },                 -- crosses the limit, completes
         { "c1", "crm.lead.list?select[]=ID&start=-1" },        -- blocked
         { "c2", "crm.lead.get?id=$result[c0][1][ID]" },
         { "c3", "crm.deal.list" },
      }, { halt = 0 })
      assert.equal(200, status)
      local r = body.result
      assert.equal(50, #r.result.c0)
      assert.is_true(r.result_time.c0.operating > 0.1, "c0 crossed the limit")
      assert.same(BLOCKED, r.result_error.c1)
      assert.is_nil(r.result.c1)
      assert.is_nil(r.result_time.c1, "an error has no time")
      assert.equal("2", r.result.c2.ID)
      assert.same({}, r.result.c3)
      assert.equal(0, r.result_total.c3)
      assert.same({ "c1" }, emu.keys(r.result_error))
      assert.same({ "c0", "c2", "c3" }, emu.keys(r.result_time))

      -- a direct call of the blocked method: 429, no time
      local raw
      status, body, raw = call(srv, "crm.lead.list", { select = { "ID" } })
      assert.equal(429, status)
      assert.same(BLOCKED, body)
      assert.not_matches('"time"', raw, 1, true)

      -- batch itself is never blocked: the next one runs, with the blocked method failing again
      status, body = emu.batch(srv, { { "a", "crm.lead.get?id=1" }, { "b", "crm.lead.list?start=-1" } })
      assert.equal(200, status)
      assert.equal("1", body.result.result.a.ID)
      assert.same(BLOCKED, body.result.result_error.b)
   end)

   it("stops at the blocked command when halt is set", function()
      local srv = start()
      finally(function() srv:stop() end)
      assert.equal(200, (call(srv, "crm.lead.list", { select = { "ID" } })))
      local status, body = emu.batch(srv, {
         { "c0", "crm.lead.get?id=1" },
         { "c1", "crm.lead.list?start=-1" },
         { "c2", "crm.lead.get?id=2" },
      }, { halt = 1 })
      assert.equal(200, status)
      local r = body.result
      assert.equal("1", r.result.c0.ID)
      assert.same(BLOCKED, r.result_error.c1)
      assert.is_nil(r.result.c2)
      assert.is_nil(r.result_error.c2)
      assert.same({ "c0" }, emu.keys(r.result_time))
   end)

   it("does not bill the batch: its own operating stays 0 however long its sub-calls take", function()
      local srv = start()
      finally(function() srv:stop() end)
      for i = 1, 2 do
         local status, body = emu.batch(srv, { { "a", "crm.deal.list" }, { "b", "crm.lead.list?select[]=ID" } })
         assert.equal(200, status)
         if i == 1 then
            assert.is_true(body.time.processing >= 0.2, "the batch took its sub-calls' time, over the limit")
         else
            assert.same(BLOCKED, body.result.result_error.b)
         end
         assert.equal(0, body.time.operating)
         check_time(body.time, "batch")
         -- with nothing billed, the reset time is a window after the batch began
         assert.is_true(body.time.operating_reset_at >= body.time.start + WINDOW - 1e-3)
      end
   end)
end)

describe("emulator time.operating and time.operating_reset_at", function()
   it("come in every answer, summed per method across direct calls and batch sub-calls", function()
      local srv = start()
      finally(function() srv:stop() end)
      local _, first = call(srv, "crm.lead.get", { id = 1 })
      local t1 = first.time
      check_time(t1, "first")
      assert.is_true(math.abs(t1.operating - t1.processing) < 1e-6, "the first call is all the method used")
      -- a window after the method's first billing, which follows the call's start
      assert.is_true(t1.operating_reset_at >= math.floor(t1.start) + WINDOW)

      -- a failed call is not billed (its callback threw before registerEnding)
      local status = call(srv, "crm.lead.get", { id = 999 })
      assert.equal(400, status)

      local _, second = call(srv, "crm.lead.get", { id = 2 })
      local t2 = second.time
      check_time(t2, "second")
      assert.is_true(math.abs(t2.operating - (t1.operating + t2.processing)) < 1e-6)
      assert.equal(t1.operating_reset_at, t2.operating_reset_at) -- the oldest basket is the same

      local _, body = emu.batch(srv, { { "a", "crm.lead.get?id=3" }, { "b", "crm.deal.list" } })
      local a, b = body.result.result_time.a, body.result.result_time.b
      check_time(a, "sub-call a")
      check_time(b, "sub-call b")
      assert.is_true(math.abs(a.operating - (t2.operating + a.processing)) < 1e-6, "billed to crm.lead.get")
      assert.equal(t1.operating_reset_at, a.operating_reset_at)
      assert.is_true(math.abs(b.operating - b.processing) < 1e-6, "crm.deal.list billed on its own")
      check_time(body.time, "batch")
   end)
end)

describe("emulator operating window", function()
   it("lifts the block once the window has moved past the method's basket, by operating_reset_at", function()
      -- a 2-second window of ten 0.2-second baskets on the real clock
      local window = 2
      local srv = start{ "--operating-window", tostring(window) }
      finally(function() srv:stop() end)
      local t0 = core.now()
      local status, first = call(srv, "crm.lead.list", { select = { "ID" } })
      assert.equal(200, status)
      check_time(first.time, "first", window)
      local reset_at = first.time.operating_reset_at
      assert.is_true(reset_at >= os.time(), "reset in the future")
      assert.equal(429, (call(srv, "crm.lead.list", { select = { "ID" } })))
      local _, body = emu.batch(srv, { { "a", "crm.lead.list?start=-1" } })
      assert.same(BLOCKED, body.result.result_error.a)

      -- poll a cheap page of the blocked method: a blocked call runs nothing and bills nothing
      local probe, unblocked_at
      for _ = 1, 60 do
         status, probe = call(srv, "crm.lead.list", { filter = { ID = 0 }, start = -1 })
         if status == 200 then unblocked_at = core.now(); break end
         assert.equal(429, status)
         -- the emulator's unix clock lags the real one by less than a second
         assert.is_true(os.time() <= reset_at, "still blocked after operating_reset_at")
         core.sleep(0.1)
      end
      assert.is_truthy(unblocked_at, "never unblocked")
      -- by operating_reset_at on the emulator's own clock (a poll later at most)
      assert.is_true(probe.time.start <= reset_at + 0.5, "unblocked late: " .. probe.time.start - reset_at)
      -- the crossing call's basket stayed in the window for nine baskets at least
      assert.is_true(unblocked_at - t0 >= window * 0.9 - 0.05, "unblocked early: " .. (unblocked_at - t0))
      -- the old basket is gone: the method has used only the probe's time
      assert.is_true(probe.time.operating < 0.1, "operating " .. probe.time.operating)
      _, body = emu.batch(srv, { { "a", "crm.lead.list?select[]=ID" } })
      assert.equal(50, #body.result.result.a)
      assert.same({}, body.result.result_error)
   end)
end)
