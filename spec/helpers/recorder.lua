-- A recording receiver for emulator specs: a `b24 serve` that writes each delivery (path,
-- content type, body) on a line of a file and logs msg="recorded EVENT/N" (N: the how-many-th
-- delivery of that event).
--   local recorder = require "helpers.recorder"
--   local srv = recorder.start()               -- srv:stop() at the end
--   local d = srv.delivery("ONCRMLEADADD", 2)  -- { path, content_type, body, form }
local b24 = require "helpers.b24"
local core = require "bitrix24.core"

local M = {}

function M.start()
   local dir = b24.tmpdir()
   local file = dir .. "/bodies.txt"
   local srv = b24.start{ args = { "--workers", "1" }, script = ([[
      local host = require "b24.host"
      local seen = {}
      return function(req)
         local f = assert(io.open(%q, "ab"))
         f:write(req.path, "\t", req.headers["content-type"] or "", "\t", req.body, "\n")
         f:close()
         local name = req.body:match("^event=([%%w_]+)") or "?"
         seen[name] = (seen[name] or 0) + 1
         host.log("info", "recorded " .. name .. "/" .. seen[name])
         return 200, { ["Content-Type"] = "text/plain" }, "ok"
      end]]):format(file) }
   -- waits for the n-th (1st by default) delivery of event name (a bounded wait: the log ends
   -- when the receiver stops); returns it as { path, content_type, body, form }
   function srv.delivery(name, n)
      n = n or 1
      assert(srv:wait_log("recorded " .. name .. "/" .. n .. '"'), name .. " did not arrive")
      local k = 0
      for line in io.lines(file) do
         local path, ct, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
         if body:match("^event=([%w_]+)") == name then
            k = k + 1
            if k == n then
               return { path = path, content_type = ct, body = body, form = core.form_decode(body) }
            end
         end
      end
      error(name .. "/" .. n .. " recorded but not in the file")
   end
   return srv
end

return M
