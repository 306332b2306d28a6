-- bitrix24.client over real HTTP against the emulator (b24 emulate) and a scripted portal (b24
-- serve): calls, errors of every class, retries and their request counts, batches, call_many,
-- exports (keyset over parallel ranges, offset paging) exact under faults, secrets never shown.
local b24 = require "helpers.b24"
local portal = require "helpers.portal"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"

local CODE = portal.CODE
local counting = portal.counting

local function emulate(args)
   local all = { "--code", CODE, "--time-scale", "1000" }
   for _, a in ipairs(args or {}) do all[#all + 1] = a end
   return b24.emulate{ args = all }
end

local function ids_once(rows, field)
   field = field or "ID"
   local seen, dups = {}, 0
   for _, row in ipairs(rows) do
      local id = string.format("%d", tonumber(row[field]))
      if seen[id] then dups = dups + 1 end
      seen[id] = true
   end
   return seen, dups
end

local function no_secret(text)
   assert.is_nil(tostring(text):find(CODE, 1, true), "the webhook code leaked: " .. tostring(text))
end

describe("bitrix24.client", function()
   local srv, c
   setup(function()
      srv = emulate{ "--seed-leads", "300", "--seed-tasks", "120" }
      c = portal.client(srv)
   end)
   teardown(function() if srv then srv:stop() end end)

   describe("calls", function()
      it("call gives the result, request the whole envelope", function()
         local lead = assert(c:call("crm.lead.get", { id = 7 }))
         assert.equal("7", lead.ID)
         assert.equal("Lead #7", lead.TITLE)
         local env = assert(c:request("crm.lead.list", { select = { "ID" } }))
         assert.equal(50, #env.result)
         assert.equal(300, env.total)
         assert.equal(50, env.next)
         assert.is_number(env.time.start)
      end)

      it("sends JSON bodies: nested fields and multi-fields arrive intact", function()
         local id = assert(c:call("crm.lead.add", { fields = { NAME = "Ivan", TITLE = "Ivan & Co = 100%",
            PHONE = { { VALUE = "+1 555 0100", VALUE_TYPE = "WORK" } } } }))
         local lead = assert(c:call("crm.lead.get", { id = id }))
         assert.equal("Ivan & Co = 100%", lead.TITLE)
         assert.equal("+1 555 0100", lead.PHONE[1].VALUE)
      end)

      it("raises on misuse", function()
         assert.has_error(function() c:call(42) end)
         assert.has_error(function() c:call("crm.lead.get", "id=1") end)
         assert.has_error(function() bitrix24.client(nil) end)
         assert.has_error(function() bitrix24.client("not a url") end)
         assert.has_error(function() bitrix24.client{ url = portal.url(srv), limit = "huge" } end)
         assert.has_error(function() c:batch({}) end)
      end)

      it("masks the webhook code in tostring and in error messages", function()
         no_secret(tostring(c))
         assert.matches("/rest/1/***/", tostring(c), 1, true)
         local _, err = c:call("crm.lead.get", { id = 999999 })
         no_secret(tostring(err))
         no_secret(err.url)
      end)
   end)

   describe("errors", function()
      it("400 with an empty code: a bitrix24.Error, one request, not retryable", function()
         local count, res, err = counting(srv, function() return c:call("crm.lead.get", { id = 999999 }) end)
         assert.is_nil(res)
         assert.is_true(bitrix24.Error.is(err))
         assert.equal("", err.code)
         assert.equal(400, err.status)
         assert.equal("Not found", err.description)
         assert.equal("crm.lead.get", err.method)
         assert.is_false(err.retryable)
         assert.equal(1, count.n)
         assert.matches("crm.lead.get: (no code): Not found (HTTP 400", tostring(err), 1, true)
      end)

      it("401 INVALID_CREDENTIALS: never retried, the wrong code never shown", function()
         local wrong = portal.client(srv, { code = "wrong0code0000000" })
         local count, res, err = counting(srv, function() return wrong:call("crm.lead.get", { id = 1 }) end)
         assert.is_nil(res)
         assert.equal("INVALID_CREDENTIALS", err.code)
         assert.equal(401, err.status)
         assert.is_false(err.retryable)
         assert.equal(1, count.n)
         assert.is_nil(tostring(err):find("wrong0code0000000", 1, true))
         assert.matches("INVALID_CREDENTIALS: Invalid request credentials (HTTP 401", tostring(err), 1, true)
      end)

      it("404 ERROR_METHOD_NOT_FOUND: never retried", function()
         local count, _, err = counting(srv, function() return c:call("crm.nothing.get") end)
         assert.equal("ERROR_METHOD_NOT_FOUND", err.code)
         assert.equal(404, err.status)
         assert.equal(1, count.n)
      end)

      it("a connection refused is code 'connect', retryable, and retried", function()
         local closed = bitrix24.client{ url = "http://127.0.0.1:1/rest/1/" .. CODE .. "/", retries = 3,
                                         backoff = { base = 0.001, cap = 0.002 } }
         local _, err = closed:call("crm.lead.add", { fields = {} })
         assert.equal("connect", err.code)
         assert.is_true(err.retryable)
         assert.equal(3, err.attempts)
         assert.equal(3, closed.stats.requests) -- nothing was sent: even a write is tried again
         no_secret(tostring(err))
      end)
   end)

   describe("batch", function()
      it("keeps the caller's labels, passes references through, orders by dependency", function()
         local res, errs = c:batch({
            z_first = { "crm.lead.get", { id = 3 } },
            a_then = { "crm.lead.list", { filter = { ID = "$result[z_first][ID]" }, select = { "ID", "TITLE" } } },
         })
         assert.is_nil(errs)
         assert.equal("3", res.z_first.ID)
         assert.equal("Lead #3", res.a_then[1].TITLE)
      end)

      it("gives per-label errors, and with halt the rest are not run", function()
         local res, errs = c:batch({ { "crm.lead.get", { id = 1 } }, { "crm.lead.get", { id = 999999 } },
                                     { "crm.lead.get", { id = 2 } } })
         assert.equal("1", res[1].ID)
         assert.equal("2", res[3].ID)
         assert.is_nil(errs[1])
         assert.equal("", errs[2].code)
         assert.equal("c1", errs[2].label)
         assert.matches("crm.lead.get[c1]", tostring(errs[2]), 1, true)
         res, errs = c:batch({ { "crm.lead.get", { id = 1 } }, { "crm.lead.get", { id = 999999 } },
                               { "crm.lead.get", { id = 2 } } }, { halt = true })
         assert.equal("1", res[1].ID)
         assert.is_nil(res[3])
         assert.equal("NOT_RUN", errs[3].code)
      end)

      it("takes at most 50 commands", function()
         local cmds = {}
         for i = 1, 51 do cmds[i] = { "crm.lead.get", { id = 1 } } end
         assert.has_error(function() c:batch(cmds) end)
      end)
   end)

   describe("call_many", function()
      it("1,000 adds in 20 HTTP requests, results in the caller's order", function()
         local calls = {}
         for i = 1, 1000 do calls[i] = { "crm.contact.add", { fields = { NAME = "m" .. i } } } end
         local count, results, errs = counting(srv, function() return c:call_many(calls) end)
         assert.is_nil(errs)
         assert.equal(20, count.n)
         assert.equal(1000, results.n)
         local gets = {}
         for i = 1, 1000, 111 do gets[#gets + 1] = { "crm.contact.get", { id = results[i] } } end
         local got = assert(c:call_many(gets))
         local k = 0
         for i = 1, 1000, 111 do
            k = k + 1
            assert.equal("m" .. i, got[k].NAME)
         end
      end)
   end)

   describe("exports", function()
      it("all: every lead once, keyset over parallel ranges", function()
         local rows = assert(c:all("crm.lead.list", { select = { "ID", "TITLE" } }))
         local seen, dups = ids_once(rows)
         assert.equal(0, dups)
         local total = c:request("crm.lead.list", { select = { "ID" } }).total
         assert.equal(total, #rows)
         assert.is_true(seen["300"])
      end)

      it("order ID asc: rows sorted; the caller's >=ID bound is kept", function()
         local rows = assert(c:all("crm.lead.list", { order = { ID = "ASC" }, filter = { [">=ID"] = 101 },
                                                      select = { "ID" } }))
         assert.equal("101", rows[1].ID)
         for i = 2, #rows do assert.is_true(tonumber(rows[i].ID) > tonumber(rows[i - 1].ID)) end
         assert.equal(c:request("crm.lead.list", { filter = { [">=ID"] = 101 } }).total, #rows)
      end)

      it("another order: offset paging in the caller's order", function()
         local rows = assert(c:all("crm.lead.list", { order = { TITLE = "DESC" }, select = { "ID", "TITLE" },
                                                      filter = { ["<=ID"] = 300 } }))
         assert.equal(300, #rows)
         for i = 2, #rows do assert.is_true(rows[i - 1].TITLE >= rows[i].TITLE) end
         local _, dups = ids_once(rows)
         assert.equal(0, dups)
      end)

      it("tasks.task.list (result.tasks, id) and crm.item.list (result.items, id)", function()
         local tasks = assert(c:all("tasks.task.list", { select = { "ID", "TITLE" } }))
         local _, dups = ids_once(tasks, "id")
         assert.equal(0, dups)
         assert.equal(120, #tasks)
         local items = assert(c:all("crm.item.list", { entityTypeId = 1, select = { "id", "title" } }))
         local seen
         seen, dups = ids_once(items, "id")
         assert.equal(0, dups)
         assert.is_true(seen["1"] and seen["300"])
      end)

      it("list streams: the first row arrives after the first request", function()
         local from = portal.mark(srv)
         local it = c:list("crm.lead.list", { select = { "ID" } })
         local first = it()
         local to = portal.mark(srv)
         assert.is_table(first)
         assert.equal(1, (portal.requests(srv, from, to)))
         local n = 1
         for row in it do
            assert.is_table(row)
            n = n + 1
         end
         assert.is_true(n >= 300)
      end)

      it("a failed export ends the loop with false, err", function()
         local wrong = portal.client(srv, { code = "wrong0code0000000" })
         local got = {}
         for row, err in wrong:list("crm.lead.list") do got[#got + 1] = { row, err } end
         assert.equal(1, #got)
         assert.is_false(got[1][1])
         assert.equal("INVALID_CREDENTIALS", got[1][2].code)
         local rows, err = wrong:all("crm.lead.list")
         assert.is_nil(rows)
         assert.equal("INVALID_CREDENTIALS", err.code)
      end)
   end)

   describe("transports", function()
      it("takes any table with request/now/sleep; request_many when present", function()
         local session = core.http{}
         local seen = { request = 0, many = 0, sleep = 0 }
         local plain = { now = core.now, sleep = function(s) seen.sleep = seen.sleep + 1; core.sleep(s) end }
         function plain.request(_, req) seen.request = seen.request + 1; return session:request(req) end
         local c1 = bitrix24.client{ url = portal.url(srv), transport = plain, limit = false }
         local rows = assert(c1:all("crm.lead.list", { select = { "ID" } }))
         assert.is_true(#rows >= 300)
         assert.is_true(seen.request >= 2)
         local many = { now = core.now, sleep = core.sleep }
         function many.request(_, req) seen.request = seen.request + 1; return session:request(req) end
         function many.request_many(_, reqs)
            seen.many = seen.many + 1
            local out = {}
            for i, r in ipairs(reqs) do
               local res, err, kind, sent = session:request(r)
               out[i] = res or { error = err, kind = kind, sent = sent }
            end
            return out
         end
         local calls = {}
         for i = 1, 120 do calls[i] = { "crm.lead.get", { id = i } } end
         local c2 = bitrix24.client{ url = portal.url(srv), transport = many, limit = false }
         local res = assert(c2:call_many(calls))
         assert.equal("120", res[120].ID)
         assert.equal(1, seen.many) -- three batches sent at once
      end)
   end)
end)

describe("bitrix24.client limits", function()
   it("the leaky bucket mirrors the portal's: no 503 where an unlimited client gets them", function()
      local srv = emulate{ "--seed-leads", "5", "--time-scale", "20" } -- drains 40 a second
      local ok, err = pcall(function()
         local unlimited = portal.client(srv, { limit = false })
         local count = counting(srv, function()
            for _ = 1, 70 do assert(unlimited:call("crm.lead.get", { id = 1 })) end
         end)
         assert.is_true((count.status["503"] or 0) > 0, "the portal's bucket never overflowed")
         assert.equal(70 + count.status["503"], count.n) -- each 503 retried, all calls done
         -- the portal's bucket is full now; a client mirroring it waits instead
         local mirrored = portal.client(srv, { limit = { capacity = 50, drain = 40 } })
         mirrored.bucket.level = 50
         count = counting(srv, function()
            for _ = 1, 70 do assert(mirrored:call("crm.lead.get", { id = 1 })) end
         end)
         assert.equal(70, count.n)
         assert.is_nil(count.status["503"])
      end)
      srv:stop()
      assert(ok, err)
   end)

   it("429 OPERATION_TIME_LIMIT: waited out until operating_reset_at, or returned when too long", function()
      local srv = emulate{ "--seed-leads", "60", "--time-scale", "600", "--operating-limit", "0.01",
                           "--row-cost", "1000" } -- 50 rows cost 0.05 s; the window is one second
      local ok, err = pcall(function()
         local impatient = portal.client(srv, { max_wait = 0 })
         assert(impatient:call("crm.lead.list")) -- crosses the limit, still completes
         local count, res, e = counting(srv, function() return impatient:call("crm.lead.list") end)
         assert.is_nil(res)
         assert.equal("OPERATION_TIME_LIMIT", e.code)
         assert.equal(429, e.status)
         assert.is_true(e.retryable)
         assert.equal(1, count.n)
         impatient.max_wait = 600 -- the same client: it has seen operating_reset_at
         local rows
         count, rows = counting(srv, function() return impatient:call("crm.lead.list") end)
         assert.equal(50, #rows)
         assert.is_true(count.status["429"] >= 1)
         assert.equal(1, count.status["200"])
      end)
      srv:stop()
      assert(ok, err)
   end)
end)

describe("bitrix24.client retries (scripted portal)", function()
   local srv
   local LIMIT = '{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}'
   local INTERNAL = '{"error":"INTERNAL_SERVER_ERROR","error_description":"Internal server error"}'
   setup(function()
      srv = portal.scripted{
         ["crm.limit.get"] = { { 503, LIMIT }, { 503, LIMIT }, { 200, '{"result":"ok"}' } },
         ["crm.boom.get"] = { { 500, INTERNAL }, { 200, '{"result":"ok"}' } },
         ["crm.boom.add"] = { { 500, INTERNAL }, { 200, '{"result":5}' } },
         ["crm.boomsafe.add"] = { { 500, INTERNAL }, { 200, '{"result":6}' } },
         ["crm.limit.add"] = { { 503, LIMIT }, { 200, '{"result":7}' } },
         ["crm.always.get"] = { { 503, LIMIT } },
         ["crm.html.get"] = { { 502, "<html>Bad Gateway</html>" }, { 200, '{"result":"ok"}' } },
         ["crm.html.add"] = { { 502, "<html>Bad Gateway</html>" } },
         ["crm.slow.add"] = { { "sleep", 1, 200, '{"result":8}' } },
         ["crm.slow.get"] = { { "sleep", 1, 200, '{"result":"late"}' }, { 200, '{"result":"ok"}' } },
         ["access.get"] = { { 403, '{"error":"ACCESS_DENIED","error_description":"Access denied!"}' } },
         ["scope.get"] = { { 401, '{"error":"insufficient_scope","error_description":'
            .. '"The request requires higher privileges than provided by the webhook token"}' } },
         ["overload.get"] = { { 401, '{"error":"OVERLOAD_LIMIT",'
            .. '"error_description":"REST API is blocked due to overload."}' } },
         ["noauth.get"] = { { 401, '{"error":"NO_AUTH_FOUND","error_description":"Wrong authorization data"}' } },
         ["token.get"] = { { 401, '{"error":"expired_token",'
            .. '"error_description":"The access token provided has expired."}' } },
         ["event.bind"] = { { 403, '{"error":"WRONG_AUTH_TYPE",'
            .. '"error_description":"Current authorization type is denied for this method"}' } },
         ["crm.arg.get"] = { { 400, '{"error":"ERROR_ARGUMENT",'
            .. '"error_description":"Argument \'id\' is null or empty","argument":"id"}' } },
         ["crm.core.get"] = { { 400, '{"error":"ERROR_CORE","error_description":"Not found"}' } },
      }
   end)
   teardown(function() if srv then srv:stop() end end)

   local function client(opts) return portal.client(srv, opts) end

   it("503 QUERY_LIMIT_EXCEEDED: retried with backoff, for reads and writes alike", function()
      local logged = {}
      local c = client{ log = function(level, msg, fields) logged[#logged + 1] = { level, msg, fields } end }
      local count, res = counting(srv, function() return c:call("crm.limit.get") end)
      assert.equal("ok", res)
      assert.equal(3, count.n)
      assert.equal(2, #logged)
      assert.equal("QUERY_LIMIT_EXCEEDED", logged[1][3].error)
      count, res = counting(srv, function() return c:call("crm.limit.add") end)
      assert.equal(7, res)
      assert.equal(2, count.n)
   end)

   it("gives up after the attempts allowed", function()
      local c = client{ retries = 4 }
      local count, res, err = counting(srv, function() return c:call("crm.always.get") end)
      assert.is_nil(res)
      assert.equal("QUERY_LIMIT_EXCEEDED", err.code)
      assert.equal(503, err.status)
      assert.is_true(err.retryable)
      assert.equal(4, count.n)
      assert.equal(4, err.attempts)
   end)

   it("500: a read is retried, a write is not (unless marked safe)", function()
      local c = client()
      local count, res = counting(srv, function() return c:call("crm.boom.get") end)
      assert.equal("ok", res)
      assert.equal(2, count.n)
      local err
      count, res, err = counting(srv, function() return c:call("crm.boom.add", { fields = {} }) end)
      assert.is_nil(res)
      assert.equal("INTERNAL_SERVER_ERROR", err.code)
      assert.equal(500, err.status)
      assert.is_true(err.ambiguous)
      assert.is_false(err.retryable)
      assert.equal(1, count.n)
      count, res = counting(srv, function() return c:call("crm.boomsafe.add", { fields = {} }, { safe = true }) end)
      assert.equal(6, res)
      assert.equal(2, count.n)
   end)

   it("a non-JSON 502: HTTP_502, retried for a read only", function()
      local c = client()
      local count, res = counting(srv, function() return c:call("crm.html.get") end)
      assert.equal("ok", res)
      assert.equal(2, count.n)
      local err
      count, res, err = counting(srv, function() return c:call("crm.html.add") end)
      assert.is_nil(res)
      assert.equal("HTTP_502", err.code)
      assert.equal(1, count.n)
   end)

   it("a timeout after sending: a write is not repeated, a read is", function()
      local c = client{ timeout = 0.3 }
      local count, res, err = counting(srv, function() return c:call("crm.slow.add") end)
      assert.is_nil(res)
      assert.equal("timeout", err.code)
      assert.is_true(err.ambiguous)
      assert.is_false(err.retryable)
      assert.equal(1, count.n)
      no_secret(tostring(err))
      count, res = counting(srv, function() return c:call("crm.slow.get") end)
      assert.equal("ok", res)
      assert.is_true(count.n >= 2) -- the portal's one thread may still be busy with the first
   end)

   it("auth, access and argument errors are never retried", function()
      local c = client()
      local cases = {
         { "access.get", "ACCESS_DENIED", 403 }, { "scope.get", "insufficient_scope", 401 },
         { "noauth.get", "NO_AUTH_FOUND", 401 }, { "token.get", "expired_token", 401 },
         { "event.bind", "WRONG_AUTH_TYPE", 403 }, { "crm.arg.get", "ERROR_ARGUMENT", 400 },
         { "crm.core.get", "ERROR_CORE", 400 },
      }
      for _, case in ipairs(cases) do
         local count, res, err = counting(srv, function() return c:call(case[1]) end, case[1])
         assert.is_nil(res)
         assert.equal(case[2], err.code)
         assert.equal(case[3], err.status)
         assert.is_false(err.retryable, case[1])
         assert.equal(1, count.n, case[1])
         no_secret(tostring(err))
      end
      local _, err = c:call("crm.arg.get")
      assert.equal("id", err.argument)
   end)

   it("OVERLOAD_LIMIT: returned at once, marked retryable", function()
      local c = client()
      local count, _, err = counting(srv, function() return c:call("overload.get") end, "overload.get")
      assert.equal("OVERLOAD_LIMIT", err.code)
      assert.is_true(err.retryable)
      assert.equal(1, count.n)
   end)
end)

describe("bitrix24.client under faults", function()
   it("never creates a record twice under --faults 500=0.1,reset=0.05", function()
      local srv = emulate{ "--faults", "500=0.1,reset=0.05", "--random-seed", "7" }
      local ok, err = pcall(function()
         local c = portal.client(srv)
         local calls = {}
         for i = 1, 400 do calls[i] = { "crm.lead.add", { fields = { TITLE = "u" .. i } } } end
         local results, errs = c:call_many(calls)
         for i = 401, 460 do
            local id, e = c:call("crm.lead.add", { fields = { TITLE = "u" .. i } })
            results[i] = id
            if e then errs = errs or {}; errs[i] = e end
         end
         assert.is_table(errs, "no fault was injected")
         local failed = 0
         for _, e in pairs(errs) do
            failed = failed + 1
            assert.is_true(e.ambiguous or e.code == "NOT_RUN", tostring(e))
            no_secret(tostring(e))
         end
         assert.is_true(failed > 0)
         local rows = assert(c:all("crm.lead.list", { select = { "ID", "TITLE" } }))
         local titles = {}
         for _, row in ipairs(rows) do
            assert.is_nil(titles[row.TITLE], "created twice: " .. row.TITLE)
            titles[row.TITLE] = true
         end
         for i = 1, 460 do
            if results[i] then assert.is_true(titles["u" .. i], "u" .. i) end
         end
      end)
      srv:stop()
      assert(ok, err)
   end)

   it("exports every ID exactly once under --faults 503=0.2,500=0.05,reset=0.02, with gaps", function()
      local srv = emulate{ "--seed-leads", "4000", "--faults", "503=0.2,500=0.05,reset=0.02", "--random-seed", "11" }
      local ok, err = pcall(function()
         local c = portal.client(srv, { retries = 12 })
         local deletes = {}
         for id = 3, 4000, 7 do deletes[#deletes + 1] = { "crm.lead.delete", { id = id } } end
         for id = 1200, 1900 do deletes[#deletes + 1] = { "crm.lead.delete", { id = id } } end
         c:call_many(deletes) -- a delete lost to a fault leaves its row: the export must still match
         local clean = portal.client(srv, { retries = 30 })
         local expected = {}
         for id = 1, 4000 do expected[id] = true end
         for _, mode in ipairs({ "parallel", "sorted", "offset" }) do
            local params = { select = { "ID" } }
            if mode == "sorted" then params.order = { ID = "ASC" } end
            if mode == "offset" then params.order = { DATE_CREATE = "ASC", ID = "DESC" } end
            local rows = assert(clean:all("crm.lead.list", params))
            local seen, dups = ids_once(rows)
            assert.equal(0, dups, mode)
            if mode == "parallel" then
               expected = seen
               assert.equal(clean:request("crm.lead.list", { select = { "ID" } }).total, #rows)
               assert.is_nil(seen["1500"], "a range of deleted IDs")
               assert.is_true(#rows > 2500 and #rows < 4000)
            else
               for id in pairs(expected) do assert.is_true(seen[id], mode .. " lost " .. id) end
               for id in pairs(seen) do assert.is_true(expected[id], mode .. " invented " .. id) end
            end
         end
      end)
      srv:stop()
      assert(ok, err)
   end)

   it("10,000 rows in at most 5 HTTP requests", function()
      local srv = emulate{ "--seed-leads", "10000" }
      local ok, err = pcall(function()
         local c = portal.client(srv)
         local count, rows = counting(srv, function()
            return assert(c:all("crm.lead.list", { select = { "ID", "TITLE" } }))
         end)
         local seen, dups = ids_once(rows)
         assert.equal(10000, #rows)
         assert.equal(0, dups)
         assert.is_true(seen["1"] and seen["10000"])
         assert.is_true(count.n <= 5, count.n .. " requests")
      end)
      srv:stop()
      assert(ok, err)
   end)
end)
