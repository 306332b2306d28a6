-- bitrix24.core: now() and sleep(), the clock for hosts that bring none.
local core = require("bitrix24.core")

describe("bitrix24.core time", function()
   describe("now", function()
      it("returns a number", function()
         assert.are.equal("number", type(core.now()))
      end)

      it("never goes backwards across calls", function()
         local last = core.now()
         for _ = 1, 10000 do
            local t = core.now()
            assert.is_true(t >= last)
            last = t
         end
      end)
   end)

   describe("sleep", function()
      it("blocks for at least the time asked", function()
         local t0 = core.now()
         core.sleep(0.05)
         local elapsed = core.now() - t0
         assert.is_true(elapsed >= 0.05, "slept only " .. elapsed .. " s")
      end)

      it("returns at once for zero", function()
         local t0 = core.now()
         core.sleep(0)
         assert.is_true(core.now() - t0 < 1)
      end)

      it("raises on a negative duration", function()
         assert.has_error(function() core.sleep(-1) end)
      end)

      it("raises on a value that is not a number", function()
         assert.has_error(function() core.sleep("x") end)
         assert.has_error(function() core.sleep(nil) end)
         assert.has_error(function() core.sleep({}) end)
      end)

      it("raises on NaN", function()
         assert.has_error(function() core.sleep(0 / 0) end)
      end)
   end)
end)
