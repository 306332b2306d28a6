-- b24.emulator.command: the entry `b24 emulate` runs. USAGE is the emulator's part of its --help;
-- handler(argv) is the handler b24 serve serves, a portal given the program's services: its log,
-- b24.emulator.post for outgoing events, and delayed answers ({ delay = seconds }).
-- A bad option raises error("b24 emulate: …", 0).
local emulator = require "b24.emulator"
local options = require "b24.emulator.options"

local _M = {}

_M.USAGE = options.USAGE

-- The handler of a portal built from argv (a list of strings), with b24's services.
function _M.handler(argv)
   return emulator.main(argv, {
      log = require("b24.host").log,
      post = require("b24.emulator.post").post,
      delay = true,
   })
end

return _M
