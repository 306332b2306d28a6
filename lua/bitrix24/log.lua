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

-- One logfmt line on stderr.
function _M.stderr(level, msg, fields)
   io_stderr:write(log_line("logfmt", tostring(level), msg, fields))
end

-- The writer a host installs for every log of this Lua state: b24 installs its own logger (its
-- --log-format, --log-level and masking) when it builds a state. The library never looks for a
-- host; a host that wants the library's lines hands its writer here.
local installed = nil
local installed_once = nil
local said = {} -- once's keys, for this state, when no host gives its own

-- use(fn [, once]): installs fn as the state's writer (nil removes it), and once (a
-- function(key) → true the first time) when the host has one that spans its states.
function _M.use(fn, once)
   if fn ~= nil and type(fn) ~= "function" then
      error("bad argument #1 to 'use' (a function(level, msg, fields) expected)", 2)
   end
   if once ~= nil and type(once) ~= "function" then
      error("bad argument #2 to 'use' (a function(key) expected)", 2)
   end
   installed, installed_once = fn, once
end

-- once(key) → true the first time key is given (in the host's process when it installed its
-- own once, else in this Lua state): a warning said at load is said once.
function _M.once(key)
   if installed_once then return installed_once(key) == true end
   if said[key] then return false end
   said[key] = true
   return true
end

-- The default of bitrix24.router and of handlers' ctx.log: the installed writer, else stderr.
function _M.default(level, msg, fields)
   (installed or _M.stderr)(level, msg, fields)
end

-- The default of bitrix24.client: the installed writer, else nothing (a library used from a
-- plain script stays quiet unless it is given a log).
function _M.quiet(level, msg, fields)
   if installed then installed(level, msg, fields) end
end

return _M
