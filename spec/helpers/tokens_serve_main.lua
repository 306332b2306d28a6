-- A b24 serve handler for spec/host_tokens_spec.lua: a router (token "spec-app-token") whose
-- handler writes each event's portal into b24.host.tokens() and logs msg="stored ID VERSION";
-- and POST /store, whose JSON body is a list of store calls (as tokens_apply takes them),
-- answered with their results: the store over HTTP, in the request's own Lua state.
local bitrix24 = require "bitrix24"
local host = require "b24.host"
local cjson = require("cjson.safe").new()
local apply = require "tokens_apply"

local JSON = { ["Content-Type"] = "application/json" }

local router = bitrix24.router{ token = "spec-app-token" }

-- each delivery stores its portal: the token in data.TOKEN, a counter swapped up in scope
router:on("*", function(event, ctx)
   local store = host.tokens()
   local data = type(event.data) == "table" and event.data or {}
   local rec = store:get(event.member_id)
   local v, err
   if rec then
      v, err = store:swap(event.member_id, rec.version,
         { access_token = data.TOKEN, scope = tostring(tonumber(rec.scope or "0") + 1) })
   else
      v, err = store:put{ member_id = event.member_id, domain = event.domain, access_token = data.TOKEN,
                          scope = "1" }
   end
   if not v then error("store failed: " .. tostring(err)) end
   ctx.log("info", "stored " .. tostring(event.id) .. " " .. tostring(v))
end)

-- the answer to POST /store
local function store_answer(req)
   local ops = cjson.decode(req.body)
   if type(ops) ~= "table" then return 400, JSON, '{"error":"a JSON list of calls expected"}' end
   local ok, store = pcall(host.tokens)
   if not ok then return 200, JSON, cjson.encode({ open_error = tostring(store) }) end
   return 200, JSON, cjson.encode(apply(store, ops))
end

local handler = {}

function handler.accept(_, req)
   if req.path == "/store" then
      local status, headers, body = store_answer(req)
      return { status = status, headers = headers, body = body }
   end
   return router:accept(req)
end

function handler.dispatch(_, ...)
   return router:dispatch(...)
end

function handler.handle(_, req)
   if req.path == "/store" then return store_answer(req) end
   return router:handle(req)
end

return handler
