-- b24.emulator: a Bitrix24 portal in memory behind incoming-webhook URLs (protocol.md §1–§6),
-- as a handler for `b24 serve` / `b24 emulate`. State lives in the Lua state of one server thread:
-- run it with one worker (b24 emulate does). Simulated time (latency, row and count costs, slow
-- faults) is returned to the host as `{ delay = seconds }` so one thread serves many clients.
--   return require("b24.emulator").main{ "--seed-leads", "100", "--code", "…" }
local core = require "bitrix24.core"
local crm = require "b24.emulator.crm"
local tasks = require "b24.emulator.tasks"
local events = require "b24.emulator.events"
local batch_labels = require "b24.emulator.labels"
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

local FAULT_NAMES = { ["503"] = 503, ["500"] = 500, reset = "reset", slow = "slow" }

-- Parses "503=0.2,500=0.05,reset=0.02,slow=0.01" into { [503] = 0.2, [500] = 0.05, reset = …, slow = … };
-- nil, err for an unknown fault or a probability outside [0, 1].
local function parse_faults(spec)
   local faults = {}
   for item in string.gmatch(spec or "", "[^,]+") do
      local name, p = string.match(item, "^%s*([%w_]+)%s*=%s*([%d.]+)%s*$")
      local key = name and FAULT_NAMES[string_lower(name)]
      p = tonumber(p)
      if not key then return nil, "unknown fault '" .. item .. "' (503, 500, reset or slow expected)" end
      if not p or p < 0 or p > 1 then return nil, "fault '" .. item .. "' needs a probability from 0 to 1" end
      faults[key] = p
   end
   return faults
end
_M.parse_faults = parse_faults

-- The host module when running inside b24 (nil elsewhere).
local function host_module()
   local loaded = package.loaded["b24.host"]
   if loaded then return loaded end
   local ok, mod = pcall(require, "b24.host")
   if ok and type(mod) == "table" then return mod end
   return nil
end

-- Creates a portal. opts: user_id, code, seed_leads, seed_tasks, enterprise, latency_ms,
-- row_cost_us, count_cost_us, faults (string or table), slow_delay (seconds a slow fault adds),
-- time_scale (speeds up the clock of the leaky bucket and of the operating window),
-- operating_limit (seconds per method per 10 minutes), events_to (list of URLs), token, domain,
-- member_id, data (a JSON file to persist to), clock (scaled seconds), random (a [0,1) function),
-- host (the b24.host module, found when nil), blocking_delay (sleep instead of returning the
-- delay: for hosts without the delay option).
function _M.new(opts)
   opts = opts or {}
   local mono0, wall0 = now(), os_time()
   local scale = tonumber(opts.time_scale) or 1
   local faults = opts.faults
   if type(faults) ~= "table" then
      local err
      faults, err = parse_faults(faults)
      if not faults then error(err, 0) end
   end
   local host = opts.host
   if host == nil then host = host_module() end
   local self = setmetatable({
      user_id = tonumber(opts.user_id) or 1,
      code = opts.code or DEFAULT_CODE,
      capacity = opts.enterprise and 250 or 50,
      drain = opts.enterprise and 5 or 2,
      latency = (tonumber(opts.latency_ms) or 0) / 1000,
      row_cost = (tonumber(opts.row_cost_us) or 0) / 1e6,
      count_cost = (tonumber(opts.count_cost_us) or 0) / 1e6,
      slow_delay = tonumber(opts.slow_delay) or 10,
      operating_limit = tonumber(opts.operating_limit) or 480,
      faults = faults,
      random = opts.random or math_random,
      scale = scale,
      clock = opts.clock or function() return (now() - mono0) * scale end,
      wall = function() return wall0 + (now() - mono0) end,
      host = host or false,
      blocking_delay = opts.blocking_delay,
      data_path = opts.data,
      buckets = {}, operating = {}, stores = {}, methods = {},
      sim = 0, t_wall = 0, t_mono = 0, dirty = false,
   }, mt)
   self.events = events.new{ urls = opts.events_to, token = opts.token, domain = opts.domain,
                             member_id = opts.member_id, host = host or nil }
   crm.register(self, self.methods)
   tasks.register(self, self.methods)
   self.methods["user.current"] = function(p)
      return { ID = tostring(p.user_id), ACTIVE = true, NAME = "Emulator", LAST_NAME = "User",
               EMAIL = "user" .. p.user_id .. "@example.com", ADMIN = true, TIME_ZONE = "" }, { rows = 1 }
   end
   self.methods.batch = Portal.batch
   local loaded = self.data_path and self:load()
   if not loaded then
      if opts.seed_leads and tonumber(opts.seed_leads) > 0 then crm.seed_leads(self, tonumber(opts.seed_leads)) end
      if opts.seed_tasks and tonumber(opts.seed_tasks) > 0 then tasks.seed(self, tonumber(opts.seed_tasks)) end
      if self.data_path then
         local ok, err = self:save()
         if not ok then error("cannot write the --data file: " .. err, 0) end
      end
   end
   return self
end

-- A function(request) for `b24 serve` answering as a portal built from opts. On a host without
-- the `delay` option (and only inside a host), the delay is slept instead.
function _M.handler(opts)
   local portal = _M.new(opts)
   local blocking = portal.blocking_delay
   if blocking == nil then blocking = portal.host and not portal.host.post or false end
   if blocking then
      return function(request)
         local status, headers, body, extra = portal:handle(request)
         if extra and extra.delay then
            sleep(extra.delay)
            extra = extra.close and { close = true } or nil
         end
         return status, headers, body, extra
      end
   end
   return function(request) return portal:handle(request) end
end

-- Persistence (--data): every store with its id counters, one JSON file replaced atomically.
function Portal:save()
   local state = { format = "bitrix24-emulator", version = 1, stores = {} }
   for kind, store in pairs(self.stores) do state.stores[kind] = crm.export(store) end
   local text = cjson.encode(state)
   if not text then return nil, "cannot encode the state" end
   local tmp = self.data_path .. ".tmp"
   local f, err = io.open(tmp, "wb")
   if not f then return nil, err end
   local ok, werr = f:write(text)
   local closed, cerr = f:close()
   if not ok or not closed then
      os.remove(tmp)
      return nil, tostring(werr or cerr)
   end
   local renamed, rerr = os.rename(tmp, self.data_path)
   if not renamed then
      os.remove(tmp)
      return nil, tostring(rerr)
   end
   self.dirty = false
   return true
end

-- Loads the --data file: true when it existed; raises on a file that is not ours.
function Portal:load()
   local f = io.open(self.data_path, "rb")
   if not f then return false end
   local text = f:read("*a")
   f:close()
   local state = cjson.decode(text)
   if type(state) ~= "table" or state.format ~= "bitrix24-emulator" or type(state.stores) ~= "table" then
      error("--data " .. self.data_path .. " is not an emulator data file", 0)
   end
   for kind, store in pairs(self.stores) do
      if type(state.stores[kind]) == "table" then crm.import(store, state.stores[kind]) end
   end
   return true
end

-- Called by methods on every add/update/delete: posts the event, marks the state for saving.
function Portal:changed(event, id)
   self.dirty = true
   local data
   if string_sub(event, 1, 6) == "ONTASK" then
      data = events.task_data(string_sub(event, 7), id)
   else
      data = events.crm_data(id)
   end
   self.events:emit(event, data)
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

-- The operating seconds of a method in its 10-minute window (one-minute baskets, on the scaled
-- clock), and the unix time at which its oldest basket expires.
function Portal:operating_of(method)
   local t = self.clock()
   local current = math_floor(t / 60)
   local baskets = self.operating[method]
   local used, oldest = 0, current
   if baskets then
      for minute, seconds in pairs(baskets) do
         if minute <= current - OPERATING_WINDOW / 60 then
            baskets[minute] = nil
         else
            used = used + seconds
            if minute < oldest then oldest = minute end
         end
      end
   end
   local reset_scaled = (oldest * 60 + OPERATING_WINDOW)
   local reset_at = self.wall() + (reset_scaled - t) / self.scale
   return used, math.ceil(reset_at)
end

function Portal:bill(method, seconds)
   local minute = math_floor(self.clock() / 60)
   local baskets = self.operating[method]
   if not baskets then baskets = {}; self.operating[method] = baskets end
   baskets[minute] = (baskets[minute] or 0) + seconds
end

-- True when a method has spent its operating budget (the call that crossed it has completed).
function Portal:blocked(method)
   return (self:operating_of(method)) > self.operating_limit
end

-- The request's timeline: real time since it began plus the simulated seconds so far.
function Portal:timeline()
   return self.t_wall + (now() - self.t_mono) + self.sim
end

local BLOCKED = { status = 429, error = "OPERATION_TIME_LIMIT",
                  error_description = "Method is blocked due to operation time limit." }

-- Runs one method: result, meta ({total, next, rows, counted}), time | nil, err, time. Simulated
-- costs (row_cost per row returned, count_cost per row counted) add to processing and to the
-- request's delay; processing is billed to the method's operating budget.
function Portal:call(name, params)
   local fn = self.methods[name]
   if self:blocked(name) then return nil, BLOCKED end
   local start = self:timeline()
   local sim0, mono = self.sim, now()
   local ok, result, meta = pcall(fn, self, params)
   local real = now() - mono
   if ok and type(meta) == "table" then
      self.sim = self.sim + (meta.rows or 0) * self.row_cost + (meta.counted or 0) * self.count_cost
   end
   local processing = real + (self.sim - sim0)
   self:bill(name, processing)
   local operating, reset_at = self:operating_of(name)
   local finish = start + processing
   local time = { start = start, finish = finish, duration = processing, processing = processing,
                  date_start = self:date(start), date_finish = self:date(finish),
                  operating = operating, operating_reset_at = reset_at }
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

-- The method of a URL's last segment, lower-cased, without its transport suffix (.json or .xml).
local function method_name(s)
   s = string_lower(s)
   s = string_gsub(s, "%.json$", "")
   s = string_gsub(s, "%.xml$", "")
   return s
end

-- The XML transport (METHOD.xml): the same envelope inside <response>, every key an element,
-- integer keys (list items) as <item>, scalars as PHP prints them (true "1", false and null
-- empty, floats to 14 digits), XML special characters escaped; no declaration.
local XML_HEADERS = { ["Content-Type"] = "text/xml; charset=utf-8" }
local ENVELOPE_ORDER = { result = 1, next = 2, total = 3, time = 4, error = 1, error_description = 2 }
local TIME_ORDER = { start = 1, finish = 2, duration = 3, processing = 4, date_start = 5, date_finish = 6,
                     operating_reset_at = 7, operating = 8 }
local XML_ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#039;" }

local function xml_scalar(v)
   if v == true then return "1" end
   if v == false or v == nil or v == cjson.null then return "" end
   if type(v) == "number" then
      if v == math_floor(v) and v > -1e15 and v < 1e15 then return string_format("%d", v) end
      -- PHP's precision-14 print: 2.2649765014648E-5, 1.0E+25
      local f = string_gsub(string_format("%.14g", v), "e([+-])0*(%d)", "E%1%2")
      if string_find(f, "E", 1, true) and not string_find(f, ".", 1, true) then
         f = string_gsub(f, "E", ".0E")
      end
      return f
   end
   return (string_gsub(tostring(v), "[&<>\"']", XML_ESCAPES))
end

local function xml_keys(t, order)
   local keys = {}
   for k in pairs(t) do keys[#keys + 1] = k end
   table_sort(keys, function(a, b)
      local na, nb = type(a) == "number", type(b) == "number"
      if na ~= nb then return na end
      if na then return a < b end
      local oa, ob = order and order[a], order and order[b]
      if oa and ob then return oa < ob end
      if oa or ob then return oa ~= nil end
      return a < b
   end)
   return keys
end

local function to_xml(v, out, order)
   for _, k in ipairs(xml_keys(v, order)) do
      local name = type(k) == "number" and "item" or tostring(k)
      local item = v[k]
      out[#out + 1] = "<" .. name .. ">"
      if type(item) == "table" and item ~= cjson.null then
         to_xml(item, out, k == "time" and TIME_ORDER or nil)
      else
         out[#out + 1] = xml_scalar(item)
      end
      out[#out + 1] = "</" .. name .. ">"
   end
   return out
end

-- A JSON answer of this emulator as the XML transport gives it.
local function as_xml(status, headers, body, extra)
   local value = cjson.decode(body or "")
   if type(value) ~= "table" then return status, headers, body, extra end
   return status, XML_HEADERS, "<response>" .. table_concat(to_xml(value, {}, ENVELOPE_ORDER)) .. "</response>", extra
end
_M.to_xml = function(v) return "<response>" .. table_concat(to_xml(v, {}, ENVELOPE_ORDER)) .. "</response>" end

local INTERNAL = { status = 500, error = "INTERNAL_SERVER_ERROR", error_description = "Internal server error" }
local TOO_MANY = { status = 503, error = "QUERY_LIMIT_EXCEEDED", error_description = "Too many requests" }

-- Adds the held time and the fault options to a response: status, headers, body, extra.
local function finish_response(delay, status, headers, body, close)
   local extra
   if delay > 0 then extra = { delay = delay } end
   if close then extra = extra or {}; extra.close = true end
   return status, headers, body, extra
end

function Portal:roll(fault)
   local p = self.faults[fault]
   return p ~= nil and p > 0 and self.random() < p
end

function Portal:handle(request)
   if string_find(request.path or "", "%.[xX][mM][lL]/?$") then return as_xml(self:answer(request)) end
   return self:answer(request)
end

function Portal:answer(request)
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
   local latency = self.latency
   if not self:admit(request.remote_addr or "") then
      return finish_response(latency, respond_error(TOO_MANY))
   end
   if self:roll(503) then return finish_response(latency, respond_error(TOO_MANY)) end
   if self:blocked(name) then return finish_response(latency, respond_error(BLOCKED)) end
   local arrival = self.wall()
   self.sim, self.t_wall, self.t_mono = 0, arrival + latency, now()
   self.request = request -- batch reads the order of its commands from the raw text
   local result, meta, time = self:call(name, parameters(request))
   self.request = nil
   local delay = latency + self.sim
   if self.dirty and self.data_path then
      local ok, err = self:save()
      if not ok then
         io_stderr:write("emulator: cannot write the --data file: ", tostring(err), "\n")
         return finish_response(delay, respond_error(INTERNAL))
      end
   end
   -- faults after executing: the change stays applied, the client cannot know it
   local reset = self:roll("reset")
   local failed = self:roll(500)
   if self:roll("slow") then delay = delay + self.slow_delay end
   -- a reset still carries the answer, for a host that cannot drop connections
   if failed then return finish_response(delay, respond_error(INTERNAL)) end
   if result == nil then
      local status, headers, body = respond_error(meta)
      return finish_response(delay, status, headers, body, reset)
   end
   time.start = arrival
   time.date_start = self:date(arrival)
   time.duration = time.finish - arrival
   local status, headers, body = respond(200, { result = result, total = meta.total, next = meta.next, time = time })
   return finish_response(delay, status, headers, body, reset)
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

-- Labels in the order the portal runs them: the order sent (`sent`, read from the request text),
-- as a portal does, or natural order ("c2" before "c10") when unknown; a label is moved later only
-- when it references a label not yet run.
local function run_order(commands, sent)
   local labels = {}
   for label in pairs(commands) do labels[#labels + 1] = label end
   local function natural(s)
      return (string_gsub(s, "%d+", function(d) return string.rep("0", 20 - #d) .. d end))
   end
   table_sort(labels, function(a, b) return natural(a) < natural(b) end)
   if sent then
      local rank = {}
      for i, label in ipairs(sent) do rank[label] = rank[label] or i end
      table_sort(labels, function(a, b) return (rank[a] or math.huge) < (rank[b] or math.huge) end)
   end
   local deps = {}
   for _, label in ipairs(labels) do
      deps[label] = {}
      -- references sit in the command's query string, usually percent-encoded (http_build_query)
      local text = string_gsub(commands[label], "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
      for _, dep in string.gmatch(text, "%$(%a+)%[([^%]]*)%]") do
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
   local order = run_order(commands, self.request and batch_labels.of(self.request))
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

-- command line ---------------------------------------------------------------------------------

-- option, key, kind, value name, description; kinds check and convert the value (flag takes none).
local OPTIONS = {
   { "--user-id", "user_id", "id", "N", "the webhook's user id (1)" },
   { "--code", "code", "secret", "CODE", "the webhook code (a fixed development code by default)" },
   { "--token", "token", "secret", "TOKEN", "the application token sent with events" },
   { "--events-to", "events_to", "url", "URL", "POST events to this URL (repeatable)" },
   { "--domain", "domain", "text", "DOMAIN", "the portal domain in events (" .. events.DEFAULT_DOMAIN .. ")" },
   { "--member-id", "member_id", "text", "ID", "auth[member_id] in events (derived from the domain)" },
   { "--seed-leads", "seed_leads", "count", "N", "start with N leads (0)" },
   { "--seed-tasks", "seed_tasks", "count", "N", "start with N tasks (0)" },
   { "--latency", "latency_ms", "amount", "MS", "milliseconds added to each request (0)" },
   { "--row-cost", "row_cost_us", "amount", "US", "microseconds of processing per row returned (0)" },
   { "--count-cost", "count_cost_us", "amount", "US", "microseconds per row counted for a page's total (0)" },
   { "--faults", "faults", "faults", "SPEC", "e.g. 503=0.2,500=0.05,reset=0.02,slow=0.01 (probabilities)" },
   { "--slow-delay", "slow_delay", "amount", "SECONDS", "seconds a slow fault holds the answer (10)" },
   { "--enterprise", "enterprise", "flag", "", "leaky bucket 250/5 instead of 50/2" },
   { "--operating-limit", "operating_limit", "positive", "SECONDS", "operating seconds per method per 10 minutes (480)" },
   { "--time-scale", "time_scale", "positive", "X", "how much faster the limits' clock runs (1)" },
   { "--data", "data", "text", "PATH", "persist entities to this JSON file" },
   { "--random-seed", "random_seed", "integer", "N", "seed of the fault dice" },
}
local BY_NAME = {}
for _, o in ipairs(OPTIONS) do BY_NAME[o[1]] = o end

_M.USAGE = (function()
   local lines = { "emulator options:" }
   for _, o in ipairs(OPTIONS) do
      local arg = o[4] == "" and "" or " " .. o[4]
      lines[#lines + 1] = string_format("  %-28s %s", o[1] .. arg, o[5])
   end
   return table_concat(lines, "\n")
end)()

local function bad(msg) error("b24 emulate: " .. msg, 0) end

local CHECK = {
   id = function(v) local n = tonumber(v); return n and n >= 1 and n == math_floor(n) and n or nil, "a positive integer" end,
   count = function(v) local n = tonumber(v); return n and n >= 0 and n == math_floor(n) and n or nil, "an integer >= 0" end,
   integer = function(v) local n = tonumber(v); return n and n == math_floor(n) and n or nil, "an integer" end,
   amount = function(v) local n = tonumber(v); return n and n >= 0 and n < math.huge and n or nil, "a number >= 0" end,
   positive = function(v) local n = tonumber(v); return n and n > 0 and n < math.huge and n or nil, "a number > 0" end,
   text = function(v) return v ~= "" and v or nil, "a non-empty value" end,
   secret = function(v) return string.match(v, "^[%w_%-]+$") and v or nil, "letters, digits, - or _" end,
   url = function(v) return string.match(v, "^[hH][tT][tT][pP][sS]?://[^/%s]+") and v or nil, "an http:// or https:// URL" end,
   faults = function(v)
      local f, err = parse_faults(v)
      if not f then bad("--faults: " .. err) end
      return f
   end,
}

-- Parses emulator options (`--name value` or `--name=value`) into an options table for new().
function _M.parse_args(argv)
   local opts = { events_to = {} }
   local i = 1
   while i <= #argv do
      local arg = tostring(argv[i])
      local name, value = string.match(arg, "^(%-%-[%w-]+)=(.*)$")
      name = name or arg
      local o = BY_NAME[name]
      if not o then
         if string_sub(arg, 1, 1) == "-" then bad("unknown option " .. string.match(arg, "^[^=]*")) end
         bad("unexpected argument '" .. arg .. "'")
      end
      if o[3] == "flag" then
         if value then bad(name .. " takes no value") end
         opts[o[2]] = true
      else
         if not value then
            i = i + 1
            value = argv[i]
            if value == nil then bad(name .. " needs a value") end
            value = tostring(value)
         end
         local got, want = CHECK[o[3]](value)
         if got == nil then
            -- secrets are not echoed
            if o[3] == "secret" then bad(name .. " needs " .. want) end
            bad(name .. " needs " .. want .. ", not '" .. value .. "'")
         end
         if o[2] == "events_to" then opts.events_to[#opts.events_to + 1] = got else opts[o[2]] = got end
      end
      i = i + 1
   end
   return opts
end

-- `b24 emulate` calls this with its remaining arguments: the handler of a portal built from them.
-- Bad options raise error("b24 emulate: …", 0).
function _M.main(argv)
   local opts = _M.parse_args(argv or {})
   if opts.random_seed then math.randomseed(opts.random_seed) end
   local ok, handler = pcall(_M.handler, opts)
   if not ok then
      local msg = tostring(handler)
      if not string_find(msg, "^b24 emulate: ") then msg = "b24 emulate: " .. msg end
      error(msg, 0)
   end
   return handler
end

_M.Portal = Portal
_M.DEFAULT_CODE = DEFAULT_CODE
return _M
