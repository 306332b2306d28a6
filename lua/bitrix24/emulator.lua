-- bitrix24.emulator: a Bitrix24 portal in memory behind incoming-webhook URLs (protocol.md §1–§5),
-- as a handler for `b24 serve`. State lives in the Lua state of one server thread: run it with
-- `--workers 1`.
--   return require("bitrix24.emulator").handler{ user_id = 1, code = "…", seed_leads = 100 }
local core = require "bitrix24.core"
local crm = require "bitrix24.emulator.crm"
local cjson = require("cjson.safe").new()

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local next = next
local setmetatable = setmetatable
local string_lower = string.lower
local string_sub = string.sub
local string_find = string.find
local string_format = string.format
local string_gsub = string.gsub
local table_sort = table.sort
local table_concat = table.concat
local math_floor = math.floor
local math_max = math.max
local math_random = math.random
local os_date = os.date
local os_time = os.time
local io_stderr = io.stderr
local form_decode = core.form_decode
local equal = core.equal
local now = core.now
local sleep = core.sleep
local to_text = crm.to_text

cjson.encode_number_precision(14)

local _M = {}
local Portal = {}
local mt = { __index = Portal }

local BATCH_MAX = 50
local OPERATING_WINDOW = 600
local DEFAULT_CODE = "emu0dev0code0000"
local JSON_HEADERS = { ["Content-Type"] = "application/json; charset=utf-8" }
-- lua-cjson 2.1.0 has no encode_empty_table_as_object: empty tables become this marker, which the
-- encoder's output then turns into PHP's [].
local EMPTY = "__b24_emulator_empty_array__"
local EMPTY_JSON = '"' .. EMPTY .. '"'

local function fail(status, code, desc)
   return nil, { status = status, error = code, error_description = desc }
end

-- A copy of v as PHP's json_encode would shape it: every empty table is [].
local function php(v)
   if type(v) ~= "table" then return v end
   if next(v) == nil then return EMPTY end
   local out = {}
   for k, item in pairs(v) do out[k] = php(item) end
   return out
end

-- A map keyed by labels (in their run order) as PHP shapes it: keys exactly "0".."n-1" make a list.
local function php_map(map, labels)
   local used, is_list = {}, true
   for _, label in ipairs(labels) do
      if map[label] ~= nil then
         used[#used + 1] = label
         if label ~= tostring(#used - 1) then is_list = false end
      end
   end
   if #used == 0 or not is_list then return map end
   local list = {}
   for i, label in ipairs(used) do list[i] = map[label] end
   return list
end

local function encode(v)
   local body = cjson.encode(php(v))
   if not body then return nil end
   return (string_gsub(body, EMPTY_JSON, "[]"))
end

local function respond(status, value)
   local body = encode(value)
   if not body then
      status, body = 500, '{"error":"INTERNAL_SERVER_ERROR","error_description":"Internal server error"}'
   end
   return status, JSON_HEADERS, body
end

local function respond_error(err)
   return respond(err.status, { error = err.error, error_description = err.error_description })
end

-- Parses "503=0.2,500=0.05" into { [503] = 0.2, [500] = 0.05 }.
local function parse_faults(spec)
   local faults = {}
   for name, p in string.gmatch(spec or "", "([%w_]+)=([%d.]+)") do
      faults[tonumber(name) or name] = tonumber(p)
   end
   return faults
end

-- Creates a portal. opts: user_id, code, seed_leads, enterprise, latency_ms, faults (string or
-- table), time_scale (speeds up the clock that drains the leaky bucket), clock (a function of
-- seconds replacing the scaled core.now), random (a function returning [0,1)).
function _M.new(opts)
   opts = opts or {}
   local mono0, wall0 = now(), os_time()
   local scale = opts.time_scale or 1
   local self = setmetatable({
      user_id = tonumber(opts.user_id) or 1,
      code = opts.code or DEFAULT_CODE,
      capacity = opts.enterprise and 250 or 50,
      drain = opts.enterprise and 5 or 2,
      latency = (tonumber(opts.latency_ms) or 0) / 1000,
      faults = type(opts.faults) == "table" and opts.faults or parse_faults(opts.faults),
      random = opts.random or math_random,
      clock = opts.clock or function() return (now() - mono0) * scale end,
      wall = function() return wall0 + (now() - mono0) end,
      buckets = {}, operating = {}, stores = {}, methods = {},
   }, mt)
   crm.register(self, self.methods)
   self.methods["user.current"] = function(p)
      return { ID = tostring(p.user_id), ACTIVE = true, NAME = "Emulator", LAST_NAME = "User",
               EMAIL = "user" .. p.user_id .. "@example.com", ADMIN = true, TIME_ZONE = "" }
   end
   self.methods.batch = Portal.batch
   if opts.seed_leads and tonumber(opts.seed_leads) > 0 then crm.seed_leads(self, tonumber(opts.seed_leads)) end
   return self
end

-- A function(request) for `b24 serve` answering as a portal built from opts.
function _M.handler(opts)
   local portal = _M.new(opts)
   return function(request) return portal:handle(request) end
end

-- The ISO-8601 date of unix time t (now by default), as portals print it.
function Portal:date(t)
   return os_date("!%Y-%m-%dT%H:%M:%S+00:00", math_floor(t or self.wall()))
end

-- The leaky bucket of protocol.md §3: true when the request may run, and it then holds a drop.
function Portal:admit(key)
   local t = self.clock()
   local b = self.buckets[key]
   if not b then b = { level = 0, at = t }; self.buckets[key] = b end
   b.level = math_max(0, b.level - (t - b.at) * self.drain)
   b.at = t
   if b.level + 1 > self.capacity then return false end
   b.level = b.level + 1
   return true
end

-- Bills processing seconds to a method; returns its operating seconds and the window's end.
function Portal:bill(method, seconds, wall)
   local o = self.operating[method]
   if not o or wall >= o.reset_at then
      o = { used = 0, reset_at = math_floor(wall) + OPERATING_WINDOW }
      self.operating[method] = o
   end
   o.used = o.used + seconds
   return o.used, o.reset_at
end

function Portal:time_of(method, start, mono_start)
   local processing = now() - mono_start
   local finish = start + processing
   local operating, reset_at = self:bill(method, processing, finish)
   return { start = start, finish = finish, duration = processing, processing = processing,
            date_start = self:date(start), date_finish = self:date(finish),
            operating = operating, operating_reset_at = reset_at }
end

-- Runs one method: result, meta ({total, next}), time | nil, err, time.
function Portal:call(name, params)
   local fn = self.methods[name]
   local start, mono_start = self.wall(), now()
   local ok, result, meta = pcall(fn, self, params)
   local time = self:time_of(name, start, mono_start)
   if not ok then
      io_stderr:write("emulator: ", name, " raised: ", tostring(result), "\n")
      return nil, { status = 500, error = "INTERNAL_SERVER_ERROR", error_description = "Internal server error" }, time
   end
   if result == nil then return nil, meta, time end
   if type(meta) ~= "table" then meta = {} end
   return result, meta, time
end

-- Request parameters as the portal reads them: query ∪ body fields, the body winning; a body is
-- JSON only under exactly `Content-Type: application/json` (invalid JSON gives no fields).
local function parameters(request)
   local params = {}
   if request.query and request.query ~= "" then params = form_decode(request.query) or {} end
   local body = request.body
   if body and body ~= "" then
      local fields
      if (request.headers or {})["content-type"] == "application/json" then
         fields = cjson.decode(body)
         if type(fields) ~= "table" then fields = {} end
      else
         fields = form_decode(body) or {}
      end
      for k, v in pairs(fields) do params[k] = v end
   end
   return params
end
_M.parameters = parameters

local function method_name(s)
   s = string_lower(s)
   s = string_gsub(s, "%.json$", "")
   return s
end

function Portal:handle(request)
   local user, code, name = string.match(request.path or "", "^/rest/([^/]+)/([^/]+)/([^/]+)/?$")
   if not user then return respond_error({ status = 404, error = "ERROR_METHOD_NOT_FOUND",
                                           error_description = "Method not found!" }) end
   name = method_name(name)
   if not self.methods[name] then
      return respond_error({ status = 404, error = "ERROR_METHOD_NOT_FOUND", error_description = "Method not found!" })
   end
   if tonumber(user) ~= self.user_id or #code ~= #self.code or not equal(code, self.code) then
      return respond_error({ status = 401, error = "INVALID_CREDENTIALS",
                             error_description = "Invalid request credentials" })
   end
   local too_many = { status = 503, error = "QUERY_LIMIT_EXCEEDED", error_description = "Too many requests" }
   if not self:admit(request.remote_addr or "") then return respond_error(too_many) end
   local f503, f500 = self.faults[503], self.faults[500]
   if f503 and self.random() < f503 then return respond_error(too_many) end
   if self.latency > 0 then sleep(self.latency) end
   local result, meta, time = self:call(name, parameters(request))
   if f500 and self.random() < f500 then
      return respond_error({ status = 500, error = "INTERNAL_SERVER_ERROR", error_description = "Internal server error" })
   end
   if result == nil then return respond_error(meta) end
   return respond(200, { result = result, total = meta.total, next = meta.next, time = time })
end

-- batch ---------------------------------------------------------------------------------------

local REF_KINDS = { result = "result", next = "result_next", total = "result_total" }

-- Reads a reference such as $result[c0][49][ID] at position i of s: kind, label, path, end.
local function read_ref(s, i)
   local kind, label, j = string.match(s, "^%$(%a+)%[([^%]]*)%]()", i)
   if not kind or not REF_KINDS[kind] then return nil end
   local path = {}
   while true do
      local seg, k = string.match(s, "^%[([^%]]*)%]()", j)
      if not seg then break end
      path[#path + 1] = seg
      j = k
   end
   return kind, label, path, j - 1
end

local function lookup(sections, kind, label, path)
   local v = sections[REF_KINDS[kind]][label]
   for _, seg in ipairs(path) do
      if type(v) ~= "table" then return nil end
      local n = tonumber(seg)
      if n and v[n + 1] ~= nil and v[1] ~= nil then v = v[n + 1] else v = v[seg] end
   end
   return v
end

-- Replaces references in the string values of params: a whole-value reference keeps its type.
local function substitute(v, sections)
   if type(v) == "table" then
      for k, item in pairs(v) do v[k] = substitute(item, sections) end
      return v
   end
   if type(v) ~= "string" or not string_find(v, "$", 1, true) then return v end
   local kind, label, path, last = read_ref(v, 1)
   if kind and last == #v then
      local got = lookup(sections, kind, label, path)
      if got == nil then return "" end
      return got
   end
   local out, i = {}, 1
   while i <= #v do
      local k, l, p, e
      if string_sub(v, i, i) == "$" then k, l, p, e = read_ref(v, i) end
      if k then
         out[#out + 1] = to_text(lookup(sections, k, l, p)) or ""
         i = e + 1
      else
         out[#out + 1] = string_sub(v, i, i)
         i = i + 1
      end
   end
   return table_concat(out)
end

-- Labels in the order the portal runs them: natural order ("c2" before "c10"), moved later only
-- when they reference a label not yet run (a decoded map has lost the caller's order).
local function run_order(commands)
   local labels = {}
   for label in pairs(commands) do labels[#labels + 1] = label end
   local function natural(s)
      return (string_gsub(s, "%d+", function(d) return string.rep("0", 20 - #d) .. d end))
   end
   table_sort(labels, function(a, b) return natural(a) < natural(b) end)
   local deps = {}
   for _, label in ipairs(labels) do
      deps[label] = {}
      for _, dep in string.gmatch(commands[label], "%$(%a+)%[([^%]]*)%]") do
         if commands[dep] and dep ~= label then deps[label][#deps[label] + 1] = dep end
      end
   end
   local done, order = {}, {}
   while #order < #labels do
      local pick
      for _, label in ipairs(labels) do
         if not done[label] then
            local ready = true
            for _, dep in ipairs(deps[label]) do if not done[dep] then ready = false end end
            if ready then pick = label; break end
            pick = pick or label
         end
      end
      if not pick then break end
      done[pick] = true
      order[#order + 1] = pick
   end
   return order
end

-- batch: up to 50 "method?query" commands run in order, with references to earlier results.
function Portal:batch(params)
   local cmd = params.cmd
   local commands = {}
   if type(cmd) == "table" then
      for k, v in pairs(cmd) do
         local label = type(k) == "number" and tostring(k - 1) or tostring(k)
         commands[label] = to_text(v) or ""
      end
   end
   local halt = to_text(params.halt)
   halt = halt == "1" or halt == "Y" or halt == "true"
   local sections = { result = {}, result_error = {}, result_total = {}, result_next = {}, result_time = {} }
   local order = run_order(commands)
   for i, label in ipairs(order) do
      local err
      if i > BATCH_MAX then
         err = { error = "ERROR_BATCH_LENGTH_EXCEEDED", error_description = "Max batch length exceeded" }
      else
         local method, query = string.match(commands[label], "^([^?]*)%??(.*)$")
         method = method_name(method)
         if method == "batch" then
            err = { error = "ERROR_BATCH_METHOD_NOT_ALLOWED", error_description = "Method is not allowed for batch usage" }
         elseif not self.methods[method] then
            err = { error = "ERROR_METHOD_NOT_FOUND", error_description = "Method not found!" }
         else
            local sub = substitute(form_decode(query) or {}, sections)
            local result, meta, time = self:call(method, sub)
            sections.result_time[label] = time
            if result == nil then
               err = { error = meta.error, error_description = meta.error_description }
            else
               sections.result[label] = result
               sections.result_total[label] = meta.total
               sections.result_next[label] = meta.next
            end
         end
      end
      if err then
         sections.result_error[label] = err
         if halt then break end
      end
   end
   for name, map in pairs(sections) do sections[name] = php_map(map, order) end
   return sections
end

_M.Portal = Portal
_M.DEFAULT_CODE = DEFAULT_CODE
return _M
