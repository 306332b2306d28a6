-- For spec/host_tokens_spec.lua: applies a list of calls to a b24.host.tokens store and gives
-- back what each returned, so `b24 run` scripts and a `b24 serve` handler answer alike.
--   ops: { { "get", key }, { "put", record }, { "swap", member_id, version, fields }, … }
--     and two loops a refresh makes:
--     { "lease_until", member_id, holder, seconds }: lease until taken (a wall-clock second
--       bound on the wait); { true, calls made }
--     { "swap_loop", member_id, n, tag }: n times get, then swap (scope + 1, access_token tag)
--       with a retry on false; { n, retries }
--     { "fill", prefix, n }: put n portals prefix .. i; { portals stored, the first err }
--     and { "execute", command }: os.execute(command) between calls (another process's doing)
--   result per op: { n = count of values, r = { values, JSON null for nil } } or { error = msg }
local cjson = require("cjson.safe").new()

local unpack = table.unpack or unpack -- luacheck: ignore 143

local null = cjson.null

-- JSON null (from a spec's arguments) as nil, so a spec can send a missing argument
local function args_of(op)
   local a = {}
   for i = 2, #op do
      if op[i] ~= null then a[i - 1] = op[i] end
   end
   return a, #op - 1
end

-- Leases until taken; the number of calls made.
local function lease_until(store, member_id, holder, seconds)
   local deadline = os.time() + 10
   local calls = 0
   repeat
      calls = calls + 1
      local ok, err = store:lease(member_id, holder, seconds)
      if ok then return true, calls end
      if ok == nil then return nil, err end
   until os.time() > deadline
   return false, calls
end

-- n compare-and-set increments of scope; n and the retries made.
local function swap_loop(store, member_id, n, tag)
   local done, retries = 0, 0
   while done < n do
      local rec = assert(store:get(member_id))
      local v, current = store:swap(member_id, rec.version,
         { scope = tostring(tonumber(rec.scope) + 1), access_token = tag })
      if v then
         done = done + 1
      elseif v == false then
         assert(current >= rec.version, "the version went back")
         retries = retries + 1
      else
         error(current)
      end
   end
   return done, retries
end

local function execute(_, command)
   return os.execute(command)
end

-- Puts n portals; how many were stored, and the first refusal's message.
local function fill(store, prefix, n)
   local stored, first_err = 0, nil
   for i = 1, n do
      local v, err = store:put{ member_id = ("%s%06d"):format(prefix, i) }
      if v then stored = stored + 1 else first_err = first_err or err end
   end
   return stored, first_err
end

local loops = { lease_until = lease_until, swap_loop = swap_loop, execute = execute, fill = fill }

return function(store, ops)
   local out = {}
   for i, op in ipairs(ops) do
      local a, n = args_of(op)
      local fn = loops[op[1]]
      local res = table.pack(pcall(function()
         if fn then return fn(store, unpack(a, 1, n)) end
         return store[op[1]](store, unpack(a, 1, n))
      end))
      if res[1] then
         local r = {}
         for k = 2, res.n do r[k - 1] = res[k] == nil and null or res[k] end
         out[i] = { n = res.n - 1, r = r }
      else
         out[i] = { error = tostring(res[2]) }
      end
   end
   return out
end
