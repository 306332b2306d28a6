-- The round trip: REST calls to `b24 emulate` make it POST events (protocol.md §6) to
-- `b24 serve examples/handlers.lua` with its durable inbox, whose handlers log each event.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"

local TOKEN = "roundtrip0app0token0000000000001"

local function id_of(body)
   return emu.str(body.result)
end

describe("round trip: b24 emulate → events → b24 serve examples/handlers.lua", function()
   local dir, handlers, portal
   setup(function()
      dir = b24.tmpdir()
      handlers = b24.start{ script_path = b24.root .. "/examples/handlers.lua",
                            args = { "--inbox", dir .. "/inbox.sqlite" },
                            env = "B24_APP_TOKEN=" .. TOKEN }
      portal = b24.emulate{ args = { "--code", emu.CODE, "--token", TOKEN,
                                     "--events-to", handlers:url("/"), "--domain", "roundtrip.bitrix24.test" } }
   end)
   teardown(function()
      if portal then portal:stop() end
      if handlers then handlers:stop() end
      os.execute("rm -rf " .. b24.quote(dir))
   end)

   it("a lead added, updated and deleted over REST reaches the handlers as three events", function()
      local status, body = emu.call(portal, "crm.lead.add", { fields = { TITLE = "Round trip" } })
      assert.equal(200, status)
      local id = id_of(body)
      local line = assert(handlers:wait_log("event=ONCRMLEADADD id=" .. id))
      assert.matches("domain=roundtrip.bitrix24.test", line, 1, true)
      assert.matches("level=info msg=event attempt=1", line, 1, true)
      assert.equal(200, (emu.call(portal, "crm.lead.update", { id = id, fields = { TITLE = "Renamed" } })))
      assert(handlers:wait_log("event=ONCRMLEADUPDATE id=" .. id))
      assert.equal(200, (emu.call(portal, "crm.lead.delete", { id = id })))
      assert(handlers:wait_log("event=ONCRMLEADDELETE id=" .. id))
   end)

   it("a deal and a task reach their handlers with their ids", function()
      local _, deal = emu.call(portal, "crm.deal.add", { fields = { TITLE = "Deal" } })
      assert(handlers:wait_log("event=ONCRMDEALADD id=" .. id_of(deal)))
      local status, task = emu.call(portal, "tasks.task.add", { fields = { TITLE = "Task", RESPONSIBLE_ID = 1 } })
      assert.equal(200, status)
      local task_id = emu.str(task.result.task.id)
      assert(handlers:wait_log("event=ONTASKADD id=" .. task_id))
   end)

   it("each lead a batch adds is one delivery", function()
      local status, body = emu.call(portal, "batch", { halt = 1, cmd = {
         a = "crm.lead.add?fields[TITLE]=one", b = "crm.lead.add?fields[TITLE]=two" } })
      assert.equal(200, status)
      local r = body.result.result
      assert(handlers:wait_log("event=ONCRMLEADADD id=" .. emu.str(r.a)))
      assert(handlers:wait_log("event=ONCRMLEADADD id=" .. emu.str(r.b)))
   end)

   it("a portal with another token is refused: logged on both sides, no event handled", function()
      local other = b24.emulate{ args = { "--code", emu.CODE, "--token", "another0token0000000000000000001",
                                          "--events-to", handlers:url("/"), "--seed-leads", "0" } }
      finally(function() other:stop() end)
      local from = #handlers.lines + 1
      local _, body = emu.call(other, "crm.contact.add", { fields = { NAME = "Forged" } })
      local line = assert(other:wait_log("post refused; not retried"))
      assert.matches("status=401", line, 1, true)
      assert(handlers:wait_log("status=401"))
      assert.not_matches("event=ONCRMCONTACTADD id=" .. id_of(body) .. " ", handlers:log(from) .. " ", 1, true)
      assert.not_matches("another0token", other:log() .. handlers:log(), 1, true)
   end)

   it("never writes the application token to either log", function()
      assert.not_matches(TOKEN, handlers:log(), 1, true)
      assert.not_matches(TOKEN, portal:log(), 1, true)
   end)
end)
