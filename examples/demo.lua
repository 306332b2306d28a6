-- The main job until the b24 host exists: decode a Bitrix24 outgoing-webhook delivery,
-- verify its application token in constant time, and show the form body of a REST call.
--   lua5.4 examples/demo.lua [BODY_FILE]      (B24_APP_TOKEN: the token to expect)
--   B24_WEBHOOK_URL=https://portal/rest/1/CODE/ makes one real user.current call as well.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "build/5.4/?.so;" .. package.cpath

local bitrix24 = require "bitrix24"
local core = bitrix24.core
local cjson = require("cjson.safe").new()

-- A delivery as a portal sends it for ONCRMLEADADD (token and member id made up).
local SAMPLE = "event=ONCRMLEADADD&event_handler_id=7&data%5BFIELDS%5D%5BID%5D=4021"
   .. "&ts=1766047124&auth%5Bdomain%5D=example.bitrix24.com"
   .. "&auth%5Bclient_endpoint%5D=https%3A%2F%2Fexample.bitrix24.com%2Frest%2F"
   .. "&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F"
   .. "&auth%5Bmember_id%5D=d897063e1ce7c5eb9f04b9751eef5915"
   .. "&auth%5Bapplication_token%5D=demo0token0for0the0readme000001"

local body = SAMPLE
if arg[1] then
   local f = assert(io.open(arg[1], "rb"))
   body = f:read("a")
   f:close()
end

local event, err = core.form_decode(body)
if not event then
   io.stderr:write("cannot decode the delivery: ", err, "\n")
   os.exit(1)
end
local expected = os.getenv("B24_APP_TOKEN") or "demo0token0for0the0readme000001"
local token = type(event.auth) == "table" and event.auth.application_token or ""
local verified = core.equal(token, expected)

local fields = type(event.data) == "table" and (event.data.FIELDS or event.data.FIELDS_AFTER)
print(("event %s for id %s from %s: token %s"):format(tostring(event.event),
   type(fields) == "table" and tostring(fields.ID) or "?",
   type(event.auth) == "table" and tostring(event.auth.domain) or "?",
   verified and "verified" or "REJECTED"))
event.auth.application_token = "***" -- never print a secret
print(cjson.encode(event))

local params = { fields = { TITLE = "Acme order", NAME = "Ivan",
                            PHONE = { { VALUE = "+7 900 000-00-00", VALUE_TYPE = "WORK" } } },
                 params = { REGISTER_SONET_EVENT = true } }
print("crm.lead.add as a PHP form body: " .. core.form_encode(params))

local webhook = os.getenv("B24_WEBHOOK_URL")
if webhook and webhook ~= "" then
   local http = core.http()
   local res, msg, kind = http:request{ method = "POST", url = webhook .. "user.current.json",
                                        headers = { ["Content-Type"] = "application/json" }, body = "{}" }
   local masked = webhook:gsub("(/rest/%d+/)[^/]+", "%1***")
   if not res then
      io.stderr:write(("user.current via %s failed (%s): %s\n"):format(masked, kind, msg))
      os.exit(1)
   end
   print(("user.current via %s: HTTP %d %s"):format(masked, res.status, res.body:sub(1, 200)))
end
os.exit(verified and 0 or 1)
