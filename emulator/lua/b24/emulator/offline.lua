-- b24.emulator.offline: the application's offline event queue (b_rest_event_offline) and the
-- methods that read it. An offline binding (event.bind with event_type=offline) makes every
-- change of its event a row { ID, TIMESTAMP_X, MESSAGE_ID, EVENT_NAME, EVENT_DATA,
-- EVENT_ADDITIONAL, PROCESS_ID, CONNECTOR_ID, ERROR } (rest/lib/event/sender.php Sender::call
-- hands an event without a handler URL to rest/lib/event/provideroffline.php, whose finalize
-- calls rest/lib/eventoffline.php EventOfflineTable::callEvent). Rows merge on their unique key
-- (MESSAGE_ID, APP_ID, CONNECTOR_ID, PROCESS_ID); event.offline.get marks rows with a process
-- (parallel calls take disjoint sets) and, with clear=1, deletes them in the call;
-- event.offline.clear, .error and .list as rest/lib/api/event.php serves them; ONOFFLINEEVENT
-- rings the application's online handlers when the queue gains rows. One application here, so
-- APP_ID is implied. The queue and the bindings persist with --data (stores "offline" and
-- "bindings").
local md5 = require "b24.emulator.md5"
local dates = require "b24.emulator.dates"
local json = require "b24.emulator.json"
local storage = require "b24.emulator.store"
local order_of = require "b24.emulator.order"
local events = require "b24.emulator.events"
local core = require "bitrix24.core"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local string_format = string.format
local string_gsub = string.gsub
local string_byte = string.byte
local string_match = string.match
local string_gmatch = string.gmatch
local string_upper = string.upper
local string_lower = string.lower
local string_find = string.find
local table_concat = table.concat
local table_sort = table.sort
local math_floor = math.floor
local math_huge = math.huge
local os_time = os.time
local to_text = storage.to_text
local php_int = storage.php_int
local random_bytes = core.random_bytes

local _M = {}
local mt = { __index = _M }

-- rest/lib/eventoffline.php PROCESS_ID_LIFETIME: cleanProcessAgent deletes rows whose
-- TIMESTAMP_X is older (2,952,000 s, ~34 days)
_M.RETENTION = 2952000
-- rest/classes/general/rest.php IRestService::LIST_LIMIT: event.offline.get's default limit
-- (no maximum: any positive intval) and event.offline.list's page
_M.LIST_LIMIT = 50
-- rest/lib/eventoffline.php OFFLINE_EVENT_DEFAULT_TIMEOUT: ONOFFLINEEVENT's minTimeout
_M.DEFAULT_TIMEOUT = 1
-- how often (wall seconds) a change purges expired rows (the platform's agent runs periodically)
local PURGE_EVERY = 60

-- rest/lib/api/event.php sanitizeFilter/sanitizeOrder: the fields event.offline.get takes, and
-- those event.offline.list takes; IRestService::sanitizeFilter's operations
local GET_FIELDS = { ID = true, TIMESTAMP_X = true, EVENT_NAME = true, MESSAGE_ID = true }
local LIST_FIELDS = { ID = true, TIMESTAMP_X = true, EVENT_NAME = true, MESSAGE_ID = true, PROCESS_ID = true,
                      ERROR = true }
local OPERATIONS = { [""] = true, ["="] = true, [">"] = true, ["<"] = true, [">="] = true, ["<="] = true,
                     ["@"] = true, ["%"] = true }
local NUMERIC = { ID = true, ERROR = true }

-- A RestException: 400 ERROR_ARGUMENT unless given (rest/lib/restexception.php).
local function fail(desc, code, status, argument)
   return nil, { status = status or 400, error = code or "ERROR_ARGUMENT", error_description = desc,
                 argument = argument }
end

-- rest/lib/authtypeexception.php: 403 WRONG_AUTH_TYPE for a call not made with the
-- application's token (rest/lib/api/event.php, every event.offline.* method).
local function wrong_auth_type()
   return fail("Current authorization type is denied for this method", "WRONG_AUTH_TYPE", 403)
end

-- The query's keys lower-cased (array_change_key_case(CASE_LOWER)).
local function lower_keys(params)
   local out = {}
   for k, v in pairs(params) do
      if type(k) == "string" then out[string_lower(k)] = v end
   end
   return out
end

-- trim() of a scalar parameter; nil when absent (isset).
local function trimmed(v)
   if v == nil or v == json.null then return nil end
   local s = to_text(v) or ""
   return (string_match(s, "^%s*(.-)%s*$"))
end

-- PHP Json::encode of a string (main/lib/web/json.php DEFAULT_OPTIONS: JSON_HEX_TAG, _AMP,
-- _APOS, _QUOT, JSON_UNESCAPED_UNICODE; "/" escaped as json_encode does).
local HEX = { ['"'] = "\\u0022", ["'"] = "\\u0027", ["&"] = "\\u0026", ["<"] = "\\u003C", [">"] = "\\u003E",
              ["/"] = "\\/", ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\b"] = "\\b",
              ["\f"] = "\\f" }
local function php_string(s)
   return '"' .. string_gsub(s, "[%c\"'&<>/\\]", function(c)
      return HEX[c] or string_format("\\u%04x", string_byte(c))
   end) .. '"'
end

-- The bracketed keys of "[FIELDS][ID]" in order.
local function bracket_keys(s)
   return string_gmatch(s, "%[([^%]]*)%]")
end

-- The data of an event (events.crm_data … pairs { "[FIELDS][ID]", "5" }) as the array the
-- platform queues: nested by the brackets, in the order built; a decimal integer is a number
-- (crm/classes/general/restservice.php processEntityEvent: 'ID' => (int)$ID), the rest text.
-- Returns the Lua table (for answers) and its Json::encode text (for MESSAGE_ID).
local function event_data(data)
   local root = { keys = {}, map = {} }
   for _, pair in ipairs(data) do
      local node, path = root, {}
      for key in bracket_keys(pair[1]) do path[#path + 1] = key end
      for i, key in ipairs(path) do
         if i == #path then
            if node.map[key] == nil then node.keys[#node.keys + 1] = key end
            local v = pair[2]
            if string_match(v, "^%-?[1-9]%d*$") and #v < 16 or v == "0" then v = tonumber(v) end
            node.map[key] = v
         else
            local child = node.map[key]
            if type(child) ~= "table" then
               if child == nil then node.keys[#node.keys + 1] = key end
               child = { keys = {}, map = {} }
               node.map[key] = child
            end
            node = child
         end
      end
   end
   local function convert(node)
      local plain, parts = {}, {}
      for _, key in ipairs(node.keys) do
         local v = node.map[key]
         local text
         if type(v) == "table" then
            v, text = convert(v)
         elseif type(v) == "number" then
            text = string_format("%d", v)
         else
            text = php_string(v)
         end
         plain[key] = v
         parts[#parts + 1] = php_string(key) .. ":" .. text
      end
      return plain, "{" .. table_concat(parts, ",") .. "}"
   end
   return convert(root)
end

-- rest/lib/eventoffline.php getMessageId: md5(EVENT_NAME . '|' . Json::encode(EVENT_DATA)).
function _M.message_id(name, data)
   local _, text = event_data(data)
   return md5.hex(name .. "|" .. text)
end

-- The unique key of b_rest_event_offline (eventoffline.php callEvent's prepareMerge columns).
local function key_of(message_id, connector, process)
   return message_id .. "\0" .. connector .. "\0" .. process
end

-- opts: retention (seconds a row is kept; RETENTION), wall (unix seconds), random (fn() -> a
-- process id), timezone (fn() -> the portal's zone, for TIMESTAMP_X).
function _M.new(opts)
   opts = opts or {}
   return setmetatable({
      retention = tonumber(opts.retention) or _M.RETENTION,
      wall = opts.wall or os_time,
      random = opts.random or function() return random_bytes(16, "hex") end,
      rows = {}, ids = {}, index = {}, next_id = 1, purged_at = -math_huge,
      stats = { queued = 0, merged = 0, taken = 0, cleared = 0, errored = 0, skipped = 0, notified = 0, purged = 0 },
   }, mt)
end

-- Deletes the rows for which drop(row) is true, in one pass: the count.
function _M:delete_where(drop)
   local kept, n = {}, 0
   for _, id in ipairs(self.ids) do
      local row = self.rows[id]
      if drop(row) then
         self.rows[id] = nil
         self.index[key_of(row.MESSAGE_ID, row.CONNECTOR_ID, row.PROCESS_ID)] = nil
         n = n + 1
      else
         kept[#kept + 1] = id
      end
   end
   self.ids = kept
   return n
end

-- rest/lib/eventoffline.php cleanProcessAgent: deletes the rows whose TIMESTAMP_X is older than
-- the retention; run at most every PURGE_EVERY seconds unless forced.
function _M:purge(force)
   local now = self.wall()
   if not force and now - self.purged_at < PURGE_EVERY then return 0 end
   self.purged_at = now
   local cutoff = now - self.retention
   local n = self:delete_where(function(row) return row.TIMESTAMP_X < cutoff end)
   self.stats.purged = self.stats.purged + n
   return n
end

-- rest/lib/eventoffline.php callEvent: a row for event `name` with data (event pairs) for
-- connector, or, when a row with its key (MESSAGE_ID, CONNECTOR_ID, PROCESS_ID '') exists, that
-- row's TIMESTAMP_X, EVENT_DATA and EVENT_ADDITIONAL replaced (its ID, ERROR and place kept: a
-- row being processed has another PROCESS_ID, so a change then adds a row). user_id: the
-- LOCAL_USER of EVENT_ADDITIONAL (sender.php). Returns the row.
function _M:push(name, data, user_id, connector)
   self:purge(false)
   local plain, text = event_data(data)
   local message_id = md5.hex(name .. "|" .. text)
   local key = key_of(message_id, connector, "")
   -- a datetime column: whole seconds
   local now = math_floor(self.wall())
   local id = self.index[key]
   local additional = { user_id = user_id }
   if id then
      local row = self.rows[id]
      row.TIMESTAMP_X, row.EVENT_DATA, row.EVENT_ADDITIONAL = now, plain, additional
      self.stats.merged = self.stats.merged + 1
      return row
   end
   id = self.next_id
   self.next_id = id + 1
   local row = { ID = id, TIMESTAMP_X = now, MESSAGE_ID = message_id, EVENT_NAME = name, EVENT_DATA = plain,
                 EVENT_ADDITIONAL = additional, PROCESS_ID = "", CONNECTOR_ID = connector, ERROR = 0 }
   self.rows[id] = row
   self.ids[#self.ids + 1] = id
   self.index[key] = id
   self.stats.queued = self.stats.queued + 1
   return row
end

-- The number of rows (all connectors, processes and errors).
function _M:count()
   return #self.ids
end

-- A row's value of field for comparing: a number for ID, ERROR and TIMESTAMP_X, else the text.
local function value_of(row, field)
   return row[field]
end

-- Whether a row's value meets one condition { op, field, value } (an ORM filter on a MySQL
-- table: strings compare without case, TIMESTAMP_X as a time).
local function meets(have, c)
   local op, want = c.op, c.value
   if op == "@" then
      for _, w in ipairs(want) do
         if meets(have, { op = "=", field = c.field, value = w }) then return true end
      end
      return false
   end
   if want == nil then return false end
   if op == "%" then
      return string_find(string_lower(tostring(have)), string_lower(tostring(want)), 1, true) ~= nil
   end
   local a, b = have, want
   if type(a) == "string" then a, b = string_lower(a), string_lower(tostring(b)) end
   if op == "" or op == "=" then return a == b end
   if op == ">" then return a > b end
   if op == "<" then return a < b end
   if op == ">=" then return a >= b end
   return a <= b
end

-- A filter value as the field holds it: intval for ID and ERROR, the time for TIMESTAMP_X
-- (event.php sanitizeFilter: DateTime::createFromUserTime(CRestUtil::unConvertDateTime)),
-- text otherwise; nil when it cannot be read.
local function filter_value(field, v, tz)
   if NUMERIC[field] then return php_int(v) end
   if field == "TIMESTAMP_X" then return dates.parse(to_text(v) or "", tz) end
   return to_text(v)
end

-- rest/classes/general/rest.php IRestService::sanitizeFilter with the method's fields: the
-- conditions | nil, err. marking (event.offline.get without process_id: eventoffline.php
-- markEvents) refuses an array value (ArgumentTypeException).
local function sanitize_filter(filter, fields, tz, marking)
   if filter == nil then return {} end
   if type(filter) ~= "table" then return fail("The filter is not an array.") end
   local out = {}
   for k, v in pairs(filter) do
      local key = string_upper(tostring(k))
      local op, field = string_match(key, "^([^%a]*)(.*)$")
      if not OPERATIONS[op] then return fail("Filter operation not allowed: " .. op) end
      if not fields[field] then return fail("Filter field not allowed: " .. field) end
      if marking and type(v) == "table" then
         return fail("The value of an argument '" .. key .. "' has an invalid type", nil, nil, key)
      end
      local c = { op = op, field = field }
      if op == "@" then
         c.value = {}
         for _, item in pairs(type(v) == "table" and v or { v }) do
            c.value[#c.value + 1] = filter_value(field, item, tz)
         end
      elseif type(v) ~= "table" then
         c.value = filter_value(field, v, tz)
      end
      out[#out + 1] = c
   end
   return out
end

-- IRestService::sanitizeOrder: { { field, desc } … } in the order sent | nil, err. A key that
-- is a number names a field (ascending).
local function sanitize_order(p, order, fields, params)
   if type(order) ~= "table" then return fail("The order is not an array.") end
   local keys, rank = {}, {}
   for i, k in ipairs(order_of.keys(p, nil, params) or {}) do rank[string_upper(k)] = rank[string_upper(k)] or i end
   for k, v in pairs(order) do
      if type(k) == "number" then
         local field = string_upper(to_text(v) or "")
         if not fields[field] then return fail("Order field not allowed: " .. (to_text(v) or "")) end
         keys[#keys + 1] = { field = field, desc = false, rank = k }
      else
         local field = string_upper(k)
         if not fields[field] then return fail("Order field not allowed: " .. field) end
         local dir = string_upper(to_text(v) or "")
         if dir ~= "ASC" and dir ~= "DESC" then return fail("Order direction should be one of {ASC|DESC}") end
         keys[#keys + 1] = { field = field, desc = dir == "DESC", rank = rank[field] or math_huge, name = field }
      end
   end
   table_sort(keys, function(a, b)
      if a.rank ~= b.rank then return a.rank < b.rank end
      return a.field < b.field
   end)
   return keys
end

-- The rows meeting conds (and the fixed ones: fixed[field] = value), sorted by order (then ID).
function _M:select(conds, fixed, order)
   local out = {}
   for _, id in ipairs(self.ids) do
      local row = self.rows[id]
      local ok = true
      for field, want in pairs(fixed) do
         if row[field] ~= want then ok = false; break end
      end
      if ok then
         for _, c in ipairs(conds) do
            if not meets(value_of(row, c.field), c) then ok = false; break end
         end
      end
      if ok then out[#out + 1] = row end
   end
   if order and #order > 0 then
      table_sort(out, function(a, b)
         for _, o in ipairs(order) do
            local va, vb = a[o.field], b[o.field]
            if type(va) == "string" then va, vb = string_lower(va), string_lower(vb) end
            if va ~= vb then
               if o.desc then return va > vb end
               return va < vb
            end
         end
         return a.ID < b.ID
      end)
   end
   return out
end

-- Gives row another PROCESS_ID, keeping the index of keys.
function _M:set_process(row, process)
   self.index[key_of(row.MESSAGE_ID, row.CONNECTOR_ID, row.PROCESS_ID)] = nil
   row.PROCESS_ID = process
   self.index[key_of(row.MESSAGE_ID, row.CONNECTOR_ID, process)] = row.ID
end

-- A row as event.offline.get/list answer it: TIMESTAMP_X by CRestUtil::convertDateTime, ID as the
-- database's text, EVENT_ADDITIONAL reduced to { user_id } (event.php: Auth::PARAM_LOCAL_USER);
-- with_process adds PROCESS_ID and ERROR (event.offline.list).
local function shape(p, row, with_process)
   local out = { ID = tostring(row.ID), TIMESTAMP_X = p:date(row.TIMESTAMP_X), EVENT_NAME = row.EVENT_NAME,
                 EVENT_DATA = row.EVENT_DATA, EVENT_ADDITIONAL = row.EVENT_ADDITIONAL, MESSAGE_ID = row.MESSAGE_ID }
   if with_process then
      out.PROCESS_ID = row.PROCESS_ID
      out.ERROR = tostring(row.ERROR)
   end
   return out
end

-- True for a call made with the application's token (rest/lib/api/event.php: getAuthType()
-- is Auth::AUTH_TYPE).
local function is_app(p)
   return p.caller == "oauth" and p.app ~= nil
end

-- The request's auth_connector (rest/lib/oauth/auth.php authQueryAdditional: taken out of the
-- query into the auth data); "" without one.
local function connector_of(p)
   return p.auth_connector or ""
end

-- event.offline.get: rest/lib/api/event.php eventOfflineGet. clear (1 by default; 0 needs the
-- portal feature rest_offline_extended, else LicenseException 403 WRONG_LICENSE), process_id
-- (given: that process's rows again, nothing marked), filter/order (ID, TIMESTAMP_X,
-- EVENT_NAME, MESSAGE_ID; TIMESTAMP_X ASC by default), limit (50 by default, any positive
-- intval), error (1: the parked rows). Without process_id the first `limit` rows of the
-- connector with PROCESS_ID '' are marked with a new process (eventoffline.php markEvents), so
-- parallel calls take disjoint sets; then that process's rows are read, and with clear the
-- whole process is deleted (clearEvents). Answers { process_id (null with clear and no
-- process_id given), events }.
local function offline_get(p, params)
   if not is_app(p) then return wrong_auth_type() end
   local q = lower_keys(params)
   local queue = p.offline
   local clear = q.clear == nil and 1 or php_int(q.clear)
   local process = trimmed(q.process_id)
   if clear == 0 and not queue.extended then
      return fail("This feature is not enabled for the current license: extended offline events handling",
                  "WRONG_LICENSE", 403)
   end
   local limit = q.limit == nil and _M.LIST_LIMIT or php_int(q.limit)
   local errors = q.error ~= nil and php_int(q.error) == 1
   if limit <= 0 then return fail("Value must be positive integer", nil, nil, "LIMIT") end
   local conds, err = sanitize_filter(q.filter, GET_FIELDS, p.timezone, process == nil)
   if not conds then return nil, err end
   local order
   if q.order == nil then
      order = { { field = "TIMESTAMP_X", desc = false } }
   else
      order, err = sanitize_order(p, q.order, GET_FIELDS, params)
      if not order then return nil, err end
   end
   queue:purge(false)
   local connector = connector_of(p)
   local fixed = { CONNECTOR_ID = connector, ERROR = errors and 1 or 0 }
   local return_process = clear == 0
   if process == nil then
      fixed.PROCESS_ID = ""
      process = queue.random()
      local marked = queue:select(conds, fixed, order)
      for i = 1, math_floor(limit) do
         if not marked[i] then break end
         queue:set_process(marked[i], process)
      end
   else
      return_process = true
   end
   fixed.PROCESS_ID = process
   local rows = queue:select(conds, fixed, order)
   local out = {}
   for i = 1, math_floor(limit) do
      if not rows[i] then break end
      out[i] = shape(p, rows[i])
   end
   queue.stats.taken = queue.stats.taken + #out
   if clear ~= 0 and #out > 0 then
      local n = queue:delete_where(function(row) return row.PROCESS_ID == process and row.CONNECTOR_ID == connector end)
      queue.stats.cleared = queue.stats.cleared + n
   end
   p.dirty = true
   return { process_id = return_process and process or json.null, events = out }, { rows = #out }
end

-- event.offline.clear: rest/lib/api/event.php eventOfflineClear: PROCESS_ID required;
-- message_id (an array of 32-character ids: clearEventsByMessageId) or id (an array of positive
-- integers) narrows, none deletes the whole process (clearEvents). Answers true.
local function offline_clear(p, params)
   if not is_app(p) then return wrong_auth_type() end
   local q = lower_keys(params)
   local process = trimmed(q.process_id)
   if process == nil then return fail("Argument 'PROCESS_ID' is null or empty", nil, nil, "PROCESS_ID") end
   local connector = connector_of(p)
   local field, wanted
   if q.message_id ~= nil then
      if type(q.message_id) ~= "table" then
         return fail("Value must be array of MESSAGE_ID values", nil, nil, "message_id")
      end
      field, wanted = "MESSAGE_ID", {}
      for _, v in pairs(q.message_id) do
         local id = trimmed(v) or ""
         -- the platform's own spelling of the argument here
         if #id ~= 32 then return fail("Value must be array of MESSAGE_ID values", nil, nil, "messsage_id") end
         wanted[id] = true
      end
   elseif q.id ~= nil then
      if type(q.id) ~= "table" then return fail("Value must be array of integers", nil, nil, "id") end
      field, wanted = "ID", {}
      for _, v in pairs(q.id) do
         local id = php_int(v)
         if id <= 0 then return fail("Value must be array of integers", nil, nil, "id") end
         wanted[id] = true
      end
   end
   local queue = p.offline
   local n = queue:delete_where(function(row)
      return row.PROCESS_ID == process and row.CONNECTOR_ID == connector and (not field or wanted[row[field]] == true)
   end)
   queue.stats.cleared = queue.stats.cleared + n
   if n > 0 then p.dirty = true end
   return true, { rows = 1 }
end

-- event.offline.error: rest/lib/api/event.php eventOfflineError → eventoffline.php markError:
-- PROCESS_ID required, message_id an array. For those messages of the connector not parked
-- yet: the rows of other processes (and unprocessed ones) are deleted, the process's rows
-- get ERROR=1 and PROCESS_ID '' (parked: event.offline.get returns them only with error=1; a
-- later change of the object merges into the parked row). Answers true.
local function offline_error(p, params)
   if not is_app(p) then return wrong_auth_type() end
   local q = lower_keys(params)
   local process = trimmed(q.process_id)
   if process == nil then return fail("Argument 'PROCESS_ID' is null or empty", nil, nil, "PROCESS_ID") end
   if type(q.message_id) ~= "table" then
      return fail("Value must be array of MESSAGE_ID values", nil, nil, "message_id")
   end
   local wanted, any = {}, false
   for _, v in pairs(q.message_id) do
      wanted[to_text(v) or ""] = true
      any = true
   end
   if not any then return true, { rows = 1 } end
   local queue, connector = p.offline, connector_of(p)
   local function ours(row) return wanted[row.MESSAGE_ID] and row.CONNECTOR_ID == connector and row.ERROR == 0 end
   local dropped = queue:delete_where(function(row) return ours(row) and row.PROCESS_ID ~= process end)
   local parked = 0
   for _, row in ipairs(queue:select({}, { PROCESS_ID = process, CONNECTOR_ID = connector, ERROR = 0 })) do
      if wanted[row.MESSAGE_ID] then
         if queue.index[key_of(row.MESSAGE_ID, connector, "")] then
            -- the key is taken by a row parked before: this one goes (a duplicate key)
            queue:delete_where(function(r) return r == row end)
         else
            row.ERROR = 1
            queue:set_process(row, "")
            parked = parked + 1
         end
      end
   end
   queue.stats.errored = queue.stats.errored + parked
   queue.stats.cleared = queue.stats.cleared + dropped
   p.dirty = true
   return true, { rows = 1 }
end

-- event.offline.list: rest/lib/api/event.php eventOfflineList: the connector's rows (all
-- processes, parked ones included) without taking them; filter and order on ID, TIMESTAMP_X,
-- EVENT_NAME, MESSAGE_ID, PROCESS_ID, ERROR (ID ASC by default), 50 a page from `start`
-- (getNavData ORM: limit 50, offset intval(start)), total and next (setNavData). A row carries
-- PROCESS_ID and ERROR too.
local function offline_list(p, params)
   if not is_app(p) then return wrong_auth_type() end
   local q = lower_keys(params)
   local conds, err = sanitize_filter(q.filter, LIST_FIELDS, p.timezone, false)
   if not conds then return nil, err end
   local order
   if q.order == nil then
      order = { { field = "ID", desc = false } }
   else
      order, err = sanitize_order(p, q.order, LIST_FIELDS, params)
      if not order then return nil, err end
   end
   p.offline:purge(false)
   local rows = p.offline:select(conds, { CONNECTOR_ID = connector_of(p) }, order)
   local start = php_int(q.start)
   local offset = start >= 0 and start or 0
   local out = {}
   for i = offset + 1, offset + _M.LIST_LIMIT do
      if not rows[i] then break end
      out[#out + 1] = shape(p, rows[i], true)
   end
   local meta = { total = #rows, rows = #out, counted = #rows }
   if offset + #out < #rows then meta.next = offset + #out end
   return out, meta
end

-- feature.get: rest/classes/general/rest_provider.php getFeature: CODE required (CODE_EMPTY);
-- { value = "Y"|"N" } from the portal's plan: rest_offline_extended as --offline-extended says,
-- rest_auth_connector on, any other code off.
local function feature_get(p, params)
   local code
   for k, v in pairs(params) do
      if type(k) == "string" and string_upper(k) == "CODE" then code = to_text(v) end
   end
   if code == nil or code == "" or code == "0" then return fail("CODE can't be empty", "CODE_EMPTY") end
   local on = (code == "rest_offline_extended" and p.offline.extended) or code == "rest_auth_connector"
   return { value = on and "Y" or "N" }, { rows = 1 }
end

-- Called for each offline binding of an event raised while p runs a request (b24.emulator.events
-- emit): rest/lib/event/provideroffline.php finalize queues it unless the request was made by
-- this application with the binding's connector (the no-echo rule: serverAuthData client_id and
-- auth_connector equal the binding's), then rings ONOFFLINEEVENT (sendOfflineEvent).
function _M:raise(p, name, data, binding)
   local connector = binding.connector or ""
   if p.caller == "oauth" and connector_of(p) == connector then
      self.stats.skipped = self.stats.skipped + 1
      return
   end
   self:push(name, data, p.user_id, connector)
   p.dirty = true
   self.ring = true
   if not p.events.buffer then self:notify(p) end
end

-- rest/lib/eventoffline.php prepareOfflineEvent/checkSendTime after the queue gained rows: each
-- online ONOFFLINEEVENT binding gets a delivery unless its minTimeout (OPTIONS, 1 by default)
-- has not passed since its last one (a cache entry per handler living minTimeout seconds); a
-- minTimeout of 0 allows one delivery per hit for all such handlers (a static flag). The body
-- carries no data (the handler's prepare returns null, which http_build_query leaves out) and
-- a refresh token (sendRefreshToken), as the application's deliveries are encoded.
function _M:notify(p)
   if not self.ring then return end
   self.ring = false
   local now = self.wall()
   for _, b in ipairs(p.events.bindings) do
      if b.event == "ONOFFLINEEVENT" and not b.offline then
         local timeout = b.options and b.options.minTimeout
         if timeout == nil then timeout = _M.DEFAULT_TIMEOUT end
         local send = false
         if timeout > 0 then
            local last = self.sent_at and self.sent_at[b.id]
            if not last or now - last >= timeout then
               self.sent_at = self.sent_at or {}
               self.sent_at[b.id] = now
               send = true
            end
         elseif not self.hit_sent then
            self.hit_sent = true
            send = true
         end
         if send then
            self.stats.notified = self.stats.notified + 1
            local who = p:identity()
            if b.user_id and b.user_id > 0 then who.user_id = b.user_id end
            local urlencode = events.urlencode
            local out = { "event=ONOFFLINEEVENT", "event_handler_id=" .. tostring(b.id), "ts=" .. tostring(os_time()) }
            for _, pair in ipairs(p.app:auth_fields(p.app:issue(true), who)) do
               out[#out + 1] = urlencode("auth[" .. pair[1] .. "]") .. "=" .. urlencode(pair[2])
            end
            p.events:deliver(b.handler, table_concat(out, "&"), "ONOFFLINEEVENT")
         end
      end
   end
end

-- A new hit (the static flag of minTimeout 0 is per PHP request).
function _M:begin()
   self.hit_sent = false
end

-- The queue as plain data (--data).
function _M:export()
   local rows = {}
   for i, id in ipairs(self.ids) do rows[i] = self.rows[id] end
   return { next_id = self.next_id, rows = rows }
end

-- Replaces the queue with export()'s data.
function _M:import(data)
   self.rows, self.ids, self.index = {}, {}, {}
   local top = 0
   for _, row in ipairs(type(data.rows) == "table" and data.rows or {}) do
      local id = tonumber(row.ID)
      if id and not self.rows[id] and type(row.MESSAGE_ID) == "string" then
         row.ID, row.TIMESTAMP_X, row.ERROR = id, tonumber(row.TIMESTAMP_X) or 0, tonumber(row.ERROR) or 0
         row.PROCESS_ID, row.CONNECTOR_ID = row.PROCESS_ID or "", row.CONNECTOR_ID or ""
         self.rows[id] = row
         self.ids[#self.ids + 1] = id
         self.index[key_of(row.MESSAGE_ID, row.CONNECTOR_ID, row.PROCESS_ID)] = id
         if id > top then top = id end
      end
   end
   table_sort(self.ids)
   self.next_id = math_floor(tonumber(data.next_id) or 1)
   if self.next_id <= top then self.next_id = top + 1 end
end

-- The application's bindings (b24.emulator.events) as a store for --data: { export, import }.
function _M.bindings_store(ev)
   return {
      export = function()
         return { last_id = ev.last_id, bindings = ev.bindings }
      end,
      import = function(_, data)
         local list = {}
         for _, b in ipairs(type(data.bindings) == "table" and data.bindings or {}) do
            if type(b.event) == "string" and tonumber(b.id) then
               list[#list + 1] = { id = tonumber(b.id), event = b.event, handler = b.handler or "",
                                   user_id = tonumber(b.user_id) or 0, offline = b.offline == true,
                                   connector = b.connector or "", options = b.options }
               if list[#list].id > ev.last_id then ev.last_id = list[#list].id end
            end
         end
         ev.bindings = list
         if tonumber(data.last_id) and tonumber(data.last_id) > ev.last_id then ev.last_id = tonumber(data.last_id) end
      end,
   }
end

-- The emulator's control method emulator.offline.stats: the queue's counters since the start
-- (queued: rows added, merged: changes merged into a row, taken: rows event.offline.get
-- returned, cleared: rows deleted by a clear, errored: rows parked, skipped: changes not queued
-- by the no-echo rule, notified: ONOFFLINEEVENT deliveries, purged: rows past the retention)
-- and rows: the rows held now.
function _M:control_stats()
   local out = { rows = #self.ids }
   for k, v in pairs(self.stats) do out[k] = v end
   return out
end

-- Registers the offline methods into methods.
function _M.register(_, methods)
   methods["event.offline.get"] = offline_get
   methods["event.offline.clear"] = offline_clear
   methods["event.offline.error"] = offline_error
   methods["event.offline.list"] = offline_list
   methods["feature.get"] = feature_get
end

return _M
