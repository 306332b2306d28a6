-- An application's client renewing its access token on expired_token (issue 15), over real HTTP
-- against a b24 serve endpoint that expires tokens on request (spec/helpers/token_portal_main.lua):
-- the same request goes again with the fresh token, concurrent requests renew once, the token is
-- in the body and never in an error or a log line.
local bitrix24 = require "bitrix24"
local b24 = require "helpers.b24"

describe("client with an access token", function()
   local srv, lines

   setup(function()
      srv = b24.start{ script_path = b24.root .. "/spec/helpers/token_portal_main.lua", args = { "--workers", "1" } }
   end)
   teardown(function() if srv then srv:stop() end end)

   local current = "token0first0000"
   local n = 0
   -- the portal's side of a refresh: a new valid token (what the OAuth server would issue)
   local function rotate()
      n = n + 1
      local fresh = string.format("token0fresh%04d", n)
      local admin = bitrix24.client{ url = srv.base .. "/rest/", auth = current }
      assert(admin:call("spec.valid", { token = fresh }))
      current = fresh
      return fresh
   end

   local function counts()
      local c = bitrix24.client{ url = srv.base .. "/rest/", auth = current }
      return assert(c:call("spec.count"))
   end

   local function client_with(refresh)
      lines = {}
      return bitrix24.client{ url = srv.base .. "/rest/", auth = current, refresh = refresh,
         log = function(level, msg, fields)
            local parts = { level, msg }
            for k, v in pairs(fields or {}) do parts[#parts + 1] = k .. "=" .. tostring(v) end
            lines[#lines + 1] = table.concat(parts, " ")
         end }
   end

   it("renews once on expired_token and sends the same request again with the fresh token", function()
      local calls = {}
      local c = client_with(function(stale)
         calls[#calls + 1] = stale
         return current
      end)
      local first = assert(c:call("crm.lead.get", { id = 1 }))
      assert.equal("crm.lead.get", first.method)
      local old = current
      rotate() -- the token the client holds has expired now
      local before = counts()
      local got, err = c:call("crm.lead.add", { fields = { TITLE = "x" } }) -- a write: sent again all the same
      assert.is_nil(err)
      assert.equal("crm.lead.add", got.method)
      assert.same({ old }, calls)
      local after = counts()
      assert.equal(before.expired + 1, after.expired)
      for _, line in ipairs(lines) do
         assert.not_matches("token0", line, 1, true)
      end
   end)

   it("renews once for many concurrent requests that met the expiry together", function()
      local calls = 0
      local c = client_with(function()
         calls = calls + 1
         return current
      end)
      assert(c:call("crm.lead.get", { id = 1 }))
      rotate()
      local list = {}
      for i = 1, 120 do list[i] = { "crm.lead.get", { id = i } } end
      local results, errors = c:call_many(list) -- three batches, sent at once
      assert.is_nil(errors)
      assert.equal(120, #results)
      assert.equal(1, calls)
   end)

   it("fails with the refresh's error, masked, when no fresh token comes", function()
      -- a message naming the stale token: the client masks every token it has held
      local c = client_with(function(stale) return nil, "invalid_grant: no refresh after " .. stale end)
      rotate()
      local res, err = c:call("crm.lead.get", { id = 1 })
      assert.is_nil(res)
      assert.equal("refresh_failed", err.code)
      assert.equal("crm.lead.get", err.method)
      assert.matches("invalid_grant: no refresh after ***", tostring(err), 1, true)
      assert.is_false(err.retryable)
      assert.not_matches("token0", tostring(err), 1, true)
   end)

   it("without a refresh option expired_token is an error that says to refresh", function()
      local c = bitrix24.client{ url = srv.base .. "/rest/", auth = "token0first0000" }
      local _, err = c:call("crm.lead.get", { id = 1 })
      assert.equal("expired_token", err.code)
      assert.matches("refresh", err.hint, 1, true)
      assert.not_matches("token0", tostring(err), 1, true)
   end)

   it("refuses a refresh option without a token", function()
      assert.has_error(function() bitrix24.client{ url = srv.base .. "/rest/", refresh = function() end } end)
   end)
end)
