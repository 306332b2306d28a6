-- bitrix24.log: the one log line of the Lua layer, and its default writer. A log is a
-- function(level, msg, fields) handed to the library (the `log` option of bitrix24.client and
-- bitrix24.router, `ctx.log` in handlers); hosts pass their own (b24: b24.host.log; nginx:
-- bitrix24.ngx.log). Every writer builds its line with core.log_line, the writer b24's C logger
-- uses too: `time=… level=… msg=… key=value…` (fields in key order) or JSON, values masked.
local core = require "bitrix24.core"

local tostring = tostring
local io_stderr = io.stderr
local log_line = core.log_line

local _M = {}

-- line(format, level, msg [, fields]) → one line ending in "\n": format "logfmt" or "json".
_M.line = log_line

-- The default log: one logfmt line on stderr.
function _M.stderr(level, msg, fields)
   io_stderr:write(log_line("logfmt", tostring(level), msg, fields))
end

return _M
