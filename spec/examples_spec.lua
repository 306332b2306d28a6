-- Every example is run as a user would run it.
local run = require("helpers.b24").exec

describe("examples/demo.lua", function()
  it("decodes the sample delivery, verifies its token and masks it in the output", function()
    local out, code = run("lua5.4 examples/demo.lua")
    assert.equal(0, code)
    assert.matches("event ONCRMLEADADD for id 4021 from example.bitrix24.com: token verified", out, 1, true)
    assert.not_matches("demo0token0for0the0readme", out, 1, true)
    assert.matches("fields%5BPHONE%5D%5B0%5D%5BVALUE%5D=%2B7+900+000-00-00", out, 1, true)
  end)

  it("rejects a delivery whose token does not match, with exit status 1", function()
    local out, code = run("B24_APP_TOKEN=another lua5.4 examples/demo.lua")
    assert.equal(1, code)
    assert.matches("token REJECTED", out, 1, true)
  end)
end)
