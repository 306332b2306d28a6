-- b24.emulator.persist: the --data file of the emulated portal. Every store with its id counters
-- in one JSON file, replaced atomically (written beside it, then renamed over it).
local json = require "b24.emulator.json"

local type = type
local pairs = pairs
local tostring = tostring
local error = error
local io_open = io.open
local os_remove = os.remove
local os_rename = os.rename

local _M = {}

local FORMAT, VERSION = "bitrix24-emulator", 1

-- Writes the stores (kind -> b24.emulator.store) to path: true | nil, err.
function _M.save(path, stores)
   local state = { format = FORMAT, version = VERSION, stores = {} }
   for kind, store in pairs(stores) do state.stores[kind] = store:export() end
   local text = json.encode_plain(state)
   if not text then return nil, "cannot encode the state" end
   local tmp = path .. ".tmp"
   local f, err = io_open(tmp, "wb")
   if not f then return nil, err end
   local ok, werr = f:write(text)
   local closed, cerr = f:close()
   if not ok or not closed then
      os_remove(tmp)
      return nil, tostring(werr or cerr)
   end
   local renamed, rerr = os_rename(tmp, path)
   if not renamed then
      os_remove(tmp)
      return nil, tostring(rerr)
   end
   return true
end

-- Fills the stores (kind -> store) from path: true when the file existed, false when it does not;
-- raises error(msg, 0) for a file that is not an emulator data file.
function _M.load(path, stores)
   local f = io_open(path, "rb")
   if not f then return false end
   local text = f:read("*a")
   f:close()
   local state = json.decode(text)
   if type(state) ~= "table" or state.format ~= FORMAT or type(state.stores) ~= "table" then
      error("--data " .. path .. " is not an emulator data file", 0)
   end
   for kind, store in pairs(stores) do
      if type(state.stores[kind]) == "table" then store:import(state.stores[kind]) end
   end
   return true
end

return _M
