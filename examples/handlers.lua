-- The handler `./dev run` serves: receives Bitrix24 outgoing-webhook deliveries for CRM leads,
-- deals and tasks, checks the application token in constant time, and logs each event.
--   B24_APP_TOKEN=<the token the portal shows> b24 serve examples/handlers.lua
local core = require "bitrix24.core"
local host = require "bitrix24.host"
local cjson = require "cjson.safe"

local token = os.getenv("B24_APP_TOKEN")
if not token or token == "" then
  error("set B24_APP_TOKEN to the application token of your outgoing webhook", 0)
end

local HANDLED = {
  ONCRMLEADADD = true, ONCRMLEADUPDATE = true, ONCRMLEADDELETE = true,
  ONCRMDEALADD = true, ONCRMDEALUPDATE = true, ONCRMDEALDELETE = true,
  ONTASKADD = true, ONTASKUPDATE = true, ONTASKDELETE = true,
}
local JSON = { ["Content-Type"] = "application/json" }

local function answer(status, reason)
  return status, JSON, cjson.encode(reason and { error = reason } or { success = true })
end

-- the ID of the object an event is about: FIELDS for CRM, FIELDS_AFTER/BEFORE for tasks
local function object_id(data)
  if type(data) ~= "table" then return nil end
  for _, key in ipairs{ "FIELDS", "FIELDS_AFTER", "FIELDS_BEFORE" } do
    if type(data[key]) == "table" and data[key].ID then return data[key].ID end
  end
end

return function(request)
  if request.method ~= "POST" then return answer(405, "POST expected") end
  local ctype = (request.headers["content-type"] or ""):lower()
  if ctype:find("application/x-www-form-urlencoded", 1, true) ~= 1 then
    return answer(415, "application/x-www-form-urlencoded expected")
  end
  local event, err = core.form_decode(request.body)
  if not event then return answer(400, err) end
  local auth = type(event.auth) == "table" and event.auth or {}
  if type(auth.application_token) ~= "string" or not core.equal(auth.application_token, token) then
    return answer(401, "wrong or missing application token")
  end
  local name = type(event.event) == "string" and event.event:upper() or ""
  if HANDLED[name] then
    host.log("info", "event", { event = name, id = object_id(event.data) or "?",
                                domain = auth.domain or "?", ts = event.ts or "?" })
  else
    host.log("debug", "event ignored", { event = name })
  end
  return answer(200)
end
