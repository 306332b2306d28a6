-- A loopback portal whose list methods page as the platform's PHP does (rounded starts, page 1
-- past the end, user.get's SORT/ORDER strings, the shapes of crm.item.list and tasks.task.list)
-- and whose rows change while an export runs: spec/helpers/paging_portal_main.lua under
-- `b24 serve --workers 1`.
--   local pp = require "helpers.paging_portal"
--   local srv = pp.start()                   -- srv:stop() at the end
--   pp.setup(client, { seed = { lead = 600 }, mutations = { { after = 4, table = "lead",
--                      insert = { { TITLE = "A1" } }, delete = { 3, 5 } } } })
--   pp.state(client) → { ids = { lead = {…} }, starts = { ["crm.lead.list"] = { "0", "50", … } } }
local b24 = require "helpers.b24"

local M = {}

function M.start()
   return b24.start{ script_path = b24.root .. "/spec/helpers/paging_portal_main.lua", args = { "--workers", "1" } }
end

function M.setup(client, config)
   return assert(client:call("spec.setup", config))
end

function M.state(client)
   return assert(client:call("spec.state"))
end

-- The seeded value of the name field of row id (TITLE "T…", NAME "N…"), as the portal makes it.
function M.name(prefix, id)
   return string.format("%s%07d", prefix, (id * 7919) % 10007)
end

return M
