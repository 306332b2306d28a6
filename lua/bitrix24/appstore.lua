-- bitrix24.appstore: where bitrix24.app keeps each installed portal: its tokens, endpoints and
-- application token, and the refresh lease. The memory store here serves a script (one
-- process); under `b24 serve`, require("b24.host").tokens() gives the same interface over the
-- inbox's SQLite file (or a process-wide store), so workers and processes share portals and
-- leases. Every store has:
--   store:get(key) → record | nil                 key: a member_id or a domain
--   store:put(record) → version | nil, err        upsert by record.member_id
--   store:swap(member_id, version, fields) → new_version | false, current_version
--                                                 compare-and-set on the record's version
--   store:delete(member_id) → true                and its lease
--   store:list() → { record, … }                  ordered by member_id
--   store:lease(member_id, holder, seconds) → true | false, holder, expires_at
--   store:release(member_id, holder) → true
-- A record: member_id, domain, client_id, client_endpoint, server_endpoint, access_token,
-- refresh_token, expires_at (unix seconds), application_token, scope, user_id, version,
-- updated_at. Records handed out are copies: changing one changes nothing stored.
local type = type
local pairs = pairs
local setmetatable = setmetatable
local string_lower = string.lower
local table_sort = table.sort
local os_time = os.time

local _M = {}

local FIELDS = {
   member_id = "string", domain = "string", client_id = "string", client_endpoint = "string",
   server_endpoint = "string", access_token = "string", refresh_token = "string", expires_at = "number",
   application_token = "string", scope = "string", user_id = "string",
}
_M.FIELDS = FIELDS

-- The limits every store keeps (the host's too): a field's length, a key's, the portals held.
local MAX_FIELD, MAX_KEY, MAX_PORTALS = 4096, 255, 100000
_M.MAX_FIELD, _M.MAX_KEY, _M.MAX_PORTALS = MAX_FIELD, MAX_KEY, MAX_PORTALS

-- nil when fields (a record or part of one) may be stored, else what is wrong (never a value).
function _M.check(fields, whole)
   if type(fields) ~= "table" then return "a table of record fields expected" end
   for k, v in pairs(fields) do
      local want = FIELDS[k] -- others are ignored (put(get(key)) works, as in the host's store)
      if want and type(v) ~= want then
         return "record field '" .. k .. "' must be a " .. want
      elseif want == "string" and #v > ((k == "member_id" or k == "domain") and MAX_KEY or MAX_FIELD) then
         return "record field '" .. k .. "' is too long"
      end
   end
   if whole and (type(fields.member_id) ~= "string" or fields.member_id == "") then
      return "a record needs a member_id"
   end
   return nil
end

local function copy(t)
   local out = {}
   for k, v in pairs(t) do out[k] = v end
   return out
end

local Memory = {}
local memory_mt = { __index = Memory }

-- A store in this Lua state's memory. opts.now: the wall clock (os.time by default; leases and
-- updated_at use it).
function _M.memory(opts)
   opts = opts or {}
   return setmetatable({ records = {}, by_domain = {}, leases = {}, n = 0, now = opts.now or os_time }, memory_mt)
end

function Memory:get(key)
   if type(key) ~= "string" then return nil end
   local r = self.records[key] or self.records[self.by_domain[string_lower(key)] or ""]
   return r and copy(r) or nil
end

function Memory:put(record)
   local why = _M.check(record, true)
   if why then return nil, why end
   local old = self.records[record.member_id]
   if not old and self.n >= MAX_PORTALS then return nil, "the store holds " .. MAX_PORTALS .. " portals already" end
   local r = {}
   for k in pairs(FIELDS) do r[k] = record[k] end
   r.version = (old and old.version or 0) + 1
   r.updated_at = self.now()
   if old and old.domain then self.by_domain[string_lower(old.domain)] = nil end
   if r.domain then self.by_domain[string_lower(r.domain)] = r.member_id end
   if not old then self.n = self.n + 1 end
   self.records[r.member_id] = r
   return r.version
end

function Memory:swap(member_id, version, fields)
   local r = self.records[member_id]
   if not r then return false, nil end
   if r.version ~= version then return false, r.version end
   local why = _M.check(fields, false)
   if why then return nil, why end
   if fields.member_id and fields.member_id ~= member_id then return nil, "swap cannot change member_id" end
   if fields.domain and r.domain then self.by_domain[string_lower(r.domain)] = nil end
   for k, v in pairs(fields) do
      if FIELDS[k] then r[k] = v end
   end
   if r.domain then self.by_domain[string_lower(r.domain)] = member_id end
   r.version = r.version + 1
   r.updated_at = self.now()
   return r.version
end

function Memory:delete(member_id)
   local r = self.records[member_id]
   if r then
      if r.domain then self.by_domain[string_lower(r.domain)] = nil end
      self.records[member_id] = nil
      self.n = self.n - 1
   end
   self.leases[member_id] = nil
   return true
end

function Memory:list()
   local out = {}
   for _, r in pairs(self.records) do out[#out + 1] = copy(r) end
   table_sort(out, function(a, b) return a.member_id < b.member_id end)
   return out
end

function Memory:lease(member_id, holder, seconds)
   local t = self.now()
   local l = self.leases[member_id]
   if l and l.holder ~= holder and l.expires_at > t then return false, l.holder, l.expires_at end
   self.leases[member_id] = { holder = holder, expires_at = t + seconds }
   return true
end

function Memory:release(member_id, holder)
   local l = self.leases[member_id]
   if l and l.holder == holder then self.leases[member_id] = nil end
   return true
end

return _M
