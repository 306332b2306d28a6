-- An export's on_progress against `b24 emulate` over real HTTP (issue 13 item 6): an integer
-- estimate, one final call with info.done whose count is every row, and an ETA computed from the
-- rate the export measured.
local bitrix24 = require "bitrix24"
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"

local LEADS = 230

local function is_integer(n)
   if math.type then return math.type(n) == "integer" end
   return type(n) == "number" and n == math.floor(n)
end

describe("export on_progress", function()
   local srv, client
   setup(function()
      srv = b24.emulate{ args = { "--code", emu.CODE, "--seed-leads", tostring(LEADS), "--time-scale", "100000" } }
      client = bitrix24.client(srv.base .. emu.path(""))
   end)
   teardown(function() if srv then srv:stop() end end)

   -- each: the order decides keyset (no order) or offset paging (a TITLE order)
   for _, case in ipairs({ { "keyset", {} }, { "offset", { order = { TITLE = "ASC" } } } }) do
      it("reports integers, the measured rate and ETA, and exactly one final call (" .. case[1] .. ")", function()
         local calls = {}
         local rows, err = client:all("crm.lead.list", case[2], { on_progress = function(n, est, info)
            calls[#calls + 1] = { n = n, est = est, done = info.done, rate = info.rate, eta = info.eta,
                                  elapsed = info.elapsed }
         end })
         assert.is_nil(err)
         assert.equal(LEADS, #rows)
         assert.is_true(#calls >= 1)
         local finals = 0
         for i, c in ipairs(calls) do
            assert.is_true(is_integer(c.n))
            if c.est ~= nil then
               assert.is_true(is_integer(c.est), "estimate " .. tostring(c.est))
               assert.is_true(c.est >= c.n)
            end
            if c.done then
               finals = finals + 1
               assert.equal(#calls, i) -- the last call
               assert.equal(LEADS, c.n)
               assert.equal(LEADS, c.est)
               assert.equal(0, c.eta)
            elseif c.est and c.rate and c.rate > 0 then
               -- the ETA is what is left at the rate measured so far
               assert.near((c.est - c.n) / c.rate, c.eta, 1e-9)
               assert.near(c.n / c.elapsed, c.rate, 1e-9)
            end
            if i > 1 then assert.is_true(c.n >= calls[i - 1].n) end
         end
         assert.equal(1, finals)
      end)
   end

   it("makes no final call when the export fails", function()
      local calls = {}
      local rows, err = client:all("crm.nothing.list", {}, { on_progress = function(_, _, info)
         calls[#calls + 1] = info
      end })
      assert.is_nil(rows)
      assert.equal("ERROR_METHOD_NOT_FOUND", err.code)
      for _, info in ipairs(calls) do assert.is_false(info.done) end
   end)
end)
