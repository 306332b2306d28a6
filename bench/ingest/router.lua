-- bench/ingest: the durable-mode handler script. A bitrix24.router verifying the vector's
-- application token (INGEST_TOKEN), with one cheap handler for every event. Under `b24 serve`
-- it is stored in the inbox before the 200 (--inbox PATH) or handled inside the request (--sync).
local bitrix24 = require "bitrix24"

local router = bitrix24.router{ token = assert(os.getenv("INGEST_TOKEN"), "INGEST_TOKEN is not set") }
router:on("*", function() end)
return router
