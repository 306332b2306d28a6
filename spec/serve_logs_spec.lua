-- What b24 serve says about deliveries (issue 12, item 5): a refusal's reason on its request
-- line, one line per failed attempt with the traceback at debug, a delivery no handler matched
-- said as such, metrics that agree, and router:on's warning for a misspelt event, once.
local b24 = require "helpers.b24"

local ROUTER = [[
local bitrix24 = require "bitrix24"
local router = bitrix24.router{ token = "serve-logs-token" }
router:on("ONCRMLEADADD", function(event)
   if event.id == "2" then error("boom on lead 2") end
end)
router:on("ONCRMLEADADDD", function() end) -- misspelt: warned about at load, once
return router
]]

local function body(name, id, token)
   return ("event=%s&data%%5BFIELDS%%5D%%5BID%%5D=%s&auth%%5Bapplication_token%%5D=%s"):format(
      name, id, token or "serve-logs-token")
end

local function post(srv, b)
   return assert(srv:request{ method = "POST", path = "/", body = b,
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } })
end

local function count(text, needle)
   local n, from = 0, 1
   while true do
      local at = text:find(needle, from, true)
      if not at then return n end
      n, from = n + 1, at + #needle
   end
end

local function metric(srv, name)
   local m = assert(srv:request{ path = "/metrics" }).body
   return tonumber(m:match("\n" .. name:gsub("%p", "%%%0") .. " (%d+)"))
end

for _, mode in ipairs{ "durable", "sync" } do
   describe("b24 serve logs (" .. mode .. ")", function()
      local srv, dir
      setup(function()
         dir = b24.tmpdir()
         local args = { "--workers", "2", "--log-level", "debug", "--max-attempts", "2",
                        "--retry-base", "0.05", "--retry-max", "0.1" }
         if mode == "sync" then
            args[#args + 1] = "--sync"
         else
            args[#args + 1] = "--inbox"
            args[#args + 1] = dir .. "/inbox.sqlite"
         end
         srv = b24.start{ script = ROUTER, args = args }
      end)
      teardown(function()
         srv:stop()
         os.execute("rm -rf " .. b24.quote(dir))
      end)

      it("gives a refusal's reason, never the token", function()
         assert.equal(401, post(srv, body("ONCRMLEADADD", "1", "not-the-token")).status)
         assert(srv:wait_log('reason="wrong application token"'))
         assert.not_matches("not-the-token", srv:log(), 1, true)
      end)

      it("says when no handler matched a delivery", function()
         assert.equal(200, post(srv, body("ONCRMDEALADD", "3")).status)
         assert(srv:wait_log('msg="delivery matched no handler"'))
         assert.not_matches('msg="delivery handled" event=ONCRMDEALADD', srv:log(), 1, true)
      end)

      it("logs a failing handler's message per attempt and its traceback at debug", function()
         post(srv, body("ONCRMLEADADD", "2"))
         if mode == "durable" then
            assert(srv:wait_log('msg="delivery moved to the dead letters"'))
            local log = srv:log()
            local failed = {}
            for line in log:gmatch("[^\n]+") do
               if line:find('msg="delivery failed"', 1, true) then failed[#failed + 1] = line end
            end
            assert.equal(2, #failed) -- --max-attempts 2: one line each
            for _, line in ipairs(failed) do
               assert.matches("boom on lead 2", line, 1, true)
               assert.not_matches("stack traceback", line, 1, true)
            end
            assert.equal(2, count(log, 'msg="delivery failure traceback"'))
         else
            assert(srv:wait_log('msg="handler failure traceback"'))
            local log = srv:log()
            assert.equal(1, count(log, 'msg="handler failed"'))
            for line in log:gmatch("[^\n]+") do
               if line:find('msg="handler failed"', 1, true) then
                  assert.matches("boom on lead 2", line, 1, true)
                  assert.not_matches("stack traceback", line, 1, true)
               end
            end
         end
      end)

      it("counts handler errors as the runs that failed", function()
         if mode == "durable" then
            assert.equal(metric(srv, 'b24_handler_runs_total{outcome="error"}'),
                         metric(srv, "b24_handler_errors_total"))
            assert.equal(2, metric(srv, "b24_handler_errors_total"))
         else -- a sync router answers 500 for a failing handler without raising to the host
            assert.equal(0, metric(srv, "b24_handler_errors_total"))
         end
      end)

      it("warns once at load about an event name Bitrix24 does not have", function()
         local log = srv:log()
         assert.equal(1, count(log, "router:on: no Bitrix24 event has this name"))
         assert.matches("did_you_mean=ONCRMLEADADD event=ONCRMLEADADDD", log, 1, true)
      end)
   end)
end
