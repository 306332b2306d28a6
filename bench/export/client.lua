-- Our full export of the seeded leads (bench/export.sh), run by `b24 run`: prints one JSON line
-- {"peer","rows","unique","seconds"}.   b24 run bench/export/client.lua URL CA_FILE
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"
local cjson = require "cjson"

local url, ca = ...
local SELECT = { "ID", "TITLE", "NAME", "LAST_NAME", "STATUS_ID", "OPPORTUNITY" }
local b24 = bitrix24.client{ url = url, ca_file = ca }
local t0 = core.now()
local rows, seen, unique = 0, {}, 0
for row, err in b24:list("crm.lead.list", { select = SELECT }) do
   if not row then
      io.stderr:write("export failed: ", tostring(err), "\n")
      return 1
   end
   rows = rows + 1
   if not seen[row.ID] then seen[row.ID] = true; unique = unique + 1 end
end
local seconds = core.now() - t0
print(cjson.encode({ peer = "bitrix24 (Lua)", rows = rows, unique = unique, seconds = seconds }))
return 0
