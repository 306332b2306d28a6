-- Reconciliation under `b24 serve` (issue 17), over real HTTP: `b24 emulate --faults drop=0.3`
-- posts the events of N changes of leads, deals, smart-process items and tasks to a `b24 serve`
-- whose router reconciles them (the host state: checkpoints and marks in the inbox database, the
-- pass a host job); about a third of the deliveries are lost on the way. After one pass every
-- change is handled, and for every object the last handler run started after its last change
-- (it fetched the object's final title). The portal's clock runs in +09:30, ours in UTC.
if rawget(_G, "jit") then return end -- long scenario: the Lua 5.4 pass runs it

local bitrix24 = require "bitrix24"
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local core = require "bitrix24.core"

local TOKEN = "spec0reconcile0serve0token0001"
local DOMAIN = "emulator.bitrix24.test"

-- The handler script: every CRM and task event fetches its object and appends
-- "entity|id|title|reconciled" to $RECONCILE_FILE; ONSPECWAKE wakes the reconciliation job.
local SCRIPT = [[
local bitrix24 = require "bitrix24"
local host = require "b24.host"
local file = os.getenv("RECONCILE_FILE")
local client = bitrix24.client{ url = os.getenv("PORTAL_URL"), limit = false }
local router = bitrix24.router{ token = os.getenv("APP_TOKEN"), client = client,
   reconcile = { "crm.lead", "crm.deal", "tasks.task", { "crm.item", entityTypeId = 128 },
                 every = 3600, lookback = 3600, host = host, domain = os.getenv("PORTAL_DOMAIN") } }
local ENTITY = { ONCRMLEAD = "lead", ONCRMDEAL = "deal", ONTASK = "task", ONCRMDYNAMICITEM = "item" }
router:on("*", function(event)
   if event.name == "ONSPECWAKE" then return host.wake("bitrix24.reconcile") end
   local stem, action = event.name:match("^(%u+)(ADD)$")
   if not stem then stem, action = event.name:match("^(%u+)(UPDATE)$") end
   local entity = stem and ENTITY[stem]
   if not entity then return end -- deletes, ONCRMDYNAMICITEMADD_128 and the like
   local object = assert(event:fetch(client))
   local f = assert(io.open(file, "ab"))
   f:write(entity, "|", event.id, "|", object.TITLE or object.title, "|", tostring(event.reconciled == true), "\n")
   f:close()
end)
return router
]]

describe("reconciliation under b24 serve with events lost on the way", function()
   local portal, serve, admin, dir, file

   setup(function()
      dir = b24.tmpdir()
      file = dir .. "/handled.txt"
      local port = b24.free_port()
      portal = b24.emulate{ args = { "--code", emu.CODE, "--token", TOKEN, "--domain", DOMAIN,
                                     "--events-to", "http://127.0.0.1:" .. port .. "/", "--faults", "drop=0.3",
                                     "--random-seed", "17", "--timezone", "+09:30", "--enterprise",
                                     "--time-scale", "1000" } }
      admin = bitrix24.client{ url = portal.base .. emu.path(""), limit = false }
      serve = b24.start{ script = SCRIPT, args = { "--listen", "127.0.0.1:" .. port, "--workers", "4",
                                                   "--inbox", dir .. "/inbox.sqlite" },
                         env = "RECONCILE_FILE=" .. b24.quote(file) .. " APP_TOKEN=" .. TOKEN ..
                               " PORTAL_DOMAIN=" .. DOMAIN .. " PORTAL_URL=" .. b24.quote(portal.base .. emu.path("")) }
   end)
   teardown(function()
      if serve then serve:stop() end
      if portal then portal:stop() end
      if dir then os.execute("rm -rf " .. b24.quote(dir)) end
   end)

   -- The handled lines: last[entity|id] = { title, reconciled } of the last run, runs, reconciled runs.
   local function handled()
      local last, runs, reconciled = {}, 0, 0
      local f = io.open(file, "rb")
      if not f then return last, runs, reconciled end
      for line in f:lines() do
         local entity, id, title, rec = line:match("^(%a+)|(%d+)|(.*)|(%a+)$")
         if entity then
            last[entity .. "|" .. id] = { title = title, reconciled = rec == "true" }
            runs = runs + 1
            if rec == "true" then reconciled = reconciled + 1 end
         end
      end
      f:close()
      return last, runs, reconciled
   end

   local function many(calls)
      local results, errors = admin:call_many(calls)
      assert.is_nil(errors)
      return results
   end

   it("handles every change after one pass, each object's last run after its last change", function()
      -- the first pass, at start: nothing changed yet (its checkpoint: the portal's clock)
      local first = assert(serve:wait_log("bitrix24.reconcile: pass"))
      assert.matches("reconciled=none", first)
      -- N changes: adds, then two rounds of updates, each round in batches of 50
      local objects = {} -- { key, kind, id } in the order made
      local adds = {}
      for i = 1, 30 do adds[#adds + 1] = { "crm.lead.add", { fields = { TITLE = "lead " .. i .. " v0" } } } end
      for i = 1, 15 do adds[#adds + 1] = { "crm.deal.add", { fields = { TITLE = "deal " .. i .. " v0" } } } end
      for i = 1, 10 do
         adds[#adds + 1] = { "tasks.task.add", { fields = { TITLE = "task " .. i .. " v0", RESPONSIBLE_ID = 1 } } }
      end
      for i = 1, 10 do
         adds[#adds + 1] = { "crm.item.add", { entityTypeId = 128, fields = { title = "item " .. i .. " v0" } } }
      end
      for i, r in ipairs(many(adds)) do
         local method = adds[i][1]
         local kind = method:match("^crm%.(%a+)%.add$") or "task"
         local id = type(r) == "table" and (r.task and r.task.id or r.item and r.item.id) or r
         id = string.format("%d", tonumber(id))
         objects[#objects + 1] = { key = kind .. "|" .. id, kind = kind, id = id }
      end
      local final = {}
      for round = 1, 2 do
         local updates = {}
         for _, o in ipairs(objects) do
            local title = o.key .. " v" .. round
            final[o.key] = title
            if o.kind == "task" then
               updates[#updates + 1] = { "tasks.task.update", { taskId = o.id, fields = { TITLE = title } } }
            elseif o.kind == "item" then
               updates[#updates + 1] = { "crm.item.update", { entityTypeId = 128, id = o.id,
                                                              fields = { title = title } } }
            else
               updates[#updates + 1] = { "crm." .. o.kind .. ".update", { id = o.id, fields = { TITLE = title } } }
            end
         end
         many(updates)
      end
      -- one pass, woken through the router (the job's own interval is an hour)
      local wake = core.form_encode{ event = "ONSPECWAKE", data = { FIELDS = { ID = "1" } }, ts = tostring(os.time()),
                                     auth = { domain = DOMAIN, application_token = TOKEN } }
      local res = assert(serve:request{ method = "POST", path = "/", body = wake,
                                        headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } })
      assert.equal(200, res.status)
      local pass = assert(serve:wait_log('reconciled="'))
      -- every object's last handled run saw its final title (a watchdog, not a pause: the runs
      -- the pass committed are handled by the inbox's workers as they come)
      local deadline = os.time() + 60
      local last, runs, reconciled
      repeat
         last, runs, reconciled = handled()
         local done = true
         for key, title in pairs(final) do
            if not last[key] or last[key].title ~= title then done = false end
         end
         if not done then
            assert(os.time() < deadline, "not every change was handled: " .. serve:log())
            core.sleep(0.1)
         end
      until done
      -- the pass did the healing: objects whose last run is a reconciled one, counted in its line
      local healed = 0
      for key in pairs(final) do if last[key].reconciled then healed = healed + 1 end end
      assert.is_true(healed > 0, "no object needed the pass")
      assert.is_true(reconciled > 0 and runs > reconciled)
      for _, entity in ipairs({ "crm.lead", "crm.deal", "tasks.task", "crm.item.128" }) do
         assert.matches(entity:gsub("%.", "%%.") .. "/update=%d+", pass)
      end
      -- exactly two passes ran: the one at start and the woken one
      local passes = 0
      for _, line in ipairs(serve.lines) do
         if line:find("bitrix24.reconcile: pass", 1, true) then passes = passes + 1 end
      end
      assert.equal(2, passes)
      -- the counters in /metrics
      local metrics = assert(serve:request{ method = "GET", path = "/metrics" })
      assert.matches('b24_reconciled_total{entity="crm.lead",kind="update"} %d+', metrics.body)
      assert.matches('b24_reconcile_pass_requests %d+', metrics.body)
      -- no secret in the logs
      assert.is_nil(serve:log():find(TOKEN, 1, true))
      assert.is_nil(portal:log():find(emu.CODE, 1, true))
   end)
end)
