-- bitrix24.ngx: the OpenResty (ngx_lua) side of the router — the request as router:accept takes
-- it, read from the current nginx request, the answer written back, and a logger on ngx.log.
-- Only usable inside nginx (content_by_lua*); router:handle_ngx is the entry point users call.
local type = type
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local io_open = io.open
local string_lower = string.lower
local string_gsub = string.gsub
local string_match = string.match
local table_concat = table.concat
local table_sort = table.sort

local _M = {}

local MAX_HEADERS = 100

-- The ngx API table, raising a clear error outside nginx.
local function ngx_api()
   local ngx = _G.ngx
   if type(ngx) ~= "table" or type(ngx.req) ~= "table" then
      error("bitrix24.ngx works only inside nginx with ngx_lua (content_by_lua*)", 3)
   end
   return ngx
end
_M.api = ngx_api

-- The request headers with lower-case names, a repeated header joined with ", " as b24 gives it.
local function request_headers(ngx)
   local raw = ngx.req.get_headers(MAX_HEADERS)
   local headers = {}
   for name, value in pairs(raw) do
      if type(value) == "table" then value = table_concat(value, ", ") end
      headers[string_lower(name)] = value
   end
   return headers
end

-- The body nginx spilled to a temporary file (beyond client_body_buffer_size): read up to
-- max_body bytes; nil, status, reason when it is larger or cannot be read.
local function read_body_file(path, max_body)
   local f, err = io_open(path, "rb")
   if not f then
      return nil, 500, "request body could not be read: " .. tostring(err)
   end
   local size = f:seek("end")
   if size and size > max_body then
      f:close()
      return nil, 413, "request body too large"
   end
   f:seek("set", 0)
   local body = f:read(max_body + 1) or ""
   f:close()
   if #body > max_body then return nil, 413, "request body too large" end
   return body
end

-- The current nginx request as router:accept takes it: { method, path, query, headers (lower-case
-- names), body, remote_addr }. The body is read here (ngx.req.read_body): from memory, or from the
-- file nginx spilled it to, up to max_body bytes. Returns the request, or nil, status, reason
-- (413 for a body over max_body — never a silently empty body).
function _M.read_request(max_body)
   local ngx = ngx_api()
   local headers = request_headers(ngx)
   local request = {
      method = ngx.req.get_method(),
      path = ngx.var.uri,
      query = ngx.var.args,
      headers = headers,
      remote_addr = ngx.var.remote_addr,
      body = "",
   }
   -- a declared length over the limit is refused before a byte of the body is read
   local declared = tonumber(headers["content-length"] or "")
   if declared and declared > max_body then return nil, 413, "request body too large" end
   ngx.req.read_body()
   local body = ngx.req.get_body_data()
   if body == nil then
      local path = ngx.req.get_body_file()
      if path then
         local status, reason
         body, status, reason = read_body_file(path, max_body)
         if body == nil then return nil, status, reason end
      end
   end
   if body and #body > max_body then return nil, 413, "request body too large" end
   request.body = body or ""
   return request
end

-- Writes an answer and finishes the response (ngx.eof), so the client has it at once even when
-- more work follows in this request or in a timer.
function _M.respond(status, headers, body)
   local ngx = ngx_api()
   ngx.status = status
   if type(headers) == "table" then
      for name, value in pairs(headers) do ngx.header[name] = value end
   end
   if body and body ~= "" then ngx.print(body) end
   return ngx.eof()
end

local ESCAPES = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function quote(v)
   local s = tostring(v)
   if string_match(s, '^[%w%._:/%-]+$') then return s end
   return '"' .. string_gsub(s, '[\\"\n\r\t]', ESCAPES) .. '"'
end

local LEVELS = { error = "ERR", warn = "WARN", warning = "WARN", info = "INFO", debug = "DEBUG" }

-- A log(level, msg, fields) function on ngx.log: one line, fields as logfmt in key order.
function _M.log(level, msg, fields)
   local ngx = _G.ngx
   local parts = { tostring(msg) }
   if type(fields) == "table" then
      local pairs_list = {}
      for k, v in pairs(fields) do pairs_list[#pairs_list + 1] = { tostring(k), v } end
      table_sort(pairs_list, function(a, b) return a[1] < b[1] end)
      for i = 1, #pairs_list do
         parts[#parts + 1] = pairs_list[i][1] .. "=" .. quote(pairs_list[i][2])
      end
   end
   local line = table_concat(parts, " ")
   if type(ngx) == "table" and type(ngx.log) == "function" then
      ngx.log(ngx[LEVELS[level] or "NOTICE"] or ngx.NOTICE, line)
   else
      io.stderr:write(tostring(level), " ", line, "\n")
   end
end

return _M
