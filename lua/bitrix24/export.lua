-- bitrix24.export: the list/all engine of bitrix24.client. A list method's rows are read by a
-- keyset scan (start=-1, >ID, chained $result references inside batches, several ID ranges at
-- once) when the caller's order allows it, by offset paging otherwise. It reaches the portal
-- only through a runner, the small interface the client offers (client:_runner()):
--   runner.batches(list) → outcomes   list[i] = { {method, params}, … } (at most 50 reads), each
--                                     sent as one batch, all at once within the client's limiter,
--                                     `parallel` and retries; outcomes[i] = { results, errors, meta }
--                                     (as client:batch gives them, meta[j] = { total, next } of
--                                     sub-call j when the portal sent them) or { err = bitrix24.Error }
--   runner.request(method, params) → envelope | nil, err      (client:request)
--   runner.backoff(n) → seconds before retry n;  runner.sleep(s)
--   runner.attempts (tries per request), runner.parallel (the default of opts.parallel)
-- The runner waits out the operating limit itself: a sub-call blocked by OPERATION_TIME_LIMIT is
-- sent again once the block lifts, the rest of its batch kept, so a chain resumes where it
-- stopped. One that still comes back blocked outlasted the client's max_wait: the export ends
-- with it rather than meet the same block again.
--
-- Paging as the platform does it (yuliai/bitrix-modules, platform 26.250.100):
--   rest/classes/general/rest.php    CRestServer::processCall: start = intval(query.start);
--                                    IRestService::getNavData: start >= 0 → page intval(start/50)+1
--                                    (CDBResult) or offset = start (ORM); start < 0 → the first 50
--                                    rows, nothing counted (no next; total absent or 0)
--   rest/lib/engine/restmanager.php  controller methods (crm.item.list, tasks.task.list): page
--                                    intval(start/50)+1, start = -1 counts nothing
--   main/classes/general/dbresult.php calculatePageNumber: a page past the last is page 1 again
-- So the offset pager asks only for multiples of 50 (a start of 75 reads rows 50..99 on most
-- methods, 75..124 on ORM ones), never follows `next` (offset + rows, not always a multiple of
-- 50) and takes every row once by its ID whatever page it comes back on.

local ipairs = ipairs
local tonumber = tonumber
local tostring = tostring
local setmetatable = setmetatable
local string_upper = string.upper
local math_floor = math.floor
local math_ceil = math.ceil
local math_min = math.min
local math_max = math.max
local math_huge = math.huge
local os_time = os.time

local PAGE = 50      -- rows per page of a list method
local BATCH_MAX = 50 -- sub-calls per batch

local _M = {}

local plans = require "bitrix24.listplan"
local LIST_SHAPES = plans.LIST_SHAPES
local id_of, fmt_id, export_error, rows_of = plans.id_of, plans.fmt_id, plans.error, plans.rows_of
local make_plan = plans.new
_M.LIST_SHAPES = LIST_SHAPES

-- A sub-call error worth sending again after a backoff (OPERATION_TIME_LIMIT is not: the runner
-- has waited it out as long as it may).
local function retry_later(e)
   return e.retryable and string_upper(tostring(e.code)) ~= "OPERATION_TIME_LIMIT"
end

-- Runs reads (a list of {method, params}) in batches of 50, up to `parallel` batches at once,
-- sending the sub-calls that failed with a retryable error again after a backoff:
-- results[i], meta[i] | nil, err.
local function run_reads(runner, cmds, parallel)
   local results, metas = {}, {}
   local todo, failures, last_err = {}, 0, nil
   for i = 1, #cmds do todo[i] = i end
   while #todo > 0 do
      local again = {}
      for from = 1, #todo, BATCH_MAX * parallel do
         local batches, firsts = {}, {}
         for first = from, math_min(#todo, from + BATCH_MAX * parallel - 1), BATCH_MAX do
            local batch = {}
            for i = first, math_min(#todo, first + BATCH_MAX - 1) do batch[#batch + 1] = cmds[todo[i]] end
            batches[#batches + 1] = batch
            firsts[#firsts + 1] = first
         end
         for b, got in ipairs(runner.batches(batches)) do
            if got.err then return nil, got.err end
            for i = 1, #batches[b] do
               local at = todo[firsts[b] + i - 1]
               local e = got.errors and got.errors[i]
               if e then
                  if not retry_later(e) then return nil, e end
                  again[#again + 1], last_err = at, e
               else
                  results[at] = got.results[i]
                  metas[at] = got.meta and got.meta[i] or nil
               end
            end
         end
      end
      if #again > 0 then
         failures = failures + 1
         if failures >= runner.attempts then return nil, last_err end
         runner.sleep(runner.backoff(failures))
      end
      todo = again
   end
   return results, metas
end

-- A keyset scan: chains over ID ranges (lo, hi], each advancing by batches of sub-calls that
-- reference the previous sub-call's 50th row.
local Keyset = {}
local keyset_mt = { __index = Keyset }

function Keyset:params(lo, hi, ref, desc)
   local key = self.shape.key
   local f = {}
   if ref then f[">" .. key] = ref elseif lo then f[">" .. key] = fmt_id(lo) end
   if hi then f["<=" .. key] = fmt_id(hi) end
   local select = (desc or self.id_only) and { key } or self.plan.select
   return self.plan:query(f, { key, desc and "DESC" or "ASC" }, -1, select)
end

-- The batch commands advancing chain c by n sub-calls.
function Keyset:commands(c, n)
   local cmds = {}
   local wrap = self.shape.wrapper and ("[" .. self.shape.wrapper .. "]") or ""
   for i = 1, n do
      local ref
      if i > 1 then ref = "$result[c" .. (i - 2) .. "]" .. wrap .. "[" .. (PAGE - 1) .. "][" .. self.shape.id .. "]" end
      cmds[i] = { self.method, self:params(c.lo, c.hi, ref) }
   end
   return cmds
end

-- Takes a chain's batch results: appends new rows to out, advances c.lo, marks c.done. A row
-- without an ID, out of ID order or outside the range the sub-call asked for means the method
-- does not page as its shape says: the scan stops with an error rather than skip or repeat rows.
function Keyset:absorb(c, n, results, errors, out)
   local shape = self.shape
   for i = 1, n do
      if errors and errors[i] then
         c.err = errors[i]
         return
      end
      local rows, rerr = rows_of(results[i], shape, self.method)
      if not rows then c.fatal = rerr; return end
      for _, row in ipairs(rows) do
         local id = id_of(row, shape.id)
         if not id then
            c.fatal = export_error("export_no_id", self.method, "a row has no " .. shape.id ..
               " field: pass opts.id (and opts.key, opts.wrapper) for this method")
            return
         end
         if c.lo and id == c.lo then
            id = nil -- the row just taken, once more (a join the method did not make distinct)
         elseif (c.lo and id < c.lo) or (c.hi and id > c.hi) then
            c.fatal = export_error("export_order", self.method, "rows did not come in ascending " .. shape.key ..
               " order within the range asked for: the method ignored the filter or order of the keyset scan" ..
               " (opts.keyset = false pages by offset)")
            return
         end
         if id then
            out[#out + 1] = row
            c.lo = id
         end
      end
      if #rows < PAGE then c.done = true; return end
   end
   if c.hi and c.lo and c.lo >= c.hi then c.done = true end
end

-- Sub-calls for the next batch of a chain: as many as the range should still hold.
function Keyset:width(c)
   if not c.hi or not c.lo or not self.density then return BATCH_MAX end
   local expect = (c.hi - c.lo) * self.density
   return math_max(1, math_min(BATCH_MAX, math_ceil(expect / PAGE)))
end

-- The first request: the first page (real rows) and the highest id, in one batch.
function Keyset:probe(out)
   local cmds = { { self.method, self:params(self.lo, self.hi) } }
   if self.mode == "any" then cmds[2] = { self.method, self:params(self.lo, self.hi, nil, true) } end
   local got = self.runner.batches({ cmds })[1]
   if got.err then return nil, got.err end
   local results, errors = got.results, got.errors
   if errors and errors[1] then return nil, errors[1] end
   local first = { lo = self.lo, hi = self.hi }
   self:absorb(first, 1, results, nil, out)
   if first.fatal then return nil, first.fatal end
   if first.done or self.mode == "asc" then
      self.chains = first.done and {} or { { lo = first.lo, hi = self.hi } }
      return true
   end
   local top = (rows_of(results[2], self.shape, self.method) or {})[1]
   local hi = id_of(top, self.shape.id)
   if errors and errors[2] or not hi then
      self.chains = { { lo = first.lo, hi = self.hi } }
      return true
   end
   if self.hi then hi = math_min(hi, self.hi) end
   local lo = first.lo
   local low = id_of(out[1], self.shape.id) or lo
   self.density = math_min(1, (PAGE - 1) / math_max(1, lo - low))
   local expect = (hi - lo) * self.density
   self.estimate = #out + expect
   local k = math_max(1, math_min(self.parallel, math_ceil(expect / (PAGE * BATCH_MAX))))
   self.chains = {}
   if hi <= lo then return true end
   local step = (hi - lo) / k
   local from = lo
   for i = 1, k do
      local to = (i == k) and hi or math_floor(lo + step * i)
      if to > from then self.chains[#self.chains + 1] = { lo = from, hi = to } end
      from = to
   end
   return true
end

-- One round: a batch per unfinished chain, run at once. Appends rows to out; false when done.
function Keyset:round(out)
   if not self.chains then return self:probe(out) end
   local active = {}
   for _, c in ipairs(self.chains) do
      if not c.done then active[#active + 1] = c end
   end
   if #active == 0 then return false end
   local runner = self.runner
   local batches = {}
   for i, c in ipairs(active) do
      c.n = self:width(c)
      batches[i] = self:commands(c, c.n)
   end
   local outcomes = runner.batches(batches)
   for i, c in ipairs(active) do
      local got = outcomes[i]
      if got.err then return nil, got.err end
      c.err = nil
      self:absorb(c, c.n, got.results, got.errors, out)
      if c.fatal then return nil, c.fatal end
      if c.err then
         c.failures = (c.failures or 0) + 1
         if not retry_later(c.err) or c.failures >= runner.attempts then return nil, c.err end
         self.pause = math_max(self.pause or 0, runner.backoff(c.failures))
      else
         c.failures = 0
      end
   end
   if self.pause then runner.sleep(self.pause); self.pause = nil end
   return true
end

local function keyset(runner, plan, mode, parallel, id_only)
   return setmetatable({ runner = runner, method = plan.method, shape = plan.shape, plan = plan,
                         lo = plan.lo, hi = plan.hi, mode = mode, parallel = parallel, id_only = id_only },
                       keyset_mt)
end

-- Offset paging for orders the keyset scan cannot follow. Pages are read at multiples of 50,
-- up to `parallel` batches of 50 pages at once, until the offset passes the total the latest
-- pages reported (rows inserted meanwhile push rows past the first total). A row already taken
-- (a shift brought it back) is dropped by its ID. Then, unless told not to, a keyset pass over
-- the IDs alone finds rows the pages skipped (a row deleted or moved before the offset pulls the
-- next ones back past it) and reads them by ID: they come last, after the rows in order.
local Offset = {}
local offset_mt = { __index = Offset }

-- Appends the rows not taken yet; returns how many were new, or nil, err.
function Offset:take(rows, out)
   local fresh = 0
   for _, row in ipairs(rows) do
      local id = id_of(row, self.shape.id)
      if id then
         local k = fmt_id(id)
         if not self.seen[k] then
            self.seen[k] = true
            out[#out + 1] = row
            fresh = fresh + 1
         end
      elseif self.dedup then
         return nil, export_error("export_no_id", self.method, "a row has no " .. self.shape.id ..
            " field to tell rows apart: pass opts.id (or opts.keyset = false) for this method")
      else
         out[#out + 1] = row
         fresh = fresh + 1
      end
   end
   return fresh
end

function Offset:page(start)
   return { self.method, self.plan:query(nil, nil, start, self.plan.select, true) }
end

function Offset:round(out)
   local runner = self.runner
   if not self.pos then
      local first = self:page(0)
      local env, err = runner.request(first[1], first[2])
      if not env then return nil, err end
      local rows, rerr = rows_of(env.result, self.shape, self.method)
      if not rows then return nil, rerr end
      local ok, terr = self:take(rows, out)
      if not ok then return nil, terr end
      -- no total (a method that does not count): pages until a short one
      self.counted = tonumber(env.total) ~= nil
      self.total = tonumber(env.total) or (#rows >= PAGE and math_huge or #rows)
      if self.counted then self.estimate = self.total end
      self.pos = PAGE
      return true
   end
   if self.pos < self.total then return self:pages(out) end
   if self.check then return self:verify(out) end
   return false
end

-- The next pages from self.pos, up to `parallel` batches of them.
function Offset:pages(out)
   local cmds = {}
   local last = self.counted and math_min(self.total, self.pos + PAGE * BATCH_MAX * self.parallel) or
      self.pos + PAGE * BATCH_MAX
   for o = self.pos, last - 1, PAGE do cmds[#cmds + 1] = self:page(o) end
   local results, metas = run_reads(self.runner, cmds, self.parallel)
   if not results then return nil, metas end
   local total, fresh = nil, 0
   for i = 1, #cmds do
      local rows, rerr = rows_of(results[i], self.shape, self.method)
      if not rows then return nil, rerr end
      local new, err = self:take(rows, out)
      if not new then return nil, err end
      fresh = fresh + new
      local t = metas[i] and tonumber(metas[i].total)
      if t then total = math_max(total or 0, t) end
      -- without a count the first short page is the end (a page past it may be page 1 again)
      if not self.counted and #rows < PAGE then self.total = 0; break end
   end
   self.pos = self.pos + PAGE * #cmds
   if not self.counted and fresh == 0 then self.total = 0 end -- only rows taken before: no end in sight
   -- the count the latest pages saw: rows inserted meanwhile moved the end further
   if total and self.counted then
      self.total = total
      self.estimate = math_max(self.estimate or 0, total)
   end
   return true
end

-- The verification pass: the keyset scan of IDs, then the rows it found that were not taken.
function Offset:verify(out)
   local ids = {}
   local more, err = self.check:round(ids)
   if more == nil then return nil, err end
   for _, row in ipairs(ids) do
      local k = fmt_id(id_of(row, self.shape.id))
      if not self.seen[k] then self.missing[#self.missing + 1] = k end
   end
   if more then return true end
   self.check = nil
   if #self.missing == 0 then return false end
   local cmds = {}
   for i, k in ipairs(self.missing) do
      cmds[i] = { self.method, self.plan:query({ [self.shape.key] = k }, nil, nil, self.plan.select) }
   end
   local results, rerr = run_reads(self.runner, cmds, self.parallel)
   if not results then return nil, rerr end
   for i = 1, #cmds do
      local rows, rerr2 = rows_of(results[i], self.shape, self.method)
      if not rows then return nil, rerr2 end
      local ok, terr = self:take(rows, out)
      if not ok then return nil, terr end
   end
   return false
end

-- The scanner for a list method: keyset when the order allows, offset paging otherwise. Its
-- round(out) appends the next rows to out and returns true (more may follow), false (done) or
-- nil, err; scanner.estimate is the expected row count once known. Raises when the order cannot
-- be sent to the method (user.get sorts by one field).
function _M.scanner(runner, method, params, opts)
   opts = opts or {}
   local plan = make_plan(method, params or {}, opts)
   local parallel = opts.parallel or runner.parallel
   if plan.mode then return keyset(runner, plan, plan.mode, parallel) end
   local scan = setmetatable({ runner = runner, method = method, shape = plan.shape, plan = plan,
                               parallel = parallel, seen = {}, missing = {},
                               dedup = opts.keyset ~= false }, offset_mt)
   if plan.bounded then scan.check = keyset(runner, plan, "any", parallel, true) end
   return scan
end

-- An estimate as a whole number of rows (an integer on Lua 5.4), nil when unknown.
local function whole(n)
   n = tonumber(n)
   if not n or n ~= n or n == math_huge or n < 0 then return nil end
   return math_floor(n + 0.5)
end

-- The progress reporter of an export: calls on_progress(rows, estimate, info) with the rows so
-- far, the estimated total (an integer or nil; at the end, the rows taken) and info { done,
-- elapsed, rate (rows/s measured since the start), eta (seconds at that rate, nil when unknown;
-- 0 at the end) }.
local function reporter(on_progress, scan, now)
   local t0 = now()
   return function(count, done)
      local est = whole(scan.estimate)
      if done then est = count elseif est and est < count then est = count end
      local elapsed = now() - t0
      local rate = elapsed > 0 and count / elapsed or nil
      local eta
      if done then eta = 0 elseif est and rate and rate > 0 then eta = (est - count) / rate end
      on_progress(count, est, { done = done, elapsed = elapsed, rate = rate, eta = eta })
   end
end

-- An iterator over the rows, fetched a round at a time as they are needed; a failure ends the
-- loop with (false, err). opts: parallel, keyset = false, verify = false, id/key/wrapper/sort,
-- on_progress(rows, estimate, info) after each round and once more, with info.done, when the
-- last round is in (not after a failure).
function _M.list(runner, method, params, opts)
   local scan = _M.scanner(runner, method, params, opts)
   local progress = opts and opts.on_progress
   if progress then progress = reporter(progress, scan, runner.now or os_time) end
   local buf, pos, n, count, finished = {}, 1, 0, 0, false
   return function()
      while pos > n do
         if finished then return nil end
         buf, pos = {}, 1
         local more, err = scan:round(buf)
         n = #buf
         if more == nil then
            finished = true
            return false, err
         end
         if not more then finished = true end
         count = count + n
         if progress then progress(count, finished) end
      end
      local row = buf[pos]
      buf[pos] = nil
      pos = pos + 1
      return row
   end
end

-- Every row in one array | nil, err.
function _M.all(runner, method, params, opts)
   local out = {}
   for row, err in _M.list(runner, method, params, opts) do
      if not row then return nil, err end
      out[#out + 1] = row
   end
   return out
end

return _M
