-- bitrix24.router: routing patterns and dispatch of stored deliveries (ctx, no second
-- verification, handler failures as a bitrix24.Error with tracebacks).
local bitrix24 = require "bitrix24"
local fx = require "helpers.router"

local FORM = fx.FORM
local JSON = fx.JSON
local DEAL_JSON = fx.DEAL_JSON
local DEAL_FORM = fx.DEAL_FORM
local DEAL_TOKEN = fx.DEAL_TOKEN
local recorder = fx.recorder

describe("bitrix24.router dispatch", function()
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
         assert.is_true(bitrix24.Error.is(err))
         assert.equal("handler_failed", err.code)
         local text = tostring(err)
         assert.matches(err.description, text, 1, true)
         assert.matches("deal sync exploded", text, 1, true)
         assert.not_matches("stack traceback", err.description, 1, true) -- one line each
         assert.equal(3, select(2, err.description:gsub("\n", "")) + 1)
         assert.matches("custom", text, 1, true)
         assert.matches("error object is a table value", text, 1, true)
         -- the tracebacks, for a host's debug line
         assert.matches("deal sync exploded", err.traceback, 1, true)
         assert.matches("stack traceback", err.traceback, 1, true)
         assert.matches("router_dispatch_spec.lua", err.traceback, 1, true)
         assert.is_true(ran)
      end)

      it("returns true and the number of handlers the event matched", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         local ok, matched = r:dispatch(stored(DEAL_FORM), {})
         assert.is_true(ok)
         assert.equal(0, matched)
         r:on("ONCRMDEAL*", function() end)
         r:on("ONCRMLEADADD", function() end)
         r:on("*", function() end)
         ok, matched = r:dispatch(stored(DEAL_FORM), {})
         assert.is_true(ok)
         assert.equal(2, matched)
      end)

      it("warns once at load about a name Bitrix24 has no event of, with the nearest", function()
         local lines = {}
         local log = function(level, msg, fields) lines[#lines + 1] = { level = level, msg = msg, fields = fields } end
         local r = bitrix24.router{ token = DEAL_TOKEN, log = log }
         r:on("ONCRMLEADADD", function() end)
         r:on("ONCRM*", function() end)
         r:on("ONCRMDYNAMICITEMADD_1224", function() end)
         assert.same({}, lines)
         r:on("ONCRMDEALUPDATEE", function() end)
         r:on("oncrmdealupdatee", function() end)
         assert.equal(1, #lines)
         assert.equal("warn", lines[1].level)
         assert.matches("no Bitrix24 event has this name", lines[1].msg, 1, true)
         assert.same({ event = "ONCRMDEALUPDATEE", did_you_mean = "ONCRMDEALUPDATE" }, lines[1].fields)
         r:on("ONMYOWNTHING", function() end)
         assert.equal(2, #lines)
         assert.same({ event = "ONMYOWNTHING" }, lines[2].fields)
      end)

      it("returns nil, err for a stored body that does not parse", function()
         local r = bitrix24.router{ token = DEAL_TOKEN }
         local ok, err = r:dispatch(stored("{", JSON), {})
         assert.is_nil(ok)
         assert.is_true(bitrix24.Error.is(err))
         assert.matches("does not parse", tostring(err))
         ok, err = r:dispatch({ headers = {} }, {})
         assert.is_nil(ok)
         assert.matches("no body", tostring(err))
         assert.has_error(function() r:dispatch(nil, {}) end)
      end)
   end)
end)
