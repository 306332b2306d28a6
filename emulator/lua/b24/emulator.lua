-- b24.emulator: a Bitrix24 portal in memory behind incoming-webhook URLs (protocol.md §1–§6), as
-- a handler for `b24 serve` / `b24 emulate`. State lives in the Lua state of one server thread:
-- run it with one worker (b24 emulate does). The host's services are injected, never looked up:
--   return require("b24.emulator").main({ "--seed-leads", "100" }, { log = …, post = …, delay = true })
-- The parts: portal (requests, methods, simulated time), options (argv), crm, tasks, store, batch,
-- labels, limits, faults, events, persist, request, json, xml; command is b24 emulate's entry.
local core = require "bitrix24.core"
local portal = require "b24.emulator.portal"
local options = require "b24.emulator.options"
local faults = require "b24.emulator.faults"
local xml = require "b24.emulator.xml"

local type = type
local pcall = pcall
local error = error
local math_randomseed = math.randomseed
local sleep = core.sleep

local _M = {}

_M.new = portal.new
_M.Portal = portal
_M.DEFAULT_CODE = portal.DEFAULT_CODE
_M.USAGE = options.USAGE
_M.parse_args = options.parse
_M.parse_faults = faults.parse
_M.to_xml = xml.encode

-- A function(request) for `b24 serve` answering as a portal built from opts (see portal.new).
-- With opts.delay true the host honours a handler's { delay = seconds } and gets it; otherwise
-- the handler sleeps the delay itself before answering.
function _M.handler(opts)
   local p = portal.new(opts)
   if opts and opts.delay then
      return function(request) return p:handle(request) end
   end
   return function(request)
      local status, headers, body, extra = p:handle(request)
      if extra and extra.delay then
         sleep(extra.delay)
         extra = extra.close and { close = true } or nil
      end
      return status, headers, body, extra
   end
end

-- The handler of a portal built from emulator options (argv, a list of strings as `b24 emulate`
-- takes them) and the host's services: { log = fn(level, msg, fields), post = fn(url, body,
-- headers) -> true | nil, reason, delay = true when the host honours { delay = seconds } }.
-- Without log: stderr; without post: no --events-to; without delay: the handler sleeps.
-- Bad options raise error("b24 emulate: …", 0).
function _M.main(argv, services)
   services = services or {}
   if type(services) ~= "table" then error("services: a table expected", 2) end
   local opts = options.parse(argv or {})
   if opts.random_seed then math_randomseed(opts.random_seed) end
   opts.log, opts.post, opts.delay = services.log, services.post, services.delay == true
   local ok, handler = pcall(_M.handler, opts)
   if not ok then error(options.usage_error(handler), 0) end
   return handler
end

return _M
