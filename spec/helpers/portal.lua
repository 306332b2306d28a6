-- Client specs' helpers: counting the HTTP requests a b24 server logged, a client aimed at it, and
-- a scripted portal (a b24 serve handler answering planned responses per method).
local b24 = require "helpers.b24"
local bitrix24 = require "bitrix24"

local M = {}
local pack = table.pack or function(...) return { n = select("#", ...), ... } end
local unpack = table.unpack or unpack

M.CODE = "spec0client0code77"

local marks = 0
-- Sends a request the server logs, waits for its log line: the log position after it.
function M.mark(srv)
   marks = marks + 1
   local p = "/mark/" .. marks
   srv:request{ method = "GET", path = p }
   assert(srv:wait_log("path=" .. p .. " "))
   return #srv.lines
end

-- The REST requests (paths containing `needle`, "/rest/" by default) logged between two marks,
-- and how many of them had each status.
function M.requests(srv, from, to, needle)
   needle = needle or "/rest/"
   local n, by_status = 0, {}
   for i = from + 1, to do
      local line = srv.lines[i]
      if line:find('msg="?request') and line:find("path=[^ ]*" .. needle:gsub("%p", "%%%0")) then
         n = n + 1
         local status = line:match("status=(%d+)") or "none"
         by_status[status] = (by_status[status] or 0) + 1
      end
   end
   return n, by_status
end

-- Runs fn() and counts the REST requests the server saw meanwhile: results of fn, then count,
-- by_status appended in a table { n = …, status = {…} }.
function M.counting(srv, fn, needle)
   local from = M.mark(srv)
   local out = pack(fn())
   local to = M.mark(srv)
   local n, by_status = M.requests(srv, from, to, needle)
   return { n = n, status = by_status }, unpack(out, 1, out.n)
end

function M.url(srv, code)
   return srv.base .. "/rest/1/" .. (code or M.CODE) .. "/"
end

-- A client of srv with fast backoff; opts override.
function M.client(srv, opts)
   opts = opts or {}
   local o = { url = M.url(srv, opts.code), backoff = { base = 0.01, cap = 0.05 }, limit = false }
   for k, v in pairs(opts) do if k ~= "code" then o[k] = v end end
   return bitrix24.client(o)
end

-- A portal answering each method with its planned responses in turn (the last one repeats):
-- plan = { ["crm.x.get"] = { {503, '{"error":…}'}, {200, '{"result":1}'} }, … }; a response
-- {"sleep", seconds, status, body} sleeps first.
function M.scripted(plan)
   local lines = { "local core = require 'bitrix24.core'", "local plan = {" }
   for method, responses in pairs(plan) do
      local items = {}
      for i, r in ipairs(responses) do
         if r[1] == "sleep" then
            items[i] = ("{ sleep = %s, status = %d, body = %q }"):format(r[2], r[3], r[4])
         else
            items[i] = ("{ status = %d, body = %q }"):format(r[1], r[2])
         end
      end
      lines[#lines + 1] = ("  [%q] = { %s },"):format(method, table.concat(items, ", "))
   end
   lines[#lines + 1] = "}"
   lines[#lines + 1] = [[
local seen = {}
return function(req)
  local method = req.path:match("^/rest/%d+/[^/]+/([^/]+)$")
  local responses = method and plan[method]
  if not responses then return 404, { ["Content-Type"] = "application/json" },
    '{"error":"ERROR_METHOD_NOT_FOUND","error_description":"Method not found!"}' end
  seen[method] = (seen[method] or 0) + 1
  local r = responses[math.min(seen[method], #responses)]
  if r.sleep then core.sleep(r.sleep) end
  local ctype = r.body:sub(1, 1) == "{" and "application/json" or "text/html"
  return r.status, { ["Content-Type"] = ctype }, r.body
end]]
   return b24.start{ script = table.concat(lines, "\n"), args = { "--workers", "1" } }
end

return M
