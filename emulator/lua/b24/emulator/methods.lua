-- b24.emulator.methods: the portal's methods outside the CRM entities, tasks and batch: the
-- user methods (b24.emulator.users) and the small methods an integration calls.
local users = require "b24.emulator.users"

local _M = {}

-- Registers the methods of this group into the portal's method table.
function _M.register(portal, methods)
   users.register(portal, methods)
end

return _M
