-- The receiver of bench/body_memory.sh: a router with the application token the bench sends
-- (BODY_MEMORY_TOKEN), and a handler that does nothing, so what the server spends on a
-- body is the router's (accept, and dispatch on the durable path) and the host's.
local bitrix24 = require "bitrix24"

local router = bitrix24.router{ token = assert(os.getenv("BODY_MEMORY_TOKEN"), "BODY_MEMORY_TOKEN unset") }
router:on("*", function() end)
return router
