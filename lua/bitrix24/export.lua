-- bitrix24.export: the list/all engine of bitrix24.client. A list method's rows are read by a
-- keyset scan (start=-1, >ID, chained $result references inside batches, several ID ranges at
-- once) when the caller's order allows it, by offset paging otherwise. It reaches the portal
-- only through a runner, the small interface the client offers (client:_runner()):
--   runner.batches(list) → outcomes   list[i] = { {method, params}, … } (at most 50 reads), each
--                                     sent as one batch, all at once within the client's limiter,
--                                     `parallel` and retries; outcomes[i] = { results, errors }
--                                     (as client:batch gives them) or { err = bitrix24.Error }
--   runner.request(method, params) → envelope | nil, err      (client:request)
--   runner.backoff(n) → seconds before retry n;  runner.sleep(s)
--   runner.attempts (tries per request), runner.parallel (the default of opts.parallel)
local type = type
local pairs = pairs
local ipairs = ipairs
local tonumber = tonumber
local setmetatable = setmetatable
local next = next
local string_format = string.format
local string_lower = string.lower
local string_upper = string.upper
local string_match = string.match
local math_floor = math.floor
local math_ceil = math.ceil
local math_min = math.min
local math_max = math.max
local math_huge = math.huge

local PAGE = 50      -- rows per page of a list method
local BATCH_MAX = 50 -- sub-calls per batch

local _M = {}

-- Rows of list methods: the wrapper key in result, the id field of a row, the filter/order key.
local LIST_SHAPES = {
   ["crm.item.list"] = { wrapper = "items", id = "id", key = "id" },
   ["tasks.task.list"] = { wrapper = "tasks", id = "id", key = "ID" },
}
_M.LIST_SHAPES = LIST_SHAPES

local function copy(t)
   local out = {}
   if type(t) == "table" then for k, v in pairs(t) do out[k] = v end end
   return out
end

local function id_of(row, field)
   if type(row) ~= "table" then return nil end
   return tonumber(row[field])
end

local function rows_of(result, wrapper)
   if wrapper then result = type(result) == "table" and result[wrapper] or nil end
   if type(result) ~= "table" then return {} end
   return result
end

-- How the caller's order and filter admit the keyset scan: "any" (no order: ranges may run in
-- parallel), "asc" (ID ascending: one chain, rows in order) or nil (offset paging).
local function keyset_mode(params, shape)
   local order = params.order
   if order == nil or (type(order) == "table" and next(order) == nil) then return "any" end
   if type(order) ~= "table" then return nil end
   local only, dir
   for k, v in pairs(order) do
      if only then return nil end
      only, dir = k, v
   end
   if type(only) == "string" and string_upper(only) == string_upper(shape.key) and
      type(dir) == "string" and string_upper(dir) == "ASC" then
      return "asc"
   end
   return nil
end

-- Takes the caller's ID bounds out of a filter: filter without them, lo (exclusive), hi (inclusive).
local function split_bounds(filter, key)
   local out, lo, hi = {}, nil, nil
   local ukey = string_upper(key)
   for k, v in pairs(filter) do
      local op, name = nil, nil
      if type(k) == "string" then op, name = string_match(k, "^([<>]=?)(.*)$") end
      local n = tonumber(v)
      if op and string_upper(name) == ukey and n then
         if op == ">" then lo = math_max(lo or -math_huge, math_floor(n))
         elseif op == ">=" then lo = math_max(lo or -math_huge, math_ceil(n) - 1)
         elseif op == "<" then hi = math_min(hi or math_huge, math_ceil(n) - 1)
         else hi = math_min(hi or math_huge, math_floor(n)) end
      else
         out[k] = v
      end
   end
   return out, lo, hi
end

local function with_id_select(select, id)
   if type(select) ~= "table" or #select == 0 then return select end
   for _, name in ipairs(select) do
      if name == "*" or (type(name) == "string" and string_upper(name) == string_upper(id)) then return select end
   end
   local out = copy(select)
   out[#out + 1] = id
   return out
end

local function fmt_id(n)
   return string_format("%d", n)
end

-- A keyset scan: chains over ID ranges (lo, hi], each advancing by batches of sub-calls that
-- reference the previous sub-call's 50th row.
local Keyset = {}
local keyset_mt = { __index = Keyset }

function Keyset:params(lo, hi, ref, desc)
   local p = copy(self.base)
   local f = copy(self.filter)
   local key = self.shape.key
   if ref then f[">" .. key] = ref elseif lo then f[">" .. key] = fmt_id(lo) end
   if hi then f["<=" .. key] = fmt_id(hi) end
   p.filter = next(f) and f or nil
   p.order = { [key] = desc and "DESC" or "ASC" }
   p.start = -1
   if desc then p.select = { self.shape.id } end
   return p
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

-- Takes a chain's batch results: appends new rows to out, advances c.lo, marks c.done.
function Keyset:absorb(c, n, results, errors, out)
   for i = 1, n do
      if errors and errors[i] then
         c.err = errors[i]
         return
      end
      local rows = rows_of(results[i], self.shape.wrapper)
      for _, row in ipairs(rows) do
         local id = id_of(row, self.shape.id)
         if id and (not c.lo or id > c.lo) and (not c.hi or id <= c.hi) then
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
   if first.done or self.mode == "asc" then
      first.done = first.done or false
      self.chains = first.done and {} or { { lo = first.lo, hi = self.hi } }
      return true
   end
   local top = rows_of(results[2], self.shape.wrapper)[1]
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
      if c.err then
         c.failures = (c.failures or 0) + 1
         if not c.err.retryable or c.failures >= runner.attempts then return nil, c.err end
         self.pause = math_max(self.pause or 0, runner.backoff(c.failures))
      else
         c.failures = 0
      end
   end
   if self.pause then runner.sleep(self.pause); self.pause = nil end
   return true
end

-- Offset paging for orders the keyset scan cannot follow: the first page gives the total, the
-- rest go as batches of 50 offsets, several at once; rows come in the caller's order.
local Offset = {}
local offset_mt = { __index = Offset }

function Offset:round(out)
   local runner = self.runner
   if not self.total then
      local p = copy(self.base)
      p.start = 0
      local env, err = runner.request(self.method, p)
      if not env then return nil, err end
      for _, row in ipairs(rows_of(env.result, self.shape.wrapper)) do out[#out + 1] = row end
      self.total = tonumber(env.total) or #out
      self.estimate = self.total
      self.next = tonumber(env.next)
      return true
   end
   if not self.next or self.next >= self.total then return false end
   local offsets = {}
   local span = PAGE * BATCH_MAX * self.parallel
   for o = self.next, math_min(self.total, self.next + span) - 1, PAGE do offsets[#offsets + 1] = o end
   local pages, failures = {}, 0
   local todo = offsets
   while #todo > 0 do
      local batches, firsts = {}, {}
      for first = 1, #todo, BATCH_MAX do
         local cmds = {}
         for i = first, math_min(#todo, first + BATCH_MAX - 1) do
            local p = copy(self.base)
            p.start = todo[i]
            cmds[#cmds + 1] = { self.method, p }
         end
         batches[#batches + 1] = cmds
         firsts[#firsts + 1] = first
      end
      local outcomes = runner.batches(batches)
      local again = {}
      for b, got in ipairs(outcomes) do
         if got.err then return nil, got.err end
         local results, errors = got.results, got.errors
         for i = 1, #batches[b] do
            local o = todo[firsts[b] + i - 1]
            if errors and errors[i] then
               if not errors[i].retryable then return nil, errors[i] end
               again[#again + 1] = o
               self.last_err = errors[i]
            else
               pages[o] = rows_of(results[i], self.shape.wrapper)
            end
         end
      end
      if #again > 0 then
         failures = failures + 1
         if failures >= runner.attempts then return nil, self.last_err end
         runner.sleep(runner.backoff(failures))
      end
      todo = again
   end
   for _, o in ipairs(offsets) do
      for _, row in ipairs(pages[o]) do out[#out + 1] = row end
   end
   self.next = offsets[#offsets] + PAGE
   return true
end

-- The scanner for a list method: keyset when the order allows, offset paging otherwise.

-- The scanner for a list method: keyset when the order allows, offset paging otherwise. Its
-- round(out) appends the next rows to out and returns true (more may follow), false (done) or
-- nil, err; scanner.estimate is the expected row count once known.
function _M.scanner(runner, method, params, opts)
   opts = opts or {}
   params = params or {}
   local shape = LIST_SHAPES[string_lower(method)] or {}
   shape = { wrapper = opts.wrapper or shape.wrapper, id = opts.id or shape.id or "ID",
             key = opts.key or opts.id or shape.key or "ID" }
   local base = copy(params)
   base.start = nil
   local mode = opts.keyset ~= false and keyset_mode(params, shape) or nil
   local parallel = opts.parallel or runner.parallel
   if mode then
      base.order = nil
      local filter, lo, hi = split_bounds(type(params.filter) == "table" and params.filter or {}, shape.key)
      base.filter = nil
      base.select = with_id_select(params.select, shape.id)
      return setmetatable({ runner = runner, method = method, shape = shape, base = base, filter = filter,
                            lo = lo, hi = hi, mode = mode, parallel = parallel }, keyset_mt)
   end
   return setmetatable({ runner = runner, method = method, shape = shape, base = base,
                         parallel = parallel }, offset_mt)
end

-- An iterator over the rows, fetched a round at a time as they are needed; a failure ends the
-- loop with (false, err). opts: parallel, keyset = false, id/key/wrapper, on_progress(rows,
-- estimate) after each round.
function _M.list(runner, method, params, opts)
   local scan = _M.scanner(runner, method, params, opts)
   local progress = opts and opts.on_progress
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
         if progress then progress(count, scan.estimate) end
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
