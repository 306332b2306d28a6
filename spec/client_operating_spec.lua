-- bitrix24.client and the operating limit over real HTTP against `b24 emulate` with a 2-second
-- window (--operating-window 2): a real portal neither blocks nor bills `batch`, and a command
-- of a blocked method comes back as OPERATION_TIME_LIMIT in result_error of an HTTP 200 batch
-- (rest/lib/engine/access/loadlimiter.php $ignoreMethod in yuliai/bitrix-modules). The client
-- keeps the answers of the commands that ran, waits until the blocked method's
-- operating_reset_at (from result_time and earlier answers), and sends only the blocked commands
-- again (with the reads that referred to them, and what a halt left unrun), within max_wait.
-- The transport is the default one, wrapped to record what each request carried.
--
-- A long scenario (real windows waited out, about 45 s): it runs in the Lua 5.4 passes only; the
-- client's waiting is the same Lua code under LuaJIT, whose numbers have their own specs.
if rawget(_G, "jit") then return end

local b24 = require "helpers.b24"
local portal = require "helpers.portal"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"

local CODE = portal.CODE

-- `b24 emulate` with a 2-second operating window (ten baskets of 0.2 s) and extra options.
local function emulate(args)
   local all = { "--code", CODE, "--operating-window", "2" }
   for _, a in ipairs(args) do all[#all + 1] = a end
   return b24.emulate{ args = all }
end

-- A client of srv over the default transport, recording each request: { method, cmd (a batch's
-- labels → "method?query"), labels (sorted), wall (the client's estimate of the portal's clock
-- when it was sent) }.
local function recording_client(srv, opts)
   local inner = bitrix24.transport{ timeout = 30 }
   local sent = {}
   local client
   local transport = { now = inner.now, sleep = inner.sleep }
   local function note(req)
      local method = req.url:match("/([^/]+)$")
      local entry = { method = method, wall = client and client:wall() }
      if method == "batch" then
         entry.cmd = core.json_decode(req.body).cmd
         entry.labels = {}
         for label in pairs(entry.cmd) do entry.labels[#entry.labels + 1] = label end
         table.sort(entry.labels)
      end
      sent[#sent + 1] = entry
   end
   function transport.request(_, req)
      note(req)
      return inner:request(req)
   end
   function transport.request_many(_, reqs)
      for _, req in ipairs(reqs) do note(req) end
      return inner:request_many(reqs)
   end
   function transport.close() inner:close() end
   local o = { url = portal.url(srv), transport = transport, limit = false, backoff = { base = 0.01, cap = 0.05 } }
   for k, v in pairs(opts or {}) do o[k] = v end
   client = bitrix24.client(o)
   return client, sent
end

-- The requests recorded from position `from` on.
local function since(sent, from)
   local out = {}
   for i = from + 1, #sent do out[#out + 1] = sent[i] end
   return out
end

local function ids(rows, field)
   local out = {}
   for i, row in ipairs(rows) do out[i] = string.format("%d", tonumber(row[field or "ID"])) end
   return out
end

local function range(from, to)
   local out = {}
   for id = from, to do out[#out + 1] = string.format("%d", id) end
   return out
end

-- Every ID once: the number of distinct IDs and of repeats, and whether 1..n are all there.
local function census(rows, n)
   local seen, dups, distinct = {}, 0, 0
   for _, row in ipairs(rows) do
      local id = string.format("%d", tonumber(row.ID))
      if seen[id] then dups = dups + 1 else distinct = distinct + 1 end
      seen[id] = true
   end
   local all = true
   for id = 1, n do if not seen[string.format("%d", id)] then all = false end end
   return distinct, dups, all
end

local BLOCKED = "OPERATION_TIME_LIMIT"

local function keys(t)
   local out = {}
   for k in pairs(t) do out[#out + 1] = k end
   table.sort(out)
   return out
end

-- The parameters of a batch command "method?query".
local function query(cmd)
   return core.form_decode(cmd:match("%?(.*)$") or "")
end

describe("bitrix24.client batch under the operating limit", function()
   -- a page of 50 leads costs 50 × 4 ms = 0.2 s, over the 0.1 s limit: the first page crosses
   -- it and crm.lead.list is blocked for the 2-second window; a get (4 ms) or a deal list is not
   local ARGS = { "--seed-leads", "60", "--row-cost", "4000", "--operating-limit", "0.1" }

   it("waits out a blocked command until operating_reset_at, sends only it again, keeps the rest", function()
      local srv = emulate(ARGS)
      finally(function() srv:stop() end)
      -- operating_wait far above the block: only the remembered operating_reset_at ends the wait soon
      local c, sent = recording_client(srv, { operating_wait = 60 })
      local crossing = assert(c:request("crm.lead.list", { select = { "ID" } }))
      local reset_at = crossing.time.operating_reset_at
      assert.is_true(reset_at > c:wall(), "the block lasts a while")

      local from = #sent
      local results, errors, meta = c:batch({
         add = { "crm.lead.add", { fields = { TITLE = "added while blocked" } } },
         lead = { "crm.lead.get", { id = 1 } },
         page = { "crm.lead.list", { select = { "ID" }, order = { ID = "ASC" }, start = 50 } },
      })
      assert.is_nil(errors)
      assert.equal(61, results.add)
      assert.equal("1", results.lead.ID)
      assert.same(range(51, 61), ids(results.page))
      assert.equal(61, meta.page.total)
      assert.is_number(meta.page.time.operating)

      local reqs = since(sent, from)
      assert.equal(2, #reqs)
      assert.same({ "add", "lead", "page" }, reqs[1].labels)
      assert.same({ "page" }, reqs[2].labels)               -- only the blocked command again
      assert.is_true(reqs[2].wall >= reset_at - 0.05, "sent again before operating_reset_at")
      assert.is_true(reqs[2].wall < reset_at + 5, "waited far past operating_reset_at")
      -- the write ran once: one lead more than the seed
      assert.is_nil(c:call("crm.lead.get", { id = 62 }), "a lead added twice")
   end)

   it("sends a blocked write again once (it did not run)", function()
      -- every method is blocked after its first call (a limit of a microsecond)
      local srv = emulate{ "--seed-leads", "5", "--operating-limit", "0.000001" }
      finally(function() srv:stop() end)
      local c, sent = recording_client(srv, { operating_wait = 60 })
      assert(c:call("crm.lead.add", { fields = { TITLE = "first" } })) -- crosses crm.lead.add's limit
      local from = #sent
      local results, errors = c:batch({ { "crm.lead.get", { id = 1 } },
                                        { "crm.lead.add", { fields = { TITLE = "second" } } } })
      assert.is_nil(errors)
      assert.equal("1", results[1].ID)
      assert.equal(7, results[2])
      local reqs = since(sent, from)
      assert.equal(2, #reqs)
      assert.same({ "c1" }, reqs[2].labels)
      assert.is_nil(c:call("crm.lead.get", { id = 8 }), "a lead added twice")
   end)

   it("resolves references to kept commands, sends again the reads that referred to a blocked one", function()
      local srv = emulate(ARGS)
      finally(function() srv:stop() end)
      local c, sent = recording_client(srv, { operating_wait = 60 })
      assert(c:request("crm.lead.list", { select = { "ID" } }))
      local cmds = {
         first = { "crm.lead.get", { id = 2 } },
         page = { "crm.lead.list", { filter = { [">ID"] = "$result[first][ID]" }, order = { ID = "ASC" },
                                     select = { "ID" }, start = -1 } },
         following = { "crm.lead.get", { id = "$result[page][0][ID]" } },
         other = { "crm.lead.get", { id = 5 } },
      }
      for _, halt in ipairs({ true, false }) do
         local from = #sent
         local results, errors = c:batch(cmds, { halt = halt })
         assert.is_nil(errors)
         assert.equal("2", results.first.ID)
         assert.same(range(3, 52), ids(results.page))
         assert.equal("3", results.following.ID)
         assert.equal("5", results.other.ID)
         local reqs = since(sent, from)
         assert.equal(2, #reqs)
         assert.same({ "first", "following", "other", "page" }, reqs[1].labels)
         -- with halt the commands after the blocked one did not run; without it `following` ran
         -- on the missing value: a read, sent again; `other` ran and is kept
         if halt then
            assert.same({ "following", "other", "page" }, reqs[2].labels)
         else
            assert.same({ "following", "page" }, reqs[2].labels)
         end
         -- first's ID in place of the reference to it; page's own reference left to the portal
         assert.equal("2", query(reqs[2].cmd.page).filter[">ID"])
         assert.equal("$result[page][0][ID]", query(reqs[2].cmd.following).id)
      end
   end)

   it("returns the error for the blocked commands only when the wait would pass max_wait", function()
      local srv = emulate(ARGS)
      finally(function() srv:stop() end)
      local c, sent = recording_client(srv, { max_wait = 0.5 })
      local from = #sent
      local t0 = core.now()
      local results, errors, meta = c:batch({
         lead = { "crm.lead.get", { id = 1 } },
         page1 = { "crm.lead.list", { select = { "ID" } } },              -- crosses the limit
         page2 = { "crm.lead.list", { select = { "ID" }, start = 50 } },  -- blocked for ~2 s
         deals = { "crm.deal.list" },
      })
      assert.is_true(core.now() - t0 < 1.5, "waited for the block")
      assert.equal(1, #since(sent, from))
      assert.same({ "page2" }, keys(errors))
      assert.equal(BLOCKED, errors.page2.code)
      assert.equal("page2", errors.page2.label)
      assert.is_true(errors.page2.retryable)
      assert.is_nil(results.page2)
      assert.is_nil(meta.page2.time)
      assert.equal("1", results.lead.ID)
      assert.equal(50, #results.page1)
      assert.same({}, results.deals)

      -- call_many: the same, per call
      from = #sent
      local calls = { { "crm.lead.get", { id = 2 } }, { "crm.lead.list", { select = { "ID" } } },
                      { "crm.deal.list" } }
      local got, errs = c:call_many(calls)
      assert.equal(1, #since(sent, from))
      assert.equal(3, got.n)
      assert.equal("2", got[1].ID)
      assert.is_nil(got[2])
      assert.equal(BLOCKED, errs[2].code)
      assert.is_nil(errs[1])
      assert.is_nil(errs[3])
      assert.same({}, got[3])
   end)
end)

describe("bitrix24.client call under the operating limit", function()
   it("waits a 429 out until operating_reset_at without using up `retries`", function()
      local srv = emulate{ "--seed-leads", "60", "--row-cost", "4000", "--operating-limit", "0.1" }
      finally(function() srv:stop() end)
      local c, sent = recording_client(srv, { operating_wait = 60, retries = 1 })
      local reset_at = assert(c:request("crm.lead.list", { select = { "ID" } })).time.operating_reset_at
      local from = #sent
      local rows = assert(c:call("crm.lead.list", { select = { "ID" }, start = 50 }))
      assert.same(range(51, 60), ids(rows))
      local reqs = since(sent, from)
      assert.equal(2, #reqs) -- the 429, then the call once the block lifted
      assert.is_true(reqs[2].wall >= reset_at - 0.05, "sent again before operating_reset_at")
   end)
end)

describe("bitrix24.client clock for operating_reset_at", function()
   it("takes the portal's time from the latest answer, whatever order concurrent answers come in", function()
      -- a batch of ten pages held 2 s (the cost of its rows), and a cheap one answered meanwhile:
      -- the cheap one is read last but finished first
      local srv = emulate{ "--seed-leads", "500", "--row-cost", "4000" }
      finally(function() srv:stop() end)
      local c = recording_client(srv)
      local pages = {}
      for i = 1, 10 do pages[i] = { "crm.lead.list", { select = { "ID" }, start = (i - 1) * 50 } } end
      local got = c:_runner().batches({ pages, { { "crm.lead.get", { id = 1 } } } })
      local latest = 0
      for _, outcome in ipairs(got) do
         assert.is_nil(outcome.errors)
         for _, m in pairs(outcome.meta) do latest = math.max(latest, m.time.finish) end
      end
      assert.is_true(got[2].meta[1].time.finish < latest - 1, "the cheap batch finished first")
      -- the clock the waits are measured on is not behind any answer's finish
      assert.is_true(c:wall() >= latest, "the portal's clock taken from an older answer")
   end)
end)

describe("bitrix24.client call_many under the operating limit", function()
   it("waits out the blocked calls and sends only them again, results in the caller's order", function()
      -- a page costs 0.2 s, the limit is 0.3 s: two pages run (the second crosses), then blocked;
      -- fifty gets cost 0.2 s of their own method's budget
      local srv = emulate{ "--seed-leads", "300", "--row-cost", "4000", "--operating-limit", "0.3" }
      finally(function() srv:stop() end)
      local c, sent = recording_client(srv, { operating_wait = 60 })
      local calls, pages = {}, { [10] = 0, [30] = 1, [51] = 2, [53] = 3 }
      local id = 0
      for i = 1, 54 do
         if pages[i] then
            calls[i] = { "crm.lead.list", { filter = { [">ID"] = pages[i] * 50 }, order = { ID = "ASC" },
                                            select = { "ID" }, start = -1 } }
         else
            id = id + 1
            calls[i] = { "crm.lead.get", { id = id } }
         end
      end
      local results, errors = c:call_many(calls)
      assert.is_nil(errors)
      assert.equal(54, results.n)
      id = 0
      for i = 1, 54 do
         if pages[i] then
            assert.same(range(pages[i] * 50 + 1, pages[i] * 50 + 50), ids(results[i]))
         else
            id = id + 1
            assert.equal(string.format("%d", id), results[i].ID)
         end
      end
      -- two batches, then one with the two blocked pages; no get sent twice
      assert.equal(3, #sent)
      local gets, lists = 0, 0
      for _, req in ipairs(sent) do
         for _, cmd in pairs(req.cmd) do
            if cmd:match("^crm%.lead%.get") then gets = gets + 1 else lists = lists + 1 end
         end
      end
      assert.equal(50, gets)
      assert.equal(6, lists)
      assert.equal(2, #sent[3].labels)
      for _, cmd in pairs(sent[3].cmd) do assert.matches("^crm%.lead%.list%?", cmd) end
   end)
end)

describe("bitrix24.client exports under the operating limit", function()
   -- 400 leads; a page costs 50 ms, the limit is 0.2 s: a block in the middle of each export
   local ARGS = { "--seed-leads", "400", "--row-cost", "1000", "--operating-limit", "0.2" }

   local function export(opts, params)
      local srv = emulate(ARGS)
      finally(function() srv:stop() end)
      local c, sent = recording_client(srv, opts)
      local rows = assert(c:all("crm.lead.list", params))
      return rows, sent, c
   end

   -- The batches that sent part of a chain again (their labels do not start at c0).
   local function resent(sent)
      local out = {}
      for _, req in ipairs(sent) do
         if req.method == "batch" and not req.cmd.c0 then out[#out + 1] = req end
      end
      return out
   end

   it("keyset (unordered): every row exactly once, the chain resumed after the block", function()
      local rows, sent = export({ operating_wait = 60 }, { select = { "ID", "TITLE" } })
      local distinct, dups, all = census(rows, 400)
      assert.equal(400, #rows)
      assert.equal(400, distinct)
      assert.equal(0, dups)
      assert.is_true(all)
      -- 9 pages at about 4 a window: the probe and the chain, then what the blocks held back
      assert.is_true(#sent <= 5, #sent .. " requests")
      -- the chain's rest sent again, from the last row kept: the first command's reference replaced
      -- by that row's ID, the later ones left to the portal
      local again = resent(sent)
      assert.is_true(#again >= 1, "no block met")
      for _, req in ipairs(again) do
         local low
         for label in pairs(req.cmd) do
            local n = tonumber(label:match("^c(%d+)$"))
            if not low or n < low then low = n end
         end
         local first = query(req.cmd["c" .. low]).filter[">ID"]
         assert.matches("^%d+$", first)
         assert.equal(0, tonumber(first) % 50)
         for label, cmd in pairs(req.cmd) do
            if label ~= "c" .. low then assert.matches("^%$result%[c%d+%]%[49%]%[ID%]$", query(cmd).filter[">ID"]) end
         end
      end
   end)

   it("ends with OPERATION_TIME_LIMIT at once when the block outlasts max_wait", function()
      local srv = emulate(ARGS)
      finally(function() srv:stop() end)
      local c, sent = recording_client(srv, { max_wait = 0.5 })
      local t0 = core.now()
      local rows, err = c:all("crm.lead.list", { select = { "ID" } })
      assert.is_nil(rows)
      assert.equal(BLOCKED, err.code)
      -- the probe and the chain's batch: the client did not wait (the block is ~2 s), and the
      -- export did not send the blocked page again to meet the same block
      assert.equal(2, #sent)
      assert.is_true(core.now() - t0 < 1.5, "waited for the block")
   end)

   it("keyset (ID order): rows sorted, each once", function()
      local rows, sent, c = export({ operating_wait = 60 }, { select = { "ID" }, order = { ID = "ASC" } })
      assert.same(range(1, 400), ids(rows))
      assert.is_true(#sent <= 4, #sent .. " requests")
      assert.is_true(c.stats.retries >= 1, "no block met")
   end)

   it("offset paging with its ID pass: every row exactly once", function()
      local rows, sent, c = export({ operating_wait = 60 }, { select = { "ID", "TITLE" }, order = { TITLE = "DESC" } })
      local distinct, dups, all = census(rows, 400)
      assert.equal(400, #rows)
      assert.equal(400, distinct)
      assert.equal(0, dups)
      assert.is_true(all)
      for i = 2, #rows do assert.is_true(rows[i - 1].TITLE >= rows[i].TITLE) end
      assert.is_true(#sent <= 10, #sent .. " requests")
      assert.is_true(c.stats.retries >= 1, "no block met")
   end)
end)
