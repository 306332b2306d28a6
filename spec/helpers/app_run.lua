-- `b24 run spec/helpers/app_run.lua STORE MODE [ARGS…]` for spec/app_spec.lua: an application
-- process on the store file STORE (shared with the receiver), configured from APP_CLIENT_ID,
-- APP_CLIENT_SECRET, APP_OAUTH (and APP_LEASE, the refresh lease's seconds); prints one JSON line.
--   portal                         → { member_id, domain, version, access_token_sha }
--   bind MEMBER URL EVENT…         → { bound = {…} } | { error }
--   bind_offline MEMBER EVENT…     → { bound = {…} } | { error }   (event_type offline)
--   unbind MEMBER URL EVENT…       → { count } | { error }
--   bindings MEMBER                → { bindings = event.get's list } | { error }
--   call MEMBER METHOD [JSON]      → { result } | { error, code }
--   export MEMBER METHOD WEBHOOK   → { rows, distinct } : expires every token (through WEBHOOK's
--                                    emulator.tokens.expire) after the first round
local bitrix24 = require "bitrix24"
local host = require "b24.host"
local cjson = require("cjson.safe").new()

local store_path, mode = ...
local args = { select(3, ...) }
local app = bitrix24.app{
   client_id = os.getenv("APP_CLIENT_ID"), client_secret = os.getenv("APP_CLIENT_SECRET"),
   oauth_server = os.getenv("APP_OAUTH"), store = host.tokens(store_path), log = host.log,
   lease = tonumber(os.getenv("APP_LEASE") or "30"), -- a tiny lease lets refreshes race
}

local function out(t)
   io.write(assert(cjson.encode(t)), "\n")
   return 0
end

local function failure(err)
   return out({ error = tostring(err), code = type(err) == "table" and err.code or nil })
end

if mode == "portal" then
   local list = app.store:list()
   local r = list[1]
   if not r then return out({}) end
   return out({ member_id = r.member_id, domain = r.domain, version = r.version, portals = #list,
                access_token_sha = bitrix24.core.sha256(r.access_token, "hex") })
elseif mode == "bind" then
   local events = {}
   for i = 3, #args do events[#events + 1] = args[i] end
   local bound, err = app:bind(args[1], events, args[2])
   if not bound then return failure(err) end
   return out({ bound = bound })
elseif mode == "bind_offline" then
   local events = {}
   for i = 2, #args do events[#events + 1] = args[i] end
   local bound, err = app:bind(args[1], events, { offline = true })
   if not bound then return failure(err) end
   return out({ bound = bound })
elseif mode == "unbind" then
   local events = {}
   for i = 3, #args do events[#events + 1] = args[i] end
   local count, err = app:unbind(args[1], events, args[2])
   if not count then return failure(err) end
   return out({ count = count })
elseif mode == "bindings" then
   local list, err = app:bindings(args[1])
   if not list then return failure(err) end
   return out({ bindings = list })
elseif mode == "call" then
   local client, cerr = app:client(args[1])
   if not client then return failure(cerr) end
   local params = args[3] and cjson.decode(args[3]) or nil
   local result, err = client:call(args[2], params)
   if result == nil then return failure(err) end
   return out({ result = result })
elseif mode == "export" then
   local client, cerr = app:client(args[1])
   if not client then return failure(cerr) end
   local admin = bitrix24.client(args[3])
   local expired = false
   local rows, err = client:all(args[2], {}, { on_progress = function()
      if not expired then
         expired = true
         assert(admin:call("emulator.tokens.expire"))
      end
   end })
   if not rows then return failure(err) end
   local seen, distinct = {}, 0
   for _, r in ipairs(rows) do
      if not seen[r.ID] then seen[r.ID] = true; distinct = distinct + 1 end
   end
   return out({ rows = #rows, distinct = distinct, expired = expired })
end
return out({ error = "unknown mode " .. tostring(mode) })
