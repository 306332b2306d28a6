-- The REST client meeting a moved portal and the errors no retry cures, over real HTTP: a `b24
-- serve` portal (spec/helpers/moving_portal_main.lua) that redirects and fails on request, and a
-- second server that must never hear the webhook code. Issue 13 item 4.
local bitrix24 = require "bitrix24"
local b24 = require "helpers.b24"
local httpd = require "helpers.httpd"

local CODE = "moving0portal0code01"

describe("client against a portal that moves or refuses", function()
   local srv, other, client, lines

   setup(function()
      srv = b24.start{ script_path = b24.root .. "/spec/helpers/moving_portal_main.lua", args = { "--workers", "1" } }
      other = httpd.start{}
   end)
   teardown(function()
      if srv then srv:stop() end
      if other then other.stop() end
   end)

   before_each(function()
      lines = {}
      client = bitrix24.client{ url = srv.base .. "/rest/1/" .. CODE .. "/", backoff = { base = 0.01, cap = 0.02 },
         log = function(level, msg, fields)
            local parts = { level, msg }
            for k, v in pairs(fields or {}) do parts[#parts + 1] = k .. "=" .. tostring(v) end
            lines[#lines + 1] = table.concat(parts, " ")
         end }
   end)

   local function count(method)
      return assert(client:call("spec.count"))[method] or 0
   end

   it("follows a redirect that keeps the host and the webhook's path, and sends a write again there", function()
      local before = count("spec.redirect")
      local location = "/rest/1/" .. CODE .. "/spec.redirect"
      -- a write (not idempotent): a redirected request was not executed, so it is sent again
      local res, err = client:call("spec.redirect", { location = location, once = true, status = 307 })
      assert.is_nil(err)
      assert.equal("ran", res)
      assert.equal(before + 2, count("spec.redirect"))
   end)

   it("does not follow to another site: the error names it masked, and that site hears nothing", function()
      local before = count("spec.redirect")
      local location = other.url .. "/rest/1/" .. CODE .. "/crm.lead.add"
      local res, err = client:call("spec.redirect", { location = location })
      assert.is_nil(res)
      assert.equal("REDIRECT", err.code)
      assert.equal(301, err.status)
      assert.is_false(err.retryable)
      local text = tostring(err)
      assert.matches("not https: not followed", text, 1, true)
      assert.matches(other.url .. "/…", text, 1, true)
      assert.not_matches(CODE, text, 1, true)
      assert.equal(before + 1, count("spec.redirect")) -- asked once, not retried
      local stats = assert(require("bitrix24.core").http{}:request{ url = other.url .. "/stats" })
      assert.equal(1, require("cjson").decode(stats.body).requests) -- only this /stats
      for _, line in ipairs(lines) do assert.not_matches(CODE, line, 1, true) end
   end)

   it("refuses a redirect off the webhook's path and one to plain http elsewhere", function()
      for _, location in ipairs({ "/auth/?backurl=%2Frest%2F", "/rest/2/" .. CODE .. "/x",
                                  "http://new.bitrix24.ru/rest/1/" .. CODE .. "/x" }) do
         local _, err = client:call("spec.redirect", { location = location })
         assert.equal("REDIRECT", err.code, location)
         assert.not_matches(CODE, tostring(err), 1, true)
      end
   end)

   it("stops a redirect loop after a few hops", function()
      local before = count("spec.redirect")
      local _, err = client:call("spec.redirect", { location = "/rest/1/" .. CODE .. "/spec.redirect" })
      assert.equal("REDIRECT", err.code)
      assert.matches("redirected 5 times", tostring(err), 1, true)
      assert.equal(before + 6, count("spec.redirect"))
   end)

   -- protocol.md §2; PORTAL_DELETED is 403 in rest/classes/general/rest.php, 500 in the docs
   local TERMINAL = {
      { 403, "PORTAL_DELETED", "Portal was deleted", "portal was deleted or moved" },
      { 500, "PORTAL_DELETED", "Portal was deleted", "portal was deleted or moved" },
      { 401, "INVALID_CREDENTIALS", "Invalid request credentials", "copy its URL" },
      { 401, "NO_AUTH_FOUND", "Wrong authorization data", "found no credentials" },
      { 401, "insufficient_scope", "The request requires higher privileges than provided by the webhook token",
        "lacks the permission this method needs" },
      { 403, "ACCESS_DENIED", "Access denied!", "give that user the rights" },
      { 403, "WRONG_AUTH_TYPE", "Current authorization type is denied for this method", "for applications" },
      { 404, "ERROR_METHOD_NOT_FOUND", "Method not found!", "no such method" },
      { 503, "OVERLOAD_LIMIT", "REST API is blocked due to overload.", "blocked its REST API for overload" },
   }

   it("never retries the errors no retry cures, and says in words what to do", function()
      for _, t in ipairs(TERMINAL) do
         local before = count("spec.error")
         -- read methods are retried on a 5xx: these must not be
         local res, err = client:call("spec.error", { status = t[1], error = t[2], error_description = t[3] })
         assert.is_nil(res)
         assert.equal(t[2], err.code)
         assert.equal(t[1], err.status)
         -- OVERLOAD_LIMIT lifts after minutes: the caller may try later, the client does not
         assert.equal(t[2] == "OVERLOAD_LIMIT", err.retryable, t[2])
         assert.equal(before + 1, count("spec.error"), t[2] .. " was retried")
         assert.is_string(err.hint, t[2])
         assert.matches(t[4], tostring(err), 1, true)
      end
   end)

   it("names the scope a method needs from its name", function()
      local _, err = client:call("spec.error", { status = 401, error = "insufficient_scope" })
      assert.not_matches("scope '", err.hint, 1, true) -- spec.* belongs to no scope
      local hint = require("bitrix24.hints").hint("insufficient_scope", "tasks.task.list")
      assert.matches("scope 'task'", hint, 1, true)
   end)

   it("still retries what a retry cures (a 500 INTERNAL_SERVER_ERROR on a read)", function()
      local before = count("spec.error")
      local _, err = client:call("spec.error", { status = 500, error = "INTERNAL_SERVER_ERROR" }, { safe = true })
      assert.equal("INTERNAL_SERVER_ERROR", err.code)
      assert.is_nil(err.hint)
      assert.is_true(count("spec.error") - before > 1)
   end)
end)
