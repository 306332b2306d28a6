-- The JSON codec of bitrix24.core against lua-cjson, on real bodies; and what hostile bodies cost.
--   lua5.4 bench/json_bench.lua [ROUNDS]    speed: µs per call and ratios (above 1: the core is faster)
--   luajit bench/json_bench.lua memory      memory: per hostile shape, a fresh process reports
--                                            VmHWM and the Lua heap before and after json_decode
-- Runs under Lua 5.4 and LuaJIT from the repository root (build/5.4 or build/5.1 is found unless
-- package.cpath already reaches bitrix24.core). Timings interleave the contenders and keep the best
-- of ROUNDS (default 7) runs of about 0.1 s each, so a busy machine skews both alike.
local function find_core()
   if pcall(require, "bitrix24.core") then return require("bitrix24.core") end
   local dir = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
   package.cpath = dir .. (jit and "/build/5.1/?.so;" or "/build/5.4/?.so;") .. package.cpath
   return require("bitrix24.core")
end
local core = find_core()
local cjson = require("cjson").new()

local function read(path)
   local f = assert(io.open(path, "rb"))
   local s = f:read("*a")
   f:close()
   return s
end

local function shared_dir()
   local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
   return os.getenv("B24_SHARED") or root .. "/../shared"
end

-- ---- the bodies -------------------------------------------------------------------------------

-- PHP's json_encode as the portal runs it: non-ASCII as \uXXXX (surrogate pairs above U+FFFF),
-- '/' as '\/' (cjson writes that too).
local function php_escape(s)
   return (s:gsub("[\xC0-\xF4][\x80-\xBF]+", function(c)
      local b1, b2, b3, b4 = c:byte(1, 4)
      local cp
      if b1 < 0xE0 then
         cp = (b1 - 0xC0) * 64 + (b2 - 0x80)
      elseif b1 < 0xF0 then
         cp = ((b1 - 0xE0) * 64 + (b2 - 0x80)) * 64 + (b3 - 0x80)
      else
         cp = (((b1 - 0xF0) * 64 + (b2 - 0x80)) * 64 + (b3 - 0x80)) * 64 + (b4 - 0x80)
      end
      if cp < 0x10000 then return string.format("\\u%04x", cp) end
      cp = cp - 0x10000
      return string.format("\\u%04x\\u%04x", 0xD800 + math.floor(cp / 1024), 0xDC00 + cp % 1024)
   end))
end

-- One crm.lead.list row as a portal answers select = {"*", "UF_*", "PHONE", "EMAIL"}.
local function lead(i)
   local null = cjson.null
   return {
      ID = tostring(13400 + i), TITLE = "Заявка с сайта №" .. i .. " (обратный звонок)", HONORIFIC = null,
      NAME = "Иван", SECOND_NAME = "Петрович", LAST_NAME = "Сидоров-" .. i, COMPANY_TITLE = "ООО «Ромашка»",
      COMPANY_ID = null, CONTACT_ID = null, IS_RETURN_CUSTOMER = "N", BIRTHDATE = "", SOURCE_ID = "WEB",
      SOURCE_DESCRIPTION = "https://example.ru/catalog/?utm_source=yandex&utm_medium=cpc",
      STATUS_ID = i % 3 == 0 and "IN_PROCESS" or "NEW", STATUS_DESCRIPTION = null, POST = "Главный инженер",
      COMMENTS = "[B]Перезвонить[/B] после 15:00, интересует поставка в " .. (i % 12 + 1) .. " квартале",
      CURRENCY_ID = "RUB", OPPORTUNITY = string.format("%d.00", 125000 + i * 250), IS_MANUAL_OPPORTUNITY = "N",
      HAS_PHONE = "Y", HAS_EMAIL = i % 2 == 0 and "Y" or "N", HAS_IMOL = "N", ASSIGNED_BY_ID = "17",
      CREATED_BY_ID = "1", MODIFY_BY_ID = "17", DATE_CREATE = "2024-09-01T10:21:44+03:00",
      DATE_MODIFY = "2024-09-22T18:05:12+03:00", DATE_CLOSED = "", STATUS_SEMANTIC_ID = "P", OPENED = "Y",
      ORIGINATOR_ID = null, ORIGIN_ID = null, MOVED_BY_ID = "17", MOVED_TIME = "2024-09-20T11:00:03+03:00",
      ADDRESS = "ул. Ленина, д. 1", ADDRESS_2 = null, ADDRESS_CITY = "Москва", ADDRESS_POSTAL_CODE = "101000",
      ADDRESS_REGION = null, ADDRESS_PROVINCE = "Московская область", ADDRESS_COUNTRY = "Россия",
      ADDRESS_COUNTRY_CODE = null, ADDRESS_LOC_ADDR_ID = tostring(300 + i), UTM_SOURCE = "yandex", UTM_MEDIUM = "cpc",
      UTM_CAMPAIGN = "autumn_sale_2024", UTM_CONTENT = null, UTM_TERM = "купить станок", LAST_ACTIVITY_BY = "17",
      LAST_ACTIVITY_TIME = "2024-09-22T18:05:12+03:00", UF_CRM_1693212345 = { "45", "46" },
      UF_CRM_LEAD_SCORE = tostring(i % 100),
      PHONE = { { ID = tostring(50000 + i), VALUE_TYPE = "WORK", VALUE = "+7 (916) 123-45-" .. (10 + i),
         TYPE_ID = "PHONE" } },
      EMAIL = i % 2 == 0 and { { ID = tostring(60000 + i), VALUE_TYPE = "WORK",
         VALUE = "lead" .. i .. "@example.com", TYPE_ID = "EMAIL" } } or nil,
   }
end

local function lead_list()
   local rows = {}
   for i = 1, 50 do rows[i] = lead(i) end
   return cjson.encode({ result = rows, next = 50, total = 1234, time = {
      start = 1727018926.205917, finish = 1727018926.270924, duration = 0.06500720977783203,
      processing = 0.06493496894836426, date_start = "2024-09-22T18:05:12+03:00",
      date_finish = "2024-09-22T18:05:12+03:00", operating_reset_at = 1727019526, operating = 0 } })
end

local function cases()
   local dir = shared_dir() .. "/vectors/"
   local list = lead_list()
   return {
      { "crm.lead.list, 50 rows (as the portal sends: \\uXXXX)", php_escape(list) },
      { "crm.lead.list, 50 rows (UTF-8)", list },
      { "event ONCRMCONTACTADD (application)", read(dir .. "events/app-oncrmcontactadd.expected.json") },
      { "event ONTASKCOMMENTADD (webhook)", read(dir .. "events/webhook-ontaskcommentadd.expected.json") },
      { "batch, mixed results and errors", read(dir .. "responses/batch-mixed-success-and-errors.json") },
   }
end

-- ---- speed ------------------------------------------------------------------------------------

local clock = os.clock

-- seconds per call of fn(x), best of the rounds interleaved with the others of the group
local function race(group, rounds)
   local best = {}
   for _, c in ipairs(group) do
      local n = 0
      local t0 = clock()
      repeat
         for _ = 1, 20 do c.fn(c.arg) end
         n = n + 20
      until clock() - t0 > 0.02
      c.batch = math.max(1, math.floor(n * 5)) -- about 0.1 s
      best[c.name] = math.huge
   end
   for _ = 1, rounds do
      for _, c in ipairs(group) do
         collectgarbage()
         local t0 = clock()
         for _ = 1, c.batch do c.fn(c.arg) end
         best[c.name] = math.min(best[c.name], (clock() - t0) / c.batch)
      end
   end
   return best
end

local function speed(rounds)
   print(string.format("%s, lua-cjson %s, best of %d interleaved rounds", jit and jit.version or _VERSION,
      cjson._VERSION or "?", rounds))
   print(string.format("%-52s %8s  %8s %8s %6s   %8s %8s %6s   %8s %8s %6s", "body", "bytes",
      "cjson", "core", "ratio", "old form", "form", "ratio", "cjson", "core", "ratio"))
   print(string.format("%-52s %8s  %24s   %24s   %24s", "", "", "decode (µs)", "event form (µs)", "encode (µs)"))
   local function form_mode(s) return core.json_decode(s, { form = true }) end
   local function old_form(s) return core.form_decode(core.form_encode(cjson.decode(s))) end
   for _, c in ipairs(cases()) do
      local name, body = c[1], c[2]
      local value = cjson.decode(body)
      assert(core.json_encode(core.json_decode(body)))
      local d = race({ { name = "cjson", fn = cjson.decode, arg = body },
         { name = "core", fn = core.json_decode, arg = body } }, rounds)
      local f = race({ { name = "old", fn = old_form, arg = body },
         { name = "form", fn = form_mode, arg = body } }, rounds)
      local e = race({ { name = "cjson", fn = cjson.encode, arg = value },
         { name = "core", fn = core.json_encode, arg = value } }, rounds)
      print(string.format("%-52s %8d  %8.1f %8.1f %6.2f   %8.1f %8.1f %6.2f   %8.1f %8.1f %6.2f", name, #body,
         d.cjson * 1e6, d.core * 1e6, d.cjson / d.core, f.old * 1e6, f.form * 1e6, f.old / f.form,
         e.cjson * 1e6, e.core * 1e6, e.cjson / e.core))
   end
end

-- ---- memory -----------------------------------------------------------------------------------

local function rep(unit, n)
   local t = {}
   for i = 1, n do t[i] = unit(i) end
   return table.concat(t, ",")
end

-- Hostile shapes at the default limits (10,000 values, depth 64, 1 MiB), and at 1 MiB with the
-- pair limit raised, as a client reading a large response would. Each is a function of n.
local SHAPES = {
   { "[[[…]]] 64 deep", function() return ("["):rep(64) .. ("]"):rep(64) end },
   { "{\"k\":[1,1,…]}", function(n) return '{"k":[' .. rep(function() return "1" end, n - 1) .. "]}" end },
   { "[[],[],…]", function(n) return "[" .. rep(function() return "[]" end, n) .. "]" end },
   { "[{},{},…]", function(n) return "[" .. rep(function() return "{}" end, n) .. "]" end },
   { "[[1],[1],…]", function(n) return "[" .. rep(function() return "[1]" end, math.floor(n / 2)) .. "]" end },
   { "{\"<key i>\":1,…} distinct keys", function(n)
      return "{" .. rep(function(i) return string.format('"%x":1', i) end, n) .. "}" end },
   { "[\"<i>\",…] distinct strings", function(n)
      return "[" .. rep(function(i) return string.format('"%x"', i) end, n) .. "]" end },
   { "[{\"a\":1},…]", function(n) return "[" .. rep(function() return '{"a":1}' end, math.floor(n / 2)) .. "]" end },
   { "{\"k\":\"<1 MB>\"}", function() return '{"k":"' .. ("x"):rep(1024 * 1024 - 10) .. '"}' end },
   { "{\"<30,000 × k>\":[1,…]} (issue 12)", function(n)
      return '{"event":"X","' .. ("k"):rep(30000) .. '":[' .. rep(function() return "1" end, n - 2) .. "]}" end },
}

local function status(field)
   local f = io.open("/proc/self/status")
   if not f then return nil end
   local s = f:read("*a")
   f:close()
   return tonumber(s:match(field .. ":%s*(%d+)")) * 1024
end

-- memory-one FILE FORM MAX_PAIRS: run in a fresh process by `memory`. The peak is reset
-- (/proc/self/clear_refs) once the body is read, so VmHWM afterwards is the decode's own peak.
local function memory_one(path, form, max_pairs)
   local body = read(path)
   collectgarbage()
   collectgarbage()
   local reset = io.open("/proc/self/clear_refs", "w")
   if reset then
      reset:write("5")
      reset:close()
   end
   local rss, heap = status("VmHWM"), collectgarbage("count") * 1024
   local v, err, kind = core.json_decode(body, { form = form, max_pairs = max_pairs, max_size = #body })
   local hwm = status("VmHWM")
   collectgarbage()
   collectgarbage()
   local heap2 = collectgarbage("count") * 1024
   print(#body, hwm - rss, heap2 - heap, kind or (v and "ok") or err)
end

local function memory()
   local interpreter = arg[-1] or "lua5.4"
   local path = os.tmpname()
   print(string.format("%s: extra memory of one json_decode (VmHWM: the process's peak; Lua heap: the value)",
      jit and jit.version or _VERSION))
   print(string.format("%-38s %-5s %9s %8s %10s %6s %10s %6s  %s", "shape", "mode", "values", "bytes",
      "VmHWM +", "x", "Lua heap +", "x", "result"))
   for _, pairs_limit in ipairs({ 10000, 1000000 }) do
      for _, shape in ipairs(SHAPES) do
         local n = pairs_limit
         if pairs_limit > 10000 then -- as many as fit in 1 MiB
            n = math.floor(n * 1024 * 1024 / #shape[2](n))
         end
         local body = shape[2](n)
         local f = assert(io.open(path, "wb"))
         f:write(body)
         f:close()
         for _, form in ipairs({ false, true }) do
            local p = assert(io.popen(string.format("%s %q memory-one %q %s %d", interpreter, arg[0], path,
               tostring(form), pairs_limit)))
            local out = p:read("*a")
            p:close()
            local bytes, hwm, heap, result = out:match("^(%d+)%s+(%-?%d+)%s+(%-?[%d.e+]+)%s+(.-)%s*$")
            bytes, hwm, heap = tonumber(bytes), tonumber(hwm), tonumber(heap)
            if bytes then
               print(string.format("%-38s %-5s %9d %8d %10d %6.1f %10d %6.1f  %s", shape[1],
                  form and "form" or "plain", pairs_limit, bytes, hwm, hwm / bytes, heap, heap / bytes, result))
            else
               print(shape[1], out)
            end
         end
      end
   end
   os.remove(path)
end

if arg[1] == "memory" then
   memory()
elseif arg[1] == "memory-one" then
   memory_one(arg[2], arg[3] == "true", tonumber(arg[4]))
else
   speed(tonumber(arg[1]) or 7)
end
