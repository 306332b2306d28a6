-- ../shared beside the repository (the captured Bitrix24 vectors), found from this file's own
-- path, since CI clones the repository elsewhere; B24_SHARED overrides.
local M = {}

local function find()
   local env = os.getenv("B24_SHARED")
   if env and env ~= "" then return env end
   local src = debug.getinfo(1, "S").source
   local root = (src:sub(1, 1) == "@" and src:sub(2) or ""):match("^(.*)/spec/helpers/[^/]*$") or "."
   return root .. "/../shared"
end

M.dir = find()

-- The whole file at path; raises when it cannot be read.
function M.read(path)
   local f = assert(io.open(path, "rb"))
   local s = f:read("*a")
   f:close()
   return s
end

-- A file under shared/vectors/, e.g. M.vector("events/webhook-oncrmdealadd.json").
function M.vector(name)
   return M.read(M.dir .. "/vectors/" .. name)
end

return M
