-- bitrix24.dedup: the in-memory deduplication store of one Lua state, with work-queue
-- semantics (design.md "Deduplication"): what bitrix24.router uses by default (handle, and
-- bitrix24.ngx per worker). A host may give routers its own store with the same begin/finish
-- (b24 serve: one process-wide store in C; nginx: a lua_shared_dict).
local setmetatable = setmetatable

local _M = {}
local mt = { __index = _M }

-- Drops expired keys from the front of the expiry-ordered list, and the oldest while over size.
local function prune(store, now)
   local order, seen = store.seen_order, store.seen
   local head = store.seen_head
   while order[head] do
      local entry = order[head]
      local expiry = seen[entry[1]]
      if expiry ~= entry[2] then
         -- superseded (processed again later) or already removed: only the list entry goes
         order[head] = nil
         head = head + 1
      elseif expiry <= now or store.seen_count > store.max then
         seen[entry[1]] = nil
         store.seen_count = store.seen_count - 1
         order[head] = nil
         head = head + 1
      else
         break
      end
   end
   store.seen_head = head
end

-- The in-memory store of one Lua state (handle; bitrix24.ngx per worker). "duplicate" keys
-- (adds, deletes) are remembered while they run and dedup_ttl after; "merge" keys count the
-- deliveries since their run started: 1 running, 2 running with one more run asked for,
-- more merged into that one.
-- new(max) -> a store remembering at most max "duplicate" keys past their runs.
function _M.new(max)
   return setmetatable({ seen = {}, seen_order = {}, seen_head = 1, seen_tail = 0, seen_count = 0,
                         running = {}, latest = {}, max = max }, mt)
end

-- begin(key, dedup, now, ttl, event): "run" (the caller runs the handlers, then calls finish),
-- "duplicate", "merged" (into a run asked for already) or "rerun" (the run going on will run
-- once more after it ends, on this event).
function _M:begin(key, dedup, now, _, event)
   if dedup == "duplicate" then
      prune(self, now)
      local state = self.seen[key]
      if state == true or (state and state > now) then return "duplicate" end
      if state == nil then self.seen_count = self.seen_count + 1 end
      self.seen[key] = true
      return "run"
   end
   local n = (self.running[key] or 0) + 1
   self.running[key] = n
   if n == 1 then return "run" end
   self.latest[key] = event
   if n == 2 then return "rerun" end
   return "merged"
end

-- finish(key, dedup, ok, now, ttl): a run ended; true when the caller must run once more (a
-- delivery came while it ran), with the latest such delivery's event when the store has it.
function _M:finish(key, dedup, ok, now, ttl)
   if dedup == "duplicate" then
      if ok then
         local expiry = now + ttl
         if self.seen[key] == nil then self.seen_count = self.seen_count + 1 end
         self.seen[key] = expiry
         self.seen_tail = self.seen_tail + 1
         self.seen_order[self.seen_tail] = { key, expiry }
      elseif self.seen[key] ~= nil then
         self.seen[key] = nil
         self.seen_count = self.seen_count - 1
      end
      return false
   end
   local n = self.running[key]
   local latest = self.latest[key]
   self.latest[key] = nil
   if n == nil or n <= 1 then
      self.running[key] = nil
      return false
   end
   self.running[key] = 1
   return true, latest
end

return _M
