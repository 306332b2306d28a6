-- bitrix24.reconcile: heals the gaps of the push channel (issue 17). Bitrix24 posts an outgoing
-- webhook once and never again (rest/lib/event/sender.php: no retry), so an event lost on the
-- way, refused by a receiver that was down, or dropped for a slow one is gone. On a schedule,
-- per entity kind, a pass lists only what changed since a checkpoint (minus an overlap), selecting
-- the ID and the modification and creation times, and commits a synthesized delivery (the body
-- the portal posts, with reconciled=1: event.reconciled) for every row modified at or after the
-- last delivery handled for its object, or with none handled at all. The checkpoint is the
-- portal's clock at the start of the kind's first read (the answer's time.start), kept in the
-- state and advanced only after every row of the kind was committed.
--
-- The lists, as the platform reads them (yuliai/bitrix-modules, platform 26.250.100):
--   crm/classes/general/restservice.php CCrmRestProxyBase::processMethodRequest (crm.lead.list …:
--     filter >=DATE_MODIFY read by rest/classes/general/rest_util.php unConvertDateTime, an ISO
--     date with its offset), crm/lib/controller/item.php listAction (crm.item.list: >=updatedTime,
--     rows camelCased), tasks/lib/rest/controllers/task.php listAction (tasks.task.list:
--     >=CHANGED_DATE, rows camelCased: changedDate); keyset paging with start = -1 as
--     bitrix24.export pages (rest/classes/general/rest.php getNavData: nothing counted).
-- The bodies, as the portal posts them: crm/classes/general/restservice.php
--   CCrmRestEventDispatcher (data[FIELDS][ID]), crm/lib/integration/rest/eventmanager.php
--   processItemEvent (ID and ENTITY_TYPE_ID of a smart-process item: ONCRMDYNAMICITEM…),
--   tasks/classes/general/restservice.php (FIELDS_BEFORE, FIELDS_AFTER, IS_ACCESSIBLE_*),
--   rest/lib/event/sender.php (ts, auth).
--
-- State (what the reconciler remembers): checkpoints by name (get/put), the time of the last
-- delivery handled per object portal|entity|id (mark/marks), and where synthesized deliveries go
-- (commit). Under b24 serve the host state keeps all of it in the inbox's database; elsewhere the
-- memory state keeps it in this Lua state (lost on restart, bounded by a TTL and a count) and
-- commits by running the router's handlers at once.
local core = require "bitrix24.core"
local Error = require "bitrix24.error"
local event_module = require "bitrix24.event"
local export = require "bitrix24.export"
local plans = require "bitrix24.listplan"
local log_module = require "bitrix24.log"
local ngx_adapter = require "bitrix24.ngx"

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local string_format = string.format
local string_lower = string.lower
local string_gmatch = string.gmatch
local string_match = string.match
local string_gsub = string.gsub
local string_sub = string.sub
local table_concat = table.concat
local table_sort = table.sort
local math_floor = math.floor
local math_min = math.min
local os_date = os.date
local os_time = os.time
local form_encode = core.form_encode

local _M = {}

_M.JOB = "bitrix24.reconcile"

local FORM = "application/x-www-form-urlencoded"
local PAGE = 50
local BATCH_MAX = 50
local MARKS_MAX = 10000 -- objects per host.inbox_marks call
local EVERY = 300
local OVERLAP = 120
local MARK_TTL = 86400
local MARK_MAX = 100000

-- The legacy CRM lists: canonical entity → list method and the event name's stem.
local LEGACY = {
   ["crm.lead"] = { method = "crm.lead.list", stem = "ONCRMLEAD" },
   ["crm.deal"] = { method = "crm.deal.list", stem = "ONCRMDEAL" },
   ["crm.contact"] = { method = "crm.contact.list", stem = "ONCRMCONTACT" },
   ["crm.company"] = { method = "crm.company.list", stem = "ONCRMCOMPANY" },
}
-- crm.item of the four legacy types raises their legacy events (crm/lib/Service/Factory/Lead.php
-- …): an item of entityTypeId 1 is the lead of the same ID.
local ITEM_LEGACY = { [1] = "crm.lead", [2] = "crm.deal", [3] = "crm.contact", [4] = "crm.company" }

-- Dates ----------------------------------------------------------------------------------------

-- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
   if m <= 2 then y = y - 1 end
   local era = math_floor(y / 400)
   local yoe = y - era * 400
   local mp = (m + 9) % 12
   local doy = math_floor((153 * mp + 2) / 5) + d - 1
   local doe = yoe * 365 + math_floor(yoe / 4) - math_floor(yoe / 100) + doy
   return era * 146097 + doe - 719468
end

-- The seconds east of UTC of a zone suffix ("Z", "+03:00", "-0500"), or nil when it is none.
local function zone_seconds(zone)
   if zone == "Z" or zone == "z" then return 0 end
   local sign, hh, mm = string_match(zone, "^([+-])(%d%d):?(%d%d)$")
   if not sign then return nil end
   local s = tonumber(hh) * 3600 + tonumber(mm) * 60
   return sign == "-" and -s or s
end

-- parse_date(text [, offset]) → unix seconds (whole) of an ISO 8601 date with its offset
-- ("2026-12-07T15:04:05+03:00", as CRestUtil::ConvertDateTime prints), or of "dd.mm.yyyy
-- hh:mm:ss"; a date without an offset is read in offset (seconds east of UTC, 0 by default).
-- nil when the text is no such date.
function _M.parse_date(text, offset)
   if type(text) ~= "string" then return nil end
   local y, m, d, hh, mi, rest = string_match(text, "^%s*(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d)(.-)%s*$")
   local ss = "0"
   if y then
      local s2, tail = string_match(rest, "^:(%d%d)(.*)$")
      if s2 then ss, rest = s2, tail end
      rest = string_gsub(rest, "^%.%d+", "")
   else
      d, m, y, hh, mi, ss = string_match(text, "^%s*(%d%d)%.(%d%d)%.(%d%d%d%d) (%d%d):(%d%d):(%d%d)%s*$")
      if not d then
         y, m, d = string_match(text, "^%s*(%d%d%d%d)%-(%d%d)%-(%d%d)%s*$")
         if not y then return nil end
         hh, mi = "0", "0"
      end
      rest = ""
   end
   local zone = offset or 0
   if rest ~= "" then
      zone = zone_seconds(rest)
      if not zone then return nil end
   end
   m, d = tonumber(m), tonumber(d)
   if m < 1 or m > 12 or d < 1 or d > 31 then return nil end
   return days_from_civil(tonumber(y), m, d) * 86400 + tonumber(hh) * 3600 + tonumber(mi) * 60
      + tonumber(ss) - zone
end

-- format_date(t, offset) → ISO 8601 text of unix time t in the zone offset seconds east of UTC.
function _M.format_date(t, offset)
   offset = offset or 0
   local sign = offset < 0 and "-" or "+"
   local a = offset < 0 and -offset or offset
   return os_date("!%Y-%m-%dT%H:%M:%S", math_floor(t) + offset) ..
      string_format("%s%02d:%02d", sign, math_floor(a / 3600), math_floor(a % 3600 / 60))
end

-- The offset of a portal's printed date (time.date_start), nil when it has none.
local function offset_of(date)
   if type(date) ~= "string" then return nil end
   local zone = string_match(date, "([Zz])$") or string_match(date, "([+-]%d%d:?%d%d)$")
   return zone and zone_seconds(zone) or nil
end

-- States ---------------------------------------------------------------------------------------

-- A state in this Lua state's memory: per-process, lost on restart. Marks live ttl seconds and
-- at most max of them are kept (the oldest go first); a forgotten mark only makes a pass commit
-- a delivery the handlers may have seen.
local Memory = {}
local memory_mt = { __index = Memory }

-- memory_state{ ttl, max, now } → a memory state.
function _M.memory_state(opts)
   opts = opts or {}
   return setmetatable({ kv = {}, marks = {}, queue = {}, head = 1, tail = 0, count = 0,
                         ttl = opts.ttl or MARK_TTL, max = opts.max or MARK_MAX, now = opts.now or os_time,
                         kind = "memory" }, memory_mt)
end

-- The value kept under name (a checkpoint, the member_id, totals, swept IDs), or nil.
function Memory:get(name) return self.kv[name] end

-- Keeps value under name: true.
function Memory:put(name, value)
   self.kv[name] = value
   return true
end

-- Keeps max(ts) for object, for ttl seconds from now; past max marks, the oldest are dropped.
function Memory:mark(object, ts)
   local now = self.now()
   local m = self.marks[object]
   if m and m.expires > now then
      if ts > m.ts then m.ts = ts end
      m.expires = now + self.ttl
      return true
   end
   if not m then self.count = self.count + 1 end
   self.tail = self.tail + 1
   self.marks[object] = { ts = ts, expires = now + self.ttl, seq = self.tail }
   self.queue[self.tail] = object
   while self.count > self.max and self.head < self.tail do
      local old = self.queue[self.head]
      self.queue[self.head] = nil
      local om = self.marks[old]
      if om and om.seq == self.head then -- the queue entry of the mark as it is now
         self.marks[old] = nil
         self.count = self.count - 1
      end
      self.head = self.head + 1
   end
   return true
end

-- { [object] = ts } of the objects marked and not expired.
function Memory:marked(objects)
   local out, now = {}, self.now()
   for _, object in ipairs(objects) do
      local m = self.marks[object]
      if m and m.expires > now then out[object] = m.ts end
   end
   return out
end

-- A state in a lua_shared_dict (OpenResty), one for every worker of an nginx: checkpoints and
-- values as keys "v|name", marks as "m|object" living ttl seconds (the dict's exptime); when the
-- dict is full nginx drops its least recently used keys (lua-nginx-module README, ngx.shared.DICT.set:
-- "forcibly"): a forgotten mark makes a pass commit a delivery once more, a forgotten checkpoint
-- makes the next pass a first one. The claim keeps a pass from running in two workers at once.
local Shared = {}
local shared_mt = { __index = Shared }

-- shared_state{ dict (ngx.shared.NAME or a dict-like table), ttl } → a shared-dict state.
function _M.shared_state(opts)
   if type(opts) ~= "table" or opts.dict == nil then error("bitrix24.reconcile.shared_state: no dict", 2) end
   return setmetatable({ dict = opts.dict, ttl = opts.ttl or MARK_TTL, kind = "shared",
                         owner = opts.owner or tostring(os_time()) .. "." .. tostring({}) }, shared_mt)
end

-- The value kept under name, or nil.
function Shared:get(name) return (self.dict:get("v|" .. name)) end

-- Keeps value under name: true | nil, err.
function Shared:put(name, value)
   local ok, err = self.dict:set("v|" .. name, value)
   if not ok then return nil, err end
   return true
end

-- Keeps max(ts) for object, for ttl seconds from now (two workers marking at once may keep the
-- older ts: the change is committed once more, never missed).
function Shared:mark(object, ts)
   local key = "m|" .. object
   local old = tonumber(self.dict:get(key))
   if old and old > ts then ts = old end
   return self.dict:set(key, ts, self.ttl)
end

-- { [object] = ts } of the objects marked and not expired.
function Shared:marked(objects)
   local out, dict = {}, self.dict
   for _, object in ipairs(objects) do
      local ts = tonumber(dict:get("m|" .. object))
      if ts then out[object] = ts end
   end
   return out
end

-- Whether this worker may run a pass now: name taken for seconds (a bound on a pass) unless
-- another worker holds it; given back by release when the pass ends.
function Shared:claim(name, seconds)
   local ok, err = self.dict:add("c|" .. name, self.owner, seconds)
   if ok then return true end
   if err ~= "exists" then return true end -- the dict is full: a pass twice beats none
   return self.dict:get("c|" .. name) == self.owner
end

-- Gives back a claim this worker holds.
function Shared:release(name)
   if self.dict:get("c|" .. name) == self.owner then self.dict:delete("c|" .. name) end
end

-- A state on b24 serve's inbox database (b24.host: kv_get, kv_put, inbox_mark, inbox_marks,
-- inbox_put): checkpoints durable, marks kept by the inbox for --dedup-ttl seconds.
local Host = {}
local host_mt = { __index = Host }

local HOST_NEEDS = { "kv_get", "kv_put", "inbox_mark", "inbox_marks", "inbox_put", "job", "wake" }

-- host_state(host) → a state on b24.host. Raises when the host lacks a function it needs.
function _M.host_state(host)
   for _, f in ipairs(HOST_NEEDS) do
      if type(host[f]) ~= "function" then
         error("bitrix24.reconcile: the host has no " .. f .. " (b24 serve with an inbox needed)", 3)
      end
   end
   return setmetatable({ host = host, kind = "host" }, host_mt)
end

-- A value of the inbox database (nil when none; nil, err without an inbox).
function Host:get(name) return self.host.kv_get(name) end

-- Keeps a value in the inbox database, durable when it returns: true | nil, err.
function Host:put(name, value) return self.host.kv_put(name, value) end

-- Queues object's mark into the inbox's next commit (the inbox keeps the newest ts).
function Host:mark(object, ts) return self.host.inbox_mark(object, ts) end

-- Whether this host may run a pass now: the claim of name on the inbox database (every host
-- of a fleet sharing it asks; one holds it for seconds, renewed at each of its passes) | true
-- where the host has no claims.
function Host:claim(name, seconds)
   if type(self.host.kv_claim) ~= "function" then return true end
   return self.host.kv_claim(name, seconds) ~= false
end

-- { [object] = ts } of the objects the inbox has a mark for, asked 10,000 at a time | nil, err.
function Host:marked(objects)
   local out = {}
   for first = 1, #objects, MARKS_MAX do
      local chunk = {}
      for i = first, math_min(#objects, first + MARKS_MAX - 1) do chunk[#chunk + 1] = objects[i] end
      local got, err = self.host.inbox_marks(chunk)
      if type(got) ~= "table" then return nil, err end
      for k, v in pairs(got) do out[k] = tonumber(v) end
   end
   return out
end

-- Entity kinds ---------------------------------------------------------------------------------

-- A kind from one entry of the reconcile list: a name ("crm.lead", …, "tasks.task") or
-- { "crm.item", entityTypeId = N }. Raises on misuse.
local function kind_of(entry)
   local name, etid = entry, nil
   if type(entry) == "table" then
      name, etid = entry[1], entry.entityTypeId or entry.entity_type_id
   end
   if type(name) ~= "string" then
      error("bad option 'reconcile' (entity names or { \"crm.item\", entityTypeId = N } expected)", 4)
   end
   name = string_lower(name)
   if LEGACY[name] then
      local l = LEGACY[name]
      return { entity = name, method = l.method, stem = l.stem, modified = "DATE_MODIFY", created = "DATE_CREATE",
               filter = ">=DATE_MODIFY", key = "ID", id = "ID", select = { "ID", "DATE_MODIFY", "DATE_CREATE" },
               base = {} }
   elseif name == "tasks.task" then
      return { entity = name, method = "tasks.task.list", stem = "ONTASK", task = true, modified = "changedDate",
               created = "createdDate", filter = ">=CHANGED_DATE", key = "ID", id = "id",
               select = { "ID", "CHANGED_DATE", "CREATED_DATE" }, base = {} }
   elseif name == "crm.item" then
      etid = tonumber(etid)
      if not etid or etid < 1 or etid ~= math_floor(etid) then
         error("bad option 'reconcile' (crm.item needs entityTypeId, a whole number)", 4)
      end
      local legacy = ITEM_LEGACY[etid]
      local entity = legacy or ("crm.item." .. string_format("%d", etid))
      return { entity = entity, method = "crm.item.list", stem = legacy and LEGACY[legacy].stem or "ONCRMDYNAMICITEM",
               entity_type_id = not legacy and string_format("%d", etid) or nil, modified = "updatedTime",
               created = "createdTime", filter = ">=updatedTime", key = "id", id = "id",
               select = { "id", "updatedTime", "createdTime" }, base = { entityTypeId = etid } }
   end
   error("bad option 'reconcile' (unknown entity '" .. name .. "': crm.lead, crm.deal, crm.contact, "
         .. "crm.company, tasks.task or { \"crm.item\", entityTypeId = N })", 4)
end

-- The entity and ID an event is about (for the marks), or nil: CRM and smart-process items,
-- tasks.
local function entity_of(event)
   local name = event.name
   if type(name) ~= "string" or event_module.kind(name) == "other" then return nil end
   local stem = string_match(name, "^(ONCRM%u+)ADD$") or string_match(name, "^(ONCRM%u+)UPDATE$")
      or string_match(name, "^(ONCRM%u+)DELETE$")
   if stem == "ONCRMDYNAMICITEM" or string_match(name, "^ONCRMDYNAMICITEM%u+_%d+$") then
      local etid = event.entity_type_id
      if type(etid) ~= "string" or not string_match(etid, "^%d+$") then return nil end
      local legacy = ITEM_LEGACY[tonumber(etid)]
      return legacy or ("crm.item." .. etid)
   end
   if stem then
      for entity, l in pairs(LEGACY) do
         if l.stem == stem then return entity end
      end
      return nil
   end
   if name == "ONTASKADD" or name == "ONTASKUPDATE" or name == "ONTASKDELETE" then return "tasks.task" end
   return nil
end

-- Reconciler -----------------------------------------------------------------------------------

local Reconciler = {}
local reconciler_mt = { __index = Reconciler }

-- The router's log: its log option, else nginx's error log inside nginx (bitrix24.ngx.log, as
-- handle_ngx logs), else the host's writer or stderr (bitrix24.log.default).
local function log_of(router)
   if router.log then return router.log end
   if ngx_adapter.available() then return ngx_adapter.log end
   return log_module.default
end

-- A line in the router's log (log_of).
local function log(self, level, msg, fields)
   pcall(log_of(self.router), level, msg, fields)
end

-- The host of a client's webhook URL (the portal's domain as deliveries name it).
local function domain_of(client)
   local url = type(client) == "table" and client.url or nil
   return type(url) == "string" and string_lower(string_match(url, "^%a+://([^/:]+)") or "") or nil
end

-- The object name of a mark: portal|entity|id.
function Reconciler:object(entity, id)
   return self.domain .. "|" .. entity .. "|" .. id
end

-- The dispatch hook: after the handlers of event succeeded, its object is marked with its ts
-- (and the portal's member_id learned, once, for the keys of synthesized deliveries).
function Reconciler:handled(event)
   local domain = event.domain and string_lower(event.domain)
   if domain ~= self.domain then return end
   if not self.member_id and type(event.member_id) == "string" and event.member_id ~= "" then
      self.member_id = event.member_id
      self.state:put(self.prefix .. "member_id", event.member_id)
   end
   local ts = tonumber(event.ts)
   if not ts or type(event.id) ~= "string" or not string_match(event.id, "^[1-9]%d*$") then return end
   -- a synthesized delivery's ts is its pass's start, the time its listing saw the row (the
   -- same clock as the answer's): no skew to allow for, so its mark is ts + skew
   if event.reconciled then ts = ts + self.skew end
   local entity = entity_of(event)
   if entity then self.state:mark(self:object(entity, event.id), ts) end
end

-- The application token for synthesized bodies (the router's), or nil.
function Reconciler:token()
   local t = self.tokens
   if type(t) == "string" then return t end
   if type(t) == "function" then
      local ok, v = pcall(t, self.member_id, self.domain)
      return ok and type(v) == "string" and v or nil
   end
   if type(t) == "table" then
      for k, v in pairs(t) do
         local lk = string_lower(k)
         if lk == self.domain or (self.member_id and lk == string_lower(self.member_id)) then return v end
      end
   end
   return nil
end

-- The data of a synthesized event: the task shape of protocol.md §6, else FIELDS.
local function data_of(kind, action, id)
   if kind.task then
      if action == "ADD" then
         return { FIELDS_BEFORE = "undefined", FIELDS_AFTER = { ID = id }, IS_ACCESSIBLE_BEFORE = "N",
                  IS_ACCESSIBLE_AFTER = "undefined" }
      elseif action == "UPDATE" then
         return { FIELDS_BEFORE = { ID = id }, FIELDS_AFTER = { ID = id }, IS_ACCESSIBLE_BEFORE = "undefined",
                  IS_ACCESSIBLE_AFTER = "undefined" }
      end
      return { FIELDS_BEFORE = { ID = id }, FIELDS_AFTER = "undefined", IS_ACCESSIBLE_BEFORE = "undefined",
               IS_ACCESSIBLE_AFTER = "N" }
   end
   return { FIELDS = { ID = id, ENTITY_TYPE_ID = kind.entity_type_id } }
end

-- The form body of a synthesized delivery, in the portal's key order, with reconciled=1.
function Reconciler:body(kind, action, id, ts)
   local auth = { domain = self.domain, client_endpoint = "https://" .. self.domain .. "/rest/",
                  member_id = self.member_id, application_token = self:token() }
   return table_concat({
      form_encode({ event = kind.stem .. action }),
      form_encode({ data = data_of(kind, action, id) }),
      form_encode({ ts = string_format("%d", math_floor(ts)) }),
      form_encode({ auth = auth }),
      "reconciled=1",
   }, "&")
end

-- Commits one synthesized delivery: through the inbox (host state) or the router's handlers at
-- once (memory state). true | nil, err.
function Reconciler:commit(kind, action, id, ts)
   local router = self.router
   local body = self:body(kind, action, id, ts)
   local event, perr = event_module.parse(body, FORM, router.limits)
   if not event then return nil, perr end
   local key = router.key_function and router.key_function(event) or router.default_key(event)
   if self.state.kind == "host" then
      local got, err = self.state.host.inbox_put{ key = key, event = event.name, body = body, content_type = FORM }
      if not got then return nil, Error.new{ code = "inbox", description = tostring(err) } end
      return true
   end
   if router.shared_dict and not router.shared_store and ngx_adapter.available() then
      -- the store every worker shares, as handle_ngx sets it on its first delivery
      router.shared_store = ngx_adapter.shared_store(router.shared_dict)
      router.store = router.shared_store
   end
   local verdict = { event = event, key = key, kind = event_module.kind(event.name) }
   verdict.dedup = router.dedup_of(verdict.kind)
   local outcome = router:begin(verdict)
   if outcome ~= "run" then return true end
   local ctx = { attempt = 1, log = log_of(router), client = router.client }
   -- the handlers' own calls on the pass's client are theirs, not the pass's (summary.requests)
   local stats = self.client.stats
   local before = stats and stats.requests or 0
   local ok, err = router:run_verdict(verdict, ctx)
   self.handler_requests = self.handler_requests + (stats and stats.requests or 0) - before
   return ok, err
end

-- The sub-call listing kind's rows changed since `since` (ISO), from after ID `after`.
local function list_params(kind, since, after)
   local p = plans.copy(kind.base)
   p.filter = { [kind.filter] = since }
   if after then p.filter[">" .. kind.key] = after end
   p.order = { [kind.key] = "ASC" }
   p.select = kind.select
   p.start = -1
   return p
end

-- The rows of a kind's answer, or nil, err.
local function rows_of(kind, result)
   return plans.rows_of(result, export.LIST_SHAPES[kind.method] or { id = kind.id }, kind.method)
end

-- The rest of a kind's rows after its first full page: bitrix24.export's keyset scan (batches of
-- 50 sub-calls chained by $result references: 2,500 rows a request). Appends to rows; true |
-- nil, err.
local function scan_rest(self, kind, since, rows)
   local last = rows[#rows][kind.id]
   local scan = export.scanner(self.runner, kind.method, list_params(kind, since, plans.fmt_id(tonumber(last))),
                               { parallel = 1 })
   while true do
      local more, err = scan:round(rows)
      if more == nil then return nil, err end
      if not more then return true end
   end
end

-- Commits what kind's rows need (see the top); counts in tally. true | nil, err.
function Reconciler:settle(kind, rows, checkpoint, start, tally)
   local objects, ids = {}, {}
   for i, row in ipairs(rows) do
      local id = plans.id_of(row, kind.id)
      ids[i] = id and plans.fmt_id(id) or nil
      if ids[i] then objects[#objects + 1] = self:object(kind.entity, ids[i]) end
   end
   local marks, merr = self.state:marked(objects)
   if not marks then return nil, Error.new{ code = "state", description = tostring(merr) } end
   local ts = math_floor(start)
   for i, row in ipairs(rows) do
      local id = ids[i]
      local modified = _M.parse_date(row[kind.modified], self.offset)
      if id and self.seen[kind.entity] then self.seen[kind.entity][id] = true end
      if id and modified then
         local mark = marks[self:object(kind.entity, id)]
         -- the delivery's ts is the web server's clock, DATE_MODIFY the database's (rest/lib/
         -- event/sender.php time(); crm_lead.php CurrentTimeFunction): a change up to `skew`
         -- seconds before the mark may be one the handled delivery did not see
         if not mark or modified >= mark - self.skew then
            local created = _M.parse_date(row[kind.created], self.offset)
            -- created in the checkpoint's second or later (dates have whole seconds), nothing handled
            local action = (not mark and created and created >= math_floor(checkpoint)) and "ADD" or "UPDATE"
            local ok, err = self:commit(kind, action, id, ts)
            if not ok then return nil, err end
            local key = kind.entity .. "/" .. string_lower(action)
            tally[key] = (tally[key] or 0) + 1
         end
      end
   end
   return true
end

-- The portal's clock now (server.time's time.start) and its zone offset: start, offset | nil, err.
function Reconciler:portal_time()
   local env, err = self.client:request("server.time", {})
   if not env then return nil, err end
   local t = type(env.time) == "table" and tonumber(env.time.start)
   if not t then return nil, Error.new{ code = "no_time", description = "server.time answered without time.start" } end
   return t, offset_of(env.time.date_start) or offset_of(env.result)
end

-- Lists and settles every kind once. Returns a summary { requests, seconds, entities = { [entity]
-- = { listed, committed, checkpoint } }, counts = { ["entity|kind"] = n }, failed = { [entity] =
-- err } } (failed kinds keep their checkpoint), or nil, err when nothing could be listed.
function Reconciler:pass_once()
   local client = self.client
   local requests0 = client.stats and client.stats.requests or 0
   local t0 = self.clock()
   if not self.member_id then self.member_id = self.state:get(self.prefix .. "member_id") end
   local checkpoints, first = {}, false
   for i, kind in ipairs(self.kinds) do
      checkpoints[i] = tonumber(self.state:get(self.prefix .. "checkpoint|" .. kind.entity))
      if not checkpoints[i] then first = true end
   end
   local fallback
   if first then
      local t, offset = self:portal_time()
      if not t then return nil, offset end
      fallback = t - self.lookback
      self.offset = self.offset or offset
   end
   local summary = { entities = {}, counts = {}, failed = {} }
   local sinces, cmds = {}, {}
   for i, kind in ipairs(self.kinds) do
      local since = checkpoints[i] and (checkpoints[i] - self.overlap) or fallback
      sinces[i] = since
      cmds[i] = { kind.method, list_params(kind, _M.format_date(since, self.offset or 0)) }
   end
   local results, errors, metas = {}, {}, {}
   for from = 1, #cmds, BATCH_MAX do
      local chunk = {}
      for i = from, math_min(#cmds, from + BATCH_MAX - 1) do chunk[#chunk + 1] = cmds[i] end
      local got = self.runner.batches({ chunk })[1]
      if got.err then return nil, got.err end
      for j = 1, #chunk do
         results[from + j - 1] = got.results and got.results[j]
         errors[from + j - 1] = got.errors and got.errors[j]
         metas[from + j - 1] = got.meta and got.meta[j]
      end
   end
   for i, kind in ipairs(self.kinds) do
      local time = metas[i] and metas[i].time
      local start = type(time) == "table" and tonumber(time.start)
      if start and (not summary.start or start < summary.start) then summary.start = start end
      if type(time) == "table" and not self.offset then self.offset = offset_of(time.date_start) end
      local rows, err = nil, errors[i]
      if not err and not start then
         err = Error.new{ code = "no_time", method = kind.method, description = "the answer has no time.start" }
      end
      if not err then rows, err = rows_of(kind, results[i]) end
      if rows and #rows >= PAGE then
         local since = _M.format_date(sinces[i], self.offset or 0)
         local ok, serr = scan_rest(self, kind, since, rows)
         if not ok then rows, err = nil, serr end
      end
      if rows then
         local ok, cerr = self:settle(kind, rows, checkpoints[i] or sinces[i], start, summary.counts)
         if ok then
            local put_ok, perr = self.state:put(self.prefix .. "checkpoint|" .. kind.entity,
                                                string_format("%.6f", start))
            if not put_ok then err = Error.new{ code = "state", description = tostring(perr) } end
            summary.entities[kind.entity] = { listed = #rows, checkpoint = start }
         else
            err = cerr
         end
      end
      if err then summary.failed[kind.entity] = err end
   end
   summary.requests = (client.stats and client.stats.requests or 0) - requests0 - self.handler_requests
   summary.seconds = self.clock() - t0
   return summary
end

-- The totals kept across reloads and restarts (in the state): "entity/kind=n,…" and the runs.
function Reconciler:load_totals()
   if self.totals_loaded then return end
   self.totals_loaded = true
   local text = self.state:get(self.prefix .. "totals")
   if type(text) ~= "string" then return end
   for key, n in string_gmatch(text, "([^,=]+)=(%d+)") do
      if key == "runs" or key == "failures" then self[key] = tonumber(n) else self.totals[key] = tonumber(n) end
   end
end

-- Keeps the totals in the state (see load_totals).
function Reconciler:save_totals()
   local parts = { "runs=" .. self.runs, "failures=" .. self.failures }
   for key, n in pairs(self.totals) do parts[#parts + 1] = key .. "=" .. string_format("%d", n) end
   table_sort(parts)
   self.state:put(self.prefix .. "totals", table_concat(parts, ","))
end

-- Counts, the log line and the metrics of a pass.
function Reconciler:report(summary, err)
   pcall(self.load_totals, self)
   self.runs = self.runs + 1
   if not summary then
      self.failures = self.failures + 1
      -- the metrics and the kept totals first: once the line is out, they tell the same
      self:metrics(nil)
      pcall(self.save_totals, self)
      log(self, "warn", "bitrix24.reconcile: pass failed", { error = tostring(err) })
      return
   end
   local parts, failed, listed, latest = {}, {}, 0, nil
   for key, n in pairs(summary.counts) do
      self.totals[key] = (self.totals[key] or 0) + n
      parts[#parts + 1] = key .. "=" .. n
   end
   for _, e in pairs(summary.entities) do
      listed = listed + e.listed
      if not latest or e.checkpoint < latest then latest = e.checkpoint end
   end
   for entity, e in pairs(summary.failed) do failed[#failed + 1] = entity .. ": " .. tostring(e) end
   table_sort(parts)
   table_sort(failed)
   if #failed > 0 then self.failures = self.failures + 1 end
   self:metrics(summary)
   pcall(self.save_totals, self)
   log(self, #failed > 0 and "warn" or "info", "bitrix24.reconcile: pass", {
      listed = listed, reconciled = #parts > 0 and table_concat(parts, ",") or "none",
      requests = summary.requests, seconds = string_format("%.3f", summary.seconds),
      checkpoint = latest and _M.format_date(latest, self.offset or 0) or nil,
      failed = #failed > 0 and table_concat(failed, "; ") or nil,
   })
end

-- host.metric lines, when the host has them: b24_reconciled_total{entity,kind}, the last pass's
-- seconds and requests, passes by outcome.
function Reconciler:metrics(summary)
   local metric = self.host and self.host.metric
   if type(metric) ~= "function" then return end
   pcall(function()
      for key, n in pairs(self.totals) do
         local entity, kind = string_match(key, "^(.*)/(%a+)$")
         metric("b24_reconciled_total", { entity = entity, kind = kind }, n, "counter")
      end
      metric("b24_reconcile_passes_total", { outcome = "failed" }, self.failures, "counter")
      metric("b24_reconcile_passes_total", { outcome = "ok" }, self.runs - self.failures, "counter")
      if summary then
         metric("b24_reconcile_pass_seconds", {}, summary.seconds)
         metric("b24_reconcile_pass_requests", {}, summary.requests)
      end
   end)
end

-- Phases of ngx_lua where a pass can talk to the portal (cosockets, ngx.run_worker_thread);
-- in the others (init_worker_by_lua*, log_by_lua*, …) those calls are disabled
-- (lua-nginx-module README: "context" of ngx.socket.tcp, ngx.run_worker_thread).
local NGX_YIELDING = { rewrite = true, access = true, content = true, timer = true }

-- Inside nginx, why no pass can run here: an Error (code "context": a phase that cannot yield,
-- such as init_worker_by_lua, where a pass must be started from ngx.timer.at; code "exiting":
-- a worker shutting down or reloaded, whose timers run once more with premature = true), or nil.
local function ngx_refusal()
   if not ngx_adapter.available() then return nil end
   local ngx = _G.ngx
   local phase = type(ngx.get_phase) == "function" and ngx.get_phase() or nil
   if phase and not NGX_YIELDING[phase] then
      return Error.new{ code = "context", description = "a reconciliation pass cannot run in nginx's " .. phase
                        .. " phase: start it from ngx.timer.at or ngx.timer.every (or a location)" }
   end
   if type(ngx.worker) == "table" and type(ngx.worker.exiting) == "function" and ngx.worker.exiting() then
      return Error.new{ code = "exiting", description = "the nginx worker is exiting: no reconciliation pass" }
   end
   return nil
end

-- One pass, never two at once in this Lua state, nor in a fleet sharing a state with claims
-- (state:claim: one host runs a portal's passes while it lives): the summary | nil, err. Inside
-- nginx no pass starts in a phase that cannot yield nor in an exiting worker (ngx_refusal).
function Reconciler:pass()
   if self.running then
      return nil, Error.new{ code = "busy", description = "a reconciliation pass is running" }
   end
   local refused = ngx_refusal()
   if refused then return nil, refused end
   if self.state.claim and not self.state:claim(self.prefix .. "pass", self.every * 2 + 60) then
      return nil, Error.new{ code = "elsewhere", description = "another host or worker runs this portal's passes" }
   end
   self.running = true
   self.handler_requests = 0
   local stats, t0 = self.client.stats, self.clock()
   local requests0 = stats and stats.requests or 0
   local ok, summary, err = pcall(self.pass_once, self)
   if not ok then summary, err = nil, Error.new{ code = "failed", description = tostring(summary) } end
   if summary and summary.start and self.sweep then
      -- due by the portal's clock, kept in the state so a restart does not sweep at once
      local last = tonumber(self.state:get(self.prefix .. "swept_at"))
      if not last or summary.start - last >= self.sweep then
         local called, sok, serr = pcall(self.sweep_ids, self, summary)
         if not called then sok, serr = nil, sok end
         if sok then
            self.state:put(self.prefix .. "swept_at", string_format("%.6f", summary.start))
         else
            summary.failed.sweep = serr
         end
      end
   end
   self.running = false
   if self.state.release then pcall(self.state.release, self.state, self.prefix .. "pass") end
   if summary then
      summary.requests = (stats and stats.requests or 0) - requests0 - self.handler_requests
      summary.seconds = self.clock() - t0
   end
   self:report(summary, err)
   if not summary then return nil, err end
   return summary
end

local DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"

-- A whole number >= 0 in base 36.
local function base36(n)
   if n < 36 then return string_sub(DIGITS, n + 1, n + 1) end
   local out = {}
   while n > 0 do
      local d = n % 36
      out[#out + 1] = string_sub(DIGITS, d + 1, d + 1)
      n = math_floor(n / 36)
   end
   local r = {}
   for i = #out, 1, -1 do r[#r + 1] = out[i] end
   return table_concat(r)
end

-- The ID sweep: every ID the portal has now, per kind (a keyset scan of IDs alone: N/2,500
-- requests for N objects), against the IDs the last sweep found and the IDs passes listed since
-- (this process); each one gone gets a synthesized …DELETE. The IDs found are kept (state) for
-- the next sweep. true | nil, err.
function Reconciler:sweep_ids(summary)
   for _, kind in ipairs(self.kinds) do
      local p = plans.copy(kind.base)
      p.select = { kind.key }
      local rows, err = export.all(self.runner, kind.method, p, { parallel = 1 })
      if not rows then return nil, err end
      local now = {}
      local list = {}
      for _, row in ipairs(rows) do
         local id = plans.id_of(row, kind.id)
         if id then now[plans.fmt_id(id)] = true; list[#list + 1] = id end
      end
      local name = self.prefix .. "ids|" .. kind.entity
      local before = self.seen[kind.entity] or {}
      local prev = 0
      for delta in string_gmatch(self.state:get(name) or "", "[%w]+") do
         prev = prev + tonumber(delta, 36)
         before[plans.fmt_id(prev)] = true
      end
      local start = summary.start
      local gone = {}
      for id in pairs(before) do
         if not now[id] then gone[#gone + 1] = id end
      end
      table_sort(gone, function(a, b) return tonumber(a) < tonumber(b) end)
      for _, id in ipairs(gone) do
         local ok, cerr = self:commit(kind, "DELETE", id, start)
         if not ok then return nil, cerr end
         local key = kind.entity .. "/delete"
         summary.counts[key] = (summary.counts[key] or 0) + 1
      end
      -- kept as the differences of the sorted IDs in base 36: ~2 bytes an ID where IDs are dense
      table_sort(list)
      local text = {}
      prev = 0
      for i, id in ipairs(list) do
         text[i] = base36(id - prev)
         prev = id
      end
      local ok, perr = self.state:put(name, table_concat(text, ","))
      if not ok then return nil, perr end
      self.seen[kind.entity] = {}
   end
   return true
end

-- The shared-dict state of lua_shared_dict name (option shared_dict). Raises outside nginx and
-- when nginx.conf has no such dict.
local function shared_of(name, ttl)
   if type(name) ~= "string" or name == "" then
      error("bad option 'reconcile.shared_dict' (the name of a lua_shared_dict expected)", 4)
   end
   if not ngx_adapter.available() then
      error("bad option 'reconcile.shared_dict' (a lua_shared_dict needs nginx)", 4)
   end
   local dict = _G.ngx.shared[name]
   if dict == nil then
      error("bad option 'reconcile.shared_dict' (no lua_shared_dict " .. name .. " in nginx.conf)", 4)
   end
   return _M.shared_state{ dict = dict, ttl = ttl, owner = tostring(_G.ngx.worker.pid()) }
end

-- attach(router, opts, tokens) → the router's reconciler. opts: a list of kinds ("crm.lead",
-- "crm.deal", "crm.contact", "crm.company", "tasks.task", { "crm.item", entityTypeId = N }), every
-- (seconds between passes, 300), overlap (seconds re-read before the checkpoint, 120), lookback
-- (how far back the first pass looks, every + overlap), sweep (false, or seconds between ID
-- sweeps), client (the router's by default), host (b24.host under b24 serve: the host state and a
-- job), state (a state object of one's own), domain (the portal's, from the client's URL),
-- member_id, ttl and max (the memory state's marks: the router's dedup_ttl and dedup_max), skew
-- (seconds the portal's web and database clocks may differ, 1: a row modified up to that long
-- before its last handled delivery's ts is committed again),
-- shared_dict (inside nginx: the lua_shared_dict of a state every worker shares).
-- tokens: the router's token or tokens. Raises on misuse.
function _M.attach(router, opts, tokens)
   if type(opts) ~= "table" then error("bad option 'reconcile' (a table expected)", 3) end
   local client = opts.client or router.client
   if type(client) ~= "table" or type(client._runner) ~= "function" then
      error("bad option 'reconcile' (a bitrix24.client is needed: client = … on the router or in reconcile)", 3)
   end
   local kinds, entities = {}, {}
   for _, entry in ipairs(opts) do
      local kind = kind_of(entry)
      if entities[kind.entity] then
         error("bad option 'reconcile' (" .. kind.entity .. " given twice)", 3)
      end
      entities[kind.entity] = true
      kinds[#kinds + 1] = kind
   end
   if #kinds == 0 then error("bad option 'reconcile' (no entity to reconcile)", 3) end
   local function seconds(name, default)
      local v = opts[name]
      if v == nil then return default end
      if type(v) ~= "number" or v < 0 or v ~= v or v == 1 / 0 then
         error("bad option 'reconcile." .. name .. "' (a number of seconds expected)", 4)
      end
      return v
   end
   local every = seconds("every", EVERY)
   if every <= 0 then error("bad option 'reconcile.every' (seconds > 0 expected)", 3) end
   local overlap = seconds("overlap", OVERLAP)
   local skew = seconds("skew", 1)
   local sweep = opts.sweep
   if sweep ~= nil and sweep ~= false and (type(sweep) ~= "number" or sweep <= 0) then
      error("bad option 'reconcile.sweep' (false or seconds > 0 expected)", 3)
   end
   local domain = opts.domain or domain_of(client)
   if type(domain) ~= "string" or domain == "" then
      error("bad option 'reconcile.domain' (the portal's domain: the client's URL has none)", 3)
   end
   local host = opts.host
   local state = opts.state
   if state == nil then
      if host ~= nil then
         state = _M.host_state(host)
      elseif opts.shared_dict ~= nil then
         state = shared_of(opts.shared_dict, opts.ttl or router.dedup_ttl)
      else
         state = _M.memory_state{ ttl = opts.ttl or router.dedup_ttl, max = opts.max or router.dedup_max }
      end
   end
   local self = setmetatable({
      router = router, client = client, runner = client:_runner(), kinds = kinds, state = state, host = host,
      every = every, overlap = overlap, skew = skew, lookback = seconds("lookback", every + overlap),
      sweep = sweep or nil,
      domain = string_lower(domain), member_id = opts.member_id, tokens = tokens,
      prefix = "bitrix24.reconcile|" .. string_lower(domain) .. "|",
      clock = client.now or os_time, seen = {}, totals = {}, runs = 0, failures = 0, handler_requests = 0,
   }, reconciler_mt)
   if sweep then
      for _, kind in ipairs(kinds) do self.seen[kind.entity] = {} end
   end
   if host ~= nil and opts.state == nil then
      -- the script loads in every state of b24 serve: the job is registered in each (the host
      -- runs it in its jobs thread only)
      host.job(opts.job or _M.JOB, every, function() self:pass() end)
      self.job = opts.job or _M.JOB
   end
   return self
end

_M.entity_of = entity_of

return _M
