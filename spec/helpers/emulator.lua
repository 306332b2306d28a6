-- Talking to an emulator started with helpers.b24 (b24.emulate / b24.start): webhook paths and
-- JSON or form calls answering status, decoded body, raw body.
local cjson = require "cjson"

local M = {}

M.CODE = "spec0emu0code001"

function M.path(method, code, user)
   return "/rest/" .. (user or "1") .. "/" .. (code or M.CODE) .. "/" .. method
end

-- One call with a JSON body (opts.code, opts.user, opts.content_type, opts.body, opts.timeout).
-- Returns status, decoded body, raw body; or nil, err, kind on a transport failure.
function M.call(srv, method, params, opts)
   opts = opts or {}
   local res, err, kind = srv:request{ method = "POST", path = M.path(method, opts.code, opts.user),
      headers = { ["Content-Type"] = opts.content_type or "application/json" },
      body = opts.body or cjson.encode(params or {}), timeout = opts.timeout }
   if not res then return nil, err, kind end
   return res.status, (res.body ~= "" and cjson.decode(res.body) or nil), res.body
end

-- A batch whose commands go in the order given, as a portal runs them in the order sent (a Lua
-- table encoded by cjson would send them in any order): cmds = { {label, "method?query"}, … },
-- extra = other top-level fields (halt, …).
function M.batch(srv, cmds, extra)
   local parts = {}
   for i, c in ipairs(cmds) do parts[i] = cjson.encode(c[1]) .. ":" .. cjson.encode(c[2]) end
   local head = ""
   for k, v in pairs(extra or {}) do head = head .. cjson.encode(k) .. ":" .. cjson.encode(v) .. "," end
   return M.call(srv, "batch", nil, { body = "{" .. head .. '"cmd":{' .. table.concat(parts, ",") .. "}}" })
end

-- An application's call: POST /rest/METHOD with the access token in the JSON body (params
-- copied, auth added). Returns status, decoded body.
function M.rest(srv, method, access_token, params)
   local body = {}
   for k, v in pairs(params or {}) do body[k] = v end
   body.auth = access_token
   local res = assert(srv:request{ method = "POST", path = "/rest/" .. method,
      headers = { ["Content-Type"] = "application/json" }, body = cjson.encode(body) })
   return res.status, cjson.decode(res.body)
end

-- One call with a form body (and an optional query string).
function M.form(srv, method, body, query)
   local res = assert(srv:request{ method = "POST", path = M.path(method) .. (query and "?" .. query or ""),
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }, body = body })
   return res.status, cjson.decode(res.body), res.body
end

-- Sorted keys of a table.
function M.keys(t)
   local out = {}
   for k in pairs(t) do out[#out + 1] = k end
   table.sort(out)
   return out
end

-- An id as a portal prints it (cjson decodes JSON numbers as floats in Lua 5.4).
function M.str(n)
   return string.format("%d", n)
end

return M
