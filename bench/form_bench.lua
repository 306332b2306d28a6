-- Form codec benchmark, the Lua side (bench/form.sh runs it; see there).
--   form_bench.lua cases SHARED_DIR > cases.json   the bodies and params, built once
--   form_bench.lua calibrate cases.json SECONDS    per case: iterations for about SECONDS, bytes
--   form_bench.lua time cases.json KIND I N        seconds for N iterations of case I (after a warm-up)
--   form_bench.lua table cases.json results.txt    the table (results: "impl kind i n seconds" lines)
-- KIND is decode (form_decode of a body) or encode (form_encode of params). Runs under Lua 5.4
-- and LuaJIT (package.cpath set by form.sh); bench/form_bench.php is the same for PHP.
local cjson = require("cjson").new()

local function read(path)
   local f = assert(io.open(path, "rb"))
   local s = f:read("*a")
   f:close()
   return s
end

-- ---- the cases --------------------------------------------------------------------------------

local AUTH = {
   access_token = "be45f0660071849a0058f18a000000010000077261ef50fc26f1357adbd86a052c9e48",
   expires = "1727022526", expires_in = "3600", scope = "crm,task,user_brief,placement",
   domain = "example.bitrix24.ru", server_endpoint = "https://oauth.bitrix.info/rest/", status = "L",
   client_endpoint = "https://example.bitrix24.ru/rest/", member_id = "010b6886ebc205e43ae65000ee00addb",
   user_id = "17", application_token = "3c6c9248ec54af6bea1159b43ee0ab32",
}

-- ONCRMDEALUPDATE as an application receives it when its handler asks for the full deal
-- (crm.deal.get's fields, product rows, user fields with multiple values and a file).
local function deal_event()
   local rows = {}
   local products = { "Станок токарный ТВ-320", "Фреза концевая 12 мм", "Патрон трёхкулачковый",
      "Доставка и монтаж", "Пусконаладочные работы" }
   for i, name in ipairs(products) do
      rows[i] = { ID = tostring(880 + i), OWNER_ID = "7405", OWNER_TYPE = "D", PRODUCT_ID = tostring(120 + i),
         PRODUCT_NAME = name, PRICE = tostring(12500 * i) .. ".00", PRICE_EXCLUSIVE = tostring(10416 * i) .. ".67",
         PRICE_NETTO = tostring(12500 * i) .. ".00", PRICE_BRUTTO = tostring(12500 * i) .. ".00",
         QUANTITY = tostring(i) .. ".00", DISCOUNT_TYPE_ID = "2", DISCOUNT_RATE = "0.00", DISCOUNT_SUM = "0.00",
         TAX_RATE = "20.00", TAX_INCLUDED = "Y", CUSTOMIZED = "Y", MEASURE_CODE = "796", MEASURE_NAME = "шт",
         SORT = tostring(i * 10) }
   end
   local deal = {
      ID = "7405", TITLE = "Поставка оборудования для ООО «Ромашка» (счёт №2024-118)", TYPE_ID = "SALE",
      STAGE_ID = "C2:PREPARATION", PROBABILITY = "40", CURRENCY_ID = "RUB", OPPORTUNITY = "1250000.00",
      IS_MANUAL_OPPORTUNITY = "N", TAX_VALUE = "208333.33", LEAD_ID = "", COMPANY_ID = "312",
      CONTACT_ID = "4021", QUOTE_ID = "", BEGINDATE = "2024-09-01T03:00:00+03:00",
      CLOSEDATE = "2024-10-15T03:00:00+03:00", ASSIGNED_BY_ID = "17", CREATED_BY_ID = "1", MODIFY_BY_ID = "17",
      DATE_CREATE = "2024-09-01T10:21:44+03:00", DATE_MODIFY = "2024-09-22T18:05:12+03:00", OPENED = "Y",
      CLOSED = "N", COMMENTS = "[B]Срочно:[/B] клиент просит перенести монтаж на 14.10, оплата 50% до 01.10.\n"
         .. "Контакт на объекте — Пётр Иванович, +7 (916) 123-45-67. Пропуск заказан.",
      ADDITIONAL_INFO = "", LOCATION_ID = "", CATEGORY_ID = "2", STAGE_SEMANTIC_ID = "P", IS_NEW = "N",
      IS_RECURRING = "N", IS_RETURN_CUSTOMER = "Y", IS_REPEATED_APPROACH = "N", SOURCE_ID = "WEB",
      SOURCE_DESCRIPTION = "Заявка с сайта: https://example.ru/catalog/stanki/?utm_source=yandex&utm_medium=cpc",
      ORIGINATOR_ID = "", ORIGIN_ID = "", MOVED_BY_ID = "17", MOVED_TIME = "2024-09-20T11:00:03+03:00",
      LAST_ACTIVITY_TIME = "2024-09-22T18:05:12+03:00", LAST_ACTIVITY_BY = "17", UTM_SOURCE = "yandex",
      UTM_MEDIUM = "cpc", UTM_CAMPAIGN = "autumn_sale_2024", UTM_CONTENT = "banner_240x400",
      UTM_TERM = "купить токарный станок", UF_CRM_1693212345 = { "45", "46", "51" },
      UF_CRM_DELIVERY_ADDRESS = "г. Москва, ул. Ленина, д. 1, стр. 2|55.751244;37.618423",
      UF_CRM_CONTRACT = { id = "1893",
         showUrl = "/bitrix/components/bitrix/crm.deal.show/show_file.php"
            .. "?ownerId=7405&fieldName=UF_CRM_CONTRACT&dynamic=Y&fileId=1893",
         downloadUrl = "/bitrix/components/bitrix/crm.deal.show/show_file.php"
            .. "?auth=&ownerId=7405&fieldName=UF_CRM_CONTRACT&dynamic=Y&fileId=1893" },
      UF_CRM_PAYMENT_DUE = "2024-10-01T03:00:00+03:00", UF_CRM_MANAGER_NOTE = "Скидка согласована с РОП",
      CONTACT_IDS = { "4021", "4022" }, PRODUCT_ROWS = rows,
   }
   return { event = "ONCRMDEALUPDATE", event_handler_id = "58", data = { FIELDS = deal }, ts = "1727018926",
      auth = AUTH }
end

-- ONTASKUPDATE with the task's fields before and after: a long BBCode description, members,
-- tags, a checklist and CRM links.
local function task_event()
   local paragraphs = {}
   for i = 1, 12 do
      paragraphs[i] = "[P]" .. i .. ". Проверить раздел «" .. ("Отгрузка и приёмка"):rep(1)
         .. "» договора: сроки, штрафы, "
         .. "порядок приёмки (акт КС-2/КС-3), ответственные лица; результаты — в "
         .. "[URL=https://example.bitrix24.ru/docs/file/"
         .. (1000 + i) .. "/]таблицу[/URL] до 18:00 & отметить @Пётр.[/P]"
   end
   local checklist = {}
   for i = 1, 10 do
      checklist[i] = { ID = tostring(300 + i),
         TITLE = "Пункт " .. i .. ": согласовать смету (вариант " .. i .. ")",
         IS_COMPLETE = i % 3 == 0 and "Y" or "N", SORT_INDEX = tostring(i), PARENT_ID = "300" }
   end
   local function task(status)
      return {
         ID = "2536", TITLE = "Подготовить договор поставки для ООО «Ромашка»",
         DESCRIPTION = table.concat(paragraphs, "\n"), PRIORITY = "2", STATUS = status, GROUP_ID = "14",
         CREATED_BY = "1", RESPONSIBLE_ID = "17", ACCOMPLICES = { "23", "31" }, AUDITORS = { "1", "5", "9" },
         DEADLINE = "2024-10-01T18:00:00+03:00", START_DATE_PLAN = "2024-09-23T09:00:00+03:00",
         END_DATE_PLAN = "2024-09-30T18:00:00+03:00", CREATED_DATE = "2024-09-22T18:05:12+03:00",
         CHANGED_DATE = "2024-09-23T10:11:12+03:00", TAGS = { "договор", "ромашка", "Q4" },
         UF_CRM_TASK = { "D_7405", "C_4021", "CO_312" }, ALLOW_CHANGE_DEADLINE = "Y", TASK_CONTROL = "N",
         TIME_ESTIMATE = "14400", MARK = "", SITE_ID = "s1", CHECKLIST = checklist,
      }
   end
   return { event = "ONTASKUPDATE", event_handler_id = "404",
      data = { FIELDS_BEFORE = task("2"), FIELDS_AFTER = task("3"), IS_ACCESSIBLE_BEFORE = "Y",
         IS_ACCESSIBLE_AFTER = "Y" },
      ts = "1769071218", auth = AUTH }
end

local function lead_add()
   return { fields = {
      TITLE = "Заявка с сайта: расчёт стоимости", NAME = "Иван", SECOND_NAME = "Петрович",
      LAST_NAME = "Сидоров", STATUS_ID = "NEW", OPENED = "Y", ASSIGNED_BY_ID = 17, CURRENCY_ID = "RUB",
      OPPORTUNITY = 15000.5, SOURCE_ID = "WEB", SOURCE_DESCRIPTION = "Форма «Обратный звонок» на /contacts/",
      COMMENTS = "Перезвонить после 14:00 (МСК). Интересует: станок ТВ-320 + доставка & монтаж; "
         .. "бюджет ~1.2 млн ₽.",
      ADDRESS = "ул. Ленина, д. 1, кв. 2", ADDRESS_CITY = "Москва", ADDRESS_POSTAL_CODE = "101000",
      ADDRESS_COUNTRY = "Россия", COMPANY_TITLE = "ООО «Ромашка»", POST = "Главный инженер",
      PHONE = { { VALUE = "+7 (900) 000-00-00", VALUE_TYPE = "WORK" },
                { VALUE = "+7 916 123-45-67", VALUE_TYPE = "MOBILE" } },
      EMAIL = { { VALUE = "ivan.sidorov+lead@example.ru", VALUE_TYPE = "WORK" },
                { VALUE = "ivan@example.com", VALUE_TYPE = "HOME" } },
      WEB = { { VALUE = "https://example.ru/?from=bitrix24&x=1", VALUE_TYPE = "WORK" } },
      IM = { { VALUE = "ivan_sidorov", VALUE_TYPE = "TELEGRAM" } },
      UTM_SOURCE = "yandex", UTM_MEDIUM = "cpc", UTM_CAMPAIGN = "autumn_sale_2024", UTM_TERM = "купить станок",
      UF_CRM_1693212345 = { 45, 46 },
   }, params = { REGISTER_SONET_EVENT = "Y" } }
end

local function lead_list()
   return {
      filter = { [">=DATE_CREATE"] = "2024-01-01T00:00:00+03:00", ["<DATE_CREATE"] = "2024-10-01T00:00:00+03:00",
         STATUS_ID = { "NEW", "IN_PROCESS", "PROCESSED" }, ["!SOURCE_ID"] = "OTHER", ["%TITLE"] = "сайт",
         ASSIGNED_BY_ID = { 1, 17, 23, 31 }, ["=OPENED"] = "Y", [">OPPORTUNITY"] = 10000 },
      select = { "ID", "TITLE", "NAME", "LAST_NAME", "STATUS_ID", "SOURCE_ID", "ASSIGNED_BY_ID", "OPPORTUNITY",
         "CURRENCY_ID", "DATE_CREATE", "PHONE", "EMAIL", "UF_*" },
      order = { DATE_CREATE = "DESC", ID = "ASC" },
      start = 100,
   }
end

local function batch()
   local cmd = {}
   for i = 1, 50 do
      cmd["lead_" .. i] = "crm.lead.update?id=" .. (1000 + i) .. "&fields[STATUS_ID]=IN_PROCESS"
         .. "&fields[COMMENTS]=" .. "Обработано ботом %26 проверено" .. "&params[REGISTER_SONET_EVENT]=N"
   end
   return { halt = 0, cmd = cmd }
end

local function cases(shared)
   local core = require "bitrix24.core"
   local dir = shared .. "/vectors/events/"
   return {
      decode = {
         { name = "app-oncrmcontactadd.form", body = read(dir .. "app-oncrmcontactadd.form") },
         { name = "webhook-ontaskcommentadd.form", body = read(dir .. "webhook-ontaskcommentadd.form") },
         { name = "ONCRMDEALUPDATE, full deal", body = core.form_encode(deal_event()) },
         { name = "ONTASKUPDATE, full task", body = core.form_encode(task_event()) },
      },
      encode = {
         { name = "crm.lead.add", params = lead_add() },
         { name = "crm.lead.list", params = lead_list() },
         { name = "batch, 50 commands", params = batch() },
      },
   }
end

-- ---- measuring ----------------------------------------------------------------------------------

local function load_cases(path)
   return cjson.decode(read(path))
end

-- fn(k) runs k iterations of case i of kind.
local function job(c, kind, i)
   local core = require "bitrix24.core"
   local case = c[kind][i]
   if kind == "decode" then
      local decode, body = core.form_decode, case.body
      assert(decode(body), case.name)
      return function(k)
         for _ = 1, k do decode(body) end
      end
   end
   local encode, params = core.form_encode, case.params
   return function(k)
      for _ = 1, k do encode(params) end
   end
end

local function now()
   return require("bitrix24.core").now()
end

local function calibrate(path, seconds)
   local c = load_cases(path)
   for _, kind in ipairs({ "decode", "encode" }) do
      for i = 1, #c[kind] do
         local fn, n = job(c, kind, i), 1
         while true do
            local t0 = now()
            fn(n)
            local dt = now() - t0
            if dt >= 0.2 then
               n = math.max(1, math.floor(n * seconds / dt + 0.5))
               break
            end
            n = n * 2
         end
         local case = c[kind][i]
         local bytes = kind == "decode" and #case.body or #require("bitrix24.core").form_encode(case.params)
         print(string.format("%s\t%d\t%d\t%d", kind, i, n, bytes))
      end
   end
end

local function time(path, kind, i, n)
   local fn = job(load_cases(path), kind, i)
   fn(math.max(1, math.floor(n / 10))) -- warm-up: caches, allocator, LuaJIT's traces
   collectgarbage()
   local t0 = now()
   fn(n)
   print(string.format("%.6f", now() - t0))
end

-- ---- the table ------------------------------------------------------------------------------------

-- best[impl][kind][i] = MB/s of the fastest run
local function best_rates(c, path)
   local core = require "bitrix24.core"
   local bytes = { decode = {}, encode = {} }
   for i, case in ipairs(c.decode) do bytes.decode[i] = #case.body end
   for i, case in ipairs(c.encode) do bytes.encode[i] = #core.form_encode(case.params) end
   local best = {}
   for line in io.lines(path) do
      local impl, kind, i, n, sec = line:match("^(%S+)%s+(%a+)%s+(%d+)%s+(%d+)%s+([%d.]+)$")
      if impl then
         i = tonumber(i)
         local rate = bytes[kind][i] * tonumber(n) / tonumber(sec) / 1e6
         best[impl] = best[impl] or { decode = {}, encode = {} }
         best[impl][kind][i] = math.max(best[impl][kind][i] or 0, rate)
      end
   end
   return best, bytes
end

local function table_of(path, results)
   local c = load_cases(path)
   local best, bytes = best_rates(c, results)
   local misses = 0
   local function head(title)
      print(string.format("  %-38s %7s %9s %9s %9s %9s %9s", title, "bytes", "lua5.4", "luajit", "PHP",
         "5.4/PHP", "jit/PHP"))
   end
   local function rows(kind)
      for i, case in ipairs(c[kind]) do
         local a, b, p = best.lua54[kind][i], best.luajit[kind][i], best.php[kind][i]
         assert(a and b and p, "missing result for " .. case.name)
         local ra, rb = a / p, b / p
         local note = ""
         if ra < 1 or rb < 1 then
            note = "  below the 1.0x target"
            misses = misses + 1
         end
         print(string.format("  %-38s %7d %9.1f %9.1f %9.1f %8.2fx %8.2fx%s", case.name, bytes[kind][i], a, b, p,
            ra, rb, note))
      end
   end
   head("decode: form_decode / parse_str")
   rows("decode")
   print()
   head("encode: form_encode / http_build_query")
   rows("encode")
   print()
   if misses == 0 then
      print("every row meets the target: ours/PHP >= 1.0x on both interpreters")
   else
      print(misses .. " row(s) below the target of ours/PHP >= 1.0x")
   end
end

local cmd = arg[1]
if cmd == "cases" then
   io.write(cjson.encode(cases(arg[2])), "\n")
elseif cmd == "calibrate" then
   calibrate(arg[2], tonumber(arg[3]) or 1)
elseif cmd == "time" then
   time(arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5]))
elseif cmd == "table" then
   table_of(arg[2], arg[3])
else
   io.stderr:write("usage: form_bench.lua cases SHARED | calibrate CASES SECONDS | time CASES KIND I N"
      .. " | table CASES RESULTS\n")
   os.exit(2)
end
