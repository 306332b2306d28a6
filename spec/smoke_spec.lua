describe("bitrix24", function()
   it("loads the C core with its version", function()
      local bitrix24 = require "bitrix24"
      assert.is_string(bitrix24._VERSION)
      assert.equal(require("bitrix24.core"), bitrix24.core)
   end)
end)
