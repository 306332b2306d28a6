-- bitrix24.export against a loopback portal that pages as the platform's PHP does (start rounded
-- down to a multiple of 50, a page past the end answered with page 1, user.get reading SORT/ORDER
-- strings and ignoring an ORDER table, crm.item.list/tasks.task.list shapes) and whose rows are
-- inserted, deleted and moved while the export runs: every row that existed when the export
-- started and still exists at its end comes exactly once; no row ever comes twice.
local portal = require "helpers.portal"
local pp = require "helpers.paging_portal"

-- seen (id string → count), duplicates, ids in order
local function census(rows, field)
   field = field or "ID"
   local seen, dups, order = {}, 0, {}
   for i, row in ipairs(rows) do
      local id = string.format("%d", tonumber(row[field]))
      if seen[id] then dups = dups + 1 end
      seen[id] = (seen[id] or 0) + 1
      order[i] = id
   end
   return seen, dups, order
end

local function set_of(list)
   local s = {}
   for _, id in ipairs(list) do s[string.format("%d", id)] = true end
   return s
end

-- The ids 1..n sorted by their seeded name (the order TITLE/NAME ASC gives).
local function by_name(prefix, n)
   local ids = {}
   for id = 1, n do ids[id] = id end
   table.sort(ids, function(a, b) return pp.name(prefix, a) < pp.name(prefix, b) end)
   return ids
end

local function starts_aligned(starts, what)
   for _, s in ipairs(starts or {}) do
      local n = tonumber(s)
      assert.is_true(n == -1 or (n >= 0 and n % 50 == 0), what .. ": start " .. s .. " is not a multiple of 50")
   end
end

local function has(list, value)
   for _, v in ipairs(list or {}) do if v == value then return true end end
   return false
end

describe("bitrix24.export paging", function()
   local srv, c
   setup(function()
      srv = pp.start()
      c = portal.client(srv)
   end)
   teardown(function() if srv then srv:stop() end end)

   describe("the loopback portal", function()
      it("pages as the PHP does: rounded starts, page 1 past the end, start=-1, exact ORM offsets", function()
         pp.setup(c, { seed = { lead = 120, user = 120, item = 120 } })
         local env = assert(c:request("crm.lead.list", { order = { ID = "ASC" }, start = 75 }))
         assert.equal("51", env.result[1].ID)           -- page intval(75/50)+1 = 2
         assert.equal(100, env.next)
         assert.equal(120, env.total)
         env = assert(c:request("crm.lead.list", { order = { ID = "ASC" }, start = 500 }))
         assert.equal("1", env.result[1].ID)            -- past the last page: page 1
         env = assert(c:request("crm.lead.list", { order = { ID = "ASC" }, start = -1 }))
         assert.equal(50, #env.result)
         assert.equal(0, env.total)
         assert.is_nil(env.next)
         env = assert(c:request("user.get", { sort = "ID", order = "ASC", start = 75 }))
         assert.equal("76", env.result[1].ID)           -- ORM: offset = start
         env = assert(c:request("user.get", { order = { ID = "ASC" } }))
         local sorted = true
         for i = 2, #env.result do
            if tonumber(env.result[i].ID) < tonumber(env.result[i - 1].ID) then sorted = false end
         end
         assert.is_false(sorted, "user.get ignores an ORDER table")
         env = assert(c:request("crm.item.list", { entityTypeId = 1, order = { id = "ASC" }, start = 75 }))
         assert.equal(51, env.result.items[1].id)
         assert.equal(100, env.next)
         local _, err = c:request("crm.item.list", { entityTypeId = 1, filter = { [">ID"] = 1 } })
         assert.equal("INVALID_FILTER", err.code)     -- "ID" → "I_D" without the converter's cache
      end)
   end)

   describe("user.get", function()
      it("order = { ID = 'ASC' } goes as sort/order strings: every user once, by ID", function()
         pp.setup(c, { seed = { user = 333 } })
         local rows = assert(c:all("user.get", { order = { ID = "ASC" } }))
         local _, dups = census(rows)
         assert.equal(0, dups)
         assert.equal(333, #rows)
         for i = 2, #rows do assert.is_true(tonumber(rows[i].ID) > tonumber(rows[i - 1].ID)) end
         local starts = pp.state(c).starts["user.get"]
         for _, s in ipairs(starts) do assert.equal("-1", s) end
      end)

      it("a top-level filter stays the filter (FILTER would replace it); FILTER works too", function()
         pp.setup(c, { seed = { user = 260 } })
         local active = 0
         for id = 1, 260 do if id % 5 ~= 0 then active = active + 1 end end
         for _, params in ipairs({ { ACTIVE = true }, { FILTER = { ACTIVE = true } },
                                   { ACTIVE = true, sort = "ID", order = "ASC" } }) do
            local rows = assert(c:all("user.get", params))
            local seen, dups = census(rows)
            assert.equal(0, dups)
            assert.equal(active, #rows)
            assert.is_nil(seen["5"])
            for _, row in ipairs(rows) do assert.is_true(row.ACTIVE) end
         end
      end)

      it("sort = NAME, order = DESC: offset pages at multiples of 50, in NAME order, each once", function()
         pp.setup(c, { seed = { user = 275 } })
         local params = { sort = "NAME", order = "DESC", select = { "NAME" } }
         local rows = assert(c:all("user.get", params, { parallel = 2 }))
         local _, dups = census(rows)
         assert.equal(0, dups)
         assert.equal(275, #rows)
         for i = 2, #rows do assert.is_true(rows[i - 1].NAME > rows[i].NAME) end
         starts_aligned(pp.state(c).starts["user.get"], "user.get")
      end)

      it("a user.get sorting by two fields is refused before any request", function()
         assert.has_error(function() c:list("user.get", { order = { NAME = "ASC", ID = "ASC" } }) end)
      end)

      it("rows inserted in the middle of its own order while it runs: originals once, none twice", function()
         local n = 400
         local inserts = {}
         for i = 1, 6 do inserts[i] = { NAME = "A" .. i } end
         for _, params in ipairs({ {}, { sort = "NAME", order = "ASC" } }) do
            pp.setup(c, { seed = { user = n }, mutations = { { after = 2, table = "user", insert = inserts } } })
            local rows = assert(c:all("user.get", params, { parallel = 2 }))
            local seen, dups = census(rows)
            assert.equal(0, dups)
            for id = 1, n do assert.equal(1, seen[tostring(id)], "user " .. id) end
         end
      end)

      it("a method that ignores the order the keyset scan sends fails the export rather than lose rows", function()
         pp.setup(c, { seed = { user = 180 } })
         local rows, err = c:all("user.get", {}, { sort = false }) -- as if user.get took an order table
         assert.is_nil(rows)
         assert.equal("export_order", err.code)
      end)
   end)

   describe("shapes", function()
      it("crm.item.list: result.items, an integer id, lowercase id in filter and order", function()
         pp.setup(c, { seed = { item = 260 } })
         local rows = assert(c:all("crm.item.list", { entityTypeId = 1, select = { "id", "title" } }))
         local seen, dups = census(rows, "id")
         assert.equal(0, dups)
         assert.equal(260, #rows)
         assert.is_true(seen["1"] == 1 and seen["260"] == 1)
         rows = assert(c:all("crm.item.list", { entityTypeId = 1, order = { id = "ASC" }, filter = { [">=id"] = 11 } }))
         assert.equal(250, #rows)
         for i = 2, #rows do assert.is_true(rows[i].id > rows[i - 1].id) end
         rows = assert(c:all("crm.item.list", { entityTypeId = 1, order = { title = "DESC" } }))
         seen, dups = census(rows, "id")
         assert.equal(0, dups)
         assert.equal(1, seen["260"])
         assert.equal(260, #rows)
         for i = 2, #rows do assert.is_true(rows[i - 1].title > rows[i].title) end
      end)

      it("crm.item.list with the key spelled ID is refused by the portal, and the export says so", function()
         pp.setup(c, { seed = { item = 60 } })
         local rows, err = c:all("crm.item.list", { entityTypeId = 1 }, { key = "ID" })
         assert.is_nil(rows)
         assert.matches("^INVALID_", err.code) -- order { I_D = … } or filter { [">I_D"] = … }
      end)

      it("tasks.task.list: result.tasks, a string id, ID in filter and order", function()
         pp.setup(c, { seed = { task = 180 } })
         local rows = assert(c:all("tasks.task.list", { select = { "ID", "TITLE" } }))
         local _, dups = census(rows, "id")
         assert.equal(0, dups)
         assert.equal(180, #rows)
         assert.is_string(rows[1].id)
         rows = assert(c:all("tasks.task.list", { order = { ID = "ASC" }, filter = { ["<ID"] = 101 } }))
         assert.equal(100, #rows)
         for i = 2, #rows do assert.is_true(tonumber(rows[i].id) > tonumber(rows[i - 1].id)) end
         rows = assert(c:all("tasks.task.list", { order = { TITLE = "ASC" } }, { parallel = 1 }))
         assert.equal(180, #rows)
         for i = 2, #rows do assert.is_true(rows[i - 1].title < rows[i].title) end
      end)

      it("crm.type.list: result.types, rows with a lowercase id; a wrapper left out is an error, not 0 rows", function()
         pp.setup(c, { seed = { type = 140 } })
         local rows = assert(c:all("crm.type.list"))
         local seen, dups = census(rows, "id")
         assert.equal(0, dups)
         assert.equal(140, #rows)
         assert.equal(1, seen["140"])
         rows = assert(c:all("crm.type.list", { order = { title = "ASC" } }))
         assert.equal(140, #rows)
         local _, err = c:all("crm.type.list", {}, { wrapper = false })
         assert.equal("export_shape", err.code)
         _, err = c:all("crm.type.list", { order = { title = "ASC" } }, { wrapper = false })
         assert.equal("export_shape", err.code)
      end)

      it("rows without the id field stop the export with an error instead of vanishing", function()
         pp.setup(c, { seed = { task = 30 } })
         local rows, err = c:all("tasks.task.list", {}, { id = "ID" }) -- the rows say "id"
         assert.is_nil(rows)
         assert.equal("export_no_id", err.code)
      end)
   end)

   describe("offset paging", function()
      it("asks only for multiples of 50, round after round; each row once, in the caller's order", function()
         local n = 2777 -- with parallel = 1, a round is 50 pages: three rounds after the first page
         pp.setup(c, { seed = { lead = n } })
         local params = { order = { TITLE = "ASC" }, select = { "TITLE" } }
         local rows = assert(c:all("crm.lead.list", params, { parallel = 1 }))
         local _, dups, order = census(rows)
         assert.equal(0, dups)
         assert.equal(n, #rows)
         local want = by_name("T", n)
         for i = 1, n do assert.equal(tostring(want[i]), order[i]) end
         starts_aligned(pp.state(c).starts["crm.lead.list"], "crm.lead.list")
      end)

      it("rows inserted before the offset meanwhile: none twice, every original once, in order", function()
         local inserts = {}
         for i = 1, 7 do inserts[i] = { TITLE = "A" .. i } end -- sort before every seeded title
         pp.setup(c, { seed = { lead = 600 }, mutations = { { after = 4, table = "lead", insert = inserts } } })
         local rows = assert(c:all("crm.lead.list", { order = { TITLE = "ASC" } }))
         local seen, dups, order = census(rows)
         assert.equal(0, dups)
         for id = 1, 600 do assert.equal(1, seen[tostring(id)], "lead " .. id) end
         local want, k = by_name("T", 600), 0
         for _, id in ipairs(order) do
            if tonumber(id) <= 600 then
               k = k + 1
               assert.equal(tostring(want[k]), id)
            end
         end
         -- the shift pushed the last originals past the first total: the pages went on to it
         assert.is_true(has(pp.state(c).starts["crm.lead.list"], "600"))
      end)

      it("rows deleted before the offset meanwhile: the ID pass brings back the skipped rows, last", function()
         local first = by_name("T", 600)
         local gone = {}
         for i = 1, 7 do gone[i] = first[i] end -- on page 0, read before they go
         local config = { seed = { lead = 600 }, mutations = { { after = 4, table = "lead", delete = gone } } }
         pp.setup(c, config)
         local rows = assert(c:all("crm.lead.list", { order = { TITLE = "ASC" } }))
         local seen, dups, order = census(rows)
         assert.equal(0, dups)
         local final = pp.state(c).ids.lead
         for _, id in ipairs(final) do assert.equal(1, seen[tostring(id)], "lead " .. id) end
         local at = {}
         for i, id in ipairs(order) do at[id] = i end
         -- the rows the shift skipped are those first on page 4 before the deletes: 200..206
         for i = 201, 207 do assert.is_true(at[tostring(first[i])] > #rows - 7, "recovered last") end
         -- without the ID pass the same run loses them: the hazard the pass is there for
         pp.setup(c, config)
         rows = assert(c:all("crm.lead.list", { order = { TITLE = "ASC" } }, { verify = false }))
         seen = census(rows)
         local lost = 0
         for _, id in ipairs(final) do if not seen[tostring(id)] then lost = lost + 1 end end
         assert.equal(7, lost)
      end)

      it("deletes that end the list before a page already due: page 1 again, not taken twice", function()
         local last = by_name("T", 600)
         local gone = {}
         for i = 541, 600 do gone[#gone + 1] = last[i] end -- the last 60 in TITLE order: no shift
         pp.setup(c, { seed = { lead = 600 }, mutations = { { after = 4, table = "lead", delete = gone } } })
         local rows = assert(c:all("crm.lead.list", { order = { TITLE = "ASC" } }, { verify = false }))
         local seen, dups, order = census(rows)
         assert.equal(0, dups)
         assert.equal(540, #rows)
         for i = 1, 540 do assert.equal(tostring(last[i]), order[i]) end
         assert.equal(1, seen[tostring(last[1])])
         assert.is_true(has(pp.state(c).starts["crm.lead.list"], "550")) -- answered with page 1
      end)

      it("a count capped by the CRM row-count threshold: pages stop at the cap, the ID pass brings the rest", function()
         pp.setup(c, { seed = { lead = 430 }, count_cap = 300 })
         local rows = assert(c:all("crm.lead.list", { order = { TITLE = "ASC" } }))
         local seen, dups, order = census(rows)
         assert.equal(0, dups)
         assert.equal(430, #rows)
         for id = 1, 430 do assert.equal(1, seen[tostring(id)], "lead " .. id) end
         local want = by_name("T", 430)
         for i = 1, 300 do assert.equal(tostring(want[i]), order[i]) end -- in order up to the cap
         pp.setup(c, { seed = { lead = 430 }, count_cap = 300 })
         rows = assert(c:all("crm.lead.list", { order = { TITLE = "ASC" } }, { verify = false }))
         assert.equal(300, #rows)
      end)

      it("a method that sends no total: pages until a short one, in order", function()
         pp.setup(c, { seed = { lead = 321 }, uncounted = true })
         local rows = assert(c:all("crm.lead.list", { order = { TITLE = "ASC" } }, { verify = false }))
         local _, dups, order = census(rows)
         assert.equal(0, dups)
         assert.equal(321, #rows)
         local want = by_name("T", 321)
         for i = 1, 321 do assert.equal(tostring(want[i]), order[i]) end
      end)

      it("deletes, then inserts, before the offset (the total ends where it began): each row once", function()
         -- the deletes pull rows back past the offset (skips), the inserts push them on (repeats)
         local inserts = {}
         for i = 1, 5 do inserts[i] = { TITLE = "A" .. i } end
         local first = by_name("T", 500)
         local config = { seed = { lead = 500 }, mutations = {
            { after = 3, table = "lead", delete = { first[1], first[2], first[3], first[4], first[5] } },
            { after = 6, table = "lead", insert = inserts } } }
         pp.setup(c, config)
         local rows = assert(c:all("crm.lead.list", { order = { TITLE = "ASC" } }))
         local seen, dups = census(rows)
         assert.equal(0, dups)
         for _, id in ipairs(pp.state(c).ids.lead) do
            if tonumber(id) <= 500 then assert.equal(1, seen[tostring(id)], "lead " .. id) end
         end
      end)
   end)

   describe("keyset scan", function()
      it("rows inserted and deleted while chains run in parallel: originals once, none twice", function()
         local inserts = {}
         for i = 1, 20 do inserts[i] = { TITLE = "A" .. i } end
         local gone = {}
         for id = 700, 760 do gone[#gone + 1] = id end
         pp.setup(c, { seed = { lead = 3000 }, mutations = {
            { after = 2, table = "lead", insert = inserts, delete = gone } } })
         local rows = assert(c:all("crm.lead.list", { select = { "ID" } }))
         local seen, dups = census(rows)
         assert.equal(0, dups)
         local final = set_of(pp.state(c).ids.lead)
         for id = 1, 3000 do
            if final[tostring(id)] then assert.equal(1, seen[tostring(id)], "lead " .. id) end
         end
         for id in pairs(seen) do assert.is_true(tonumber(id) <= 3020) end
      end)
   end)
end)
