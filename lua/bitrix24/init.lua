-- bitrix24: Bitrix24 REST API and events for Lua. The C mechanism lives in bitrix24.core;
-- this module is the policy layer users require, and the one place that looks at where the
-- library runs: inside nginx a client talks through bitrix24.transport.ngx (never blocking the
-- worker), elsewhere through libcurl (bitrix24.transport.curl).
local core = require "bitrix24.core"
local client = require "bitrix24.client"
local ngx_adapter = require "bitrix24.ngx"

local type = type
local pairs = pairs
local require = require
local tostring = tostring

local _M = {
   _VERSION = core._VERSION,
   core = core,
}

-- bitrix24.Error: what runtime failures return (see bitrix24.error)
_M.Error = require "bitrix24.error"

-- bitrix24.router{ … }: an outgoing-webhook receiver (see bitrix24.router)
_M.router = require("bitrix24.router").new
_M.event = require "bitrix24.event"

-- bitrix24.app{ client_id, client_secret, … }: an OAuth application on many portals (see
-- bitrix24.app); loaded when first used
function _M.app(opts)
   return require("bitrix24.app").new(opts)
end

-- bitrix24.reconcile: the reconciler behind the router's `reconcile` option (its dates and states)
_M.reconcile = require "bitrix24.reconcile"

-- Whether this Lua state runs inside nginx's http subsystem (ngx_lua).
_M.in_nginx = ngx_adapter.available

-- The default transport for client options: bitrix24.transport.ngx inside nginx (timeout,
-- connect_timeout, verify, ca_file, proxy, thread_pool, user_agent), bitrix24.transport.curl
-- elsewhere (the same but thread_pool).
function _M.transport(opts)
   opts = opts or {}
   local user_agent = opts.user_agent or ("bitrix24-lua/" .. tostring(core._VERSION))
   if _M.in_nginx() then
      return require("bitrix24.transport.ngx").new{
         timeout = opts.timeout, connect_timeout = opts.connect_timeout, verify = opts.verify,
         ca_file = opts.ca_file, proxy = opts.proxy, thread_pool = opts.thread_pool, user_agent = user_agent,
      }
   end
   return require("bitrix24.transport.curl").new{
      timeout = opts.timeout, connect_timeout = opts.connect_timeout, verify = opts.verify,
      ca_file = opts.ca_file, proxy = opts.proxy, user_agent = user_agent,
   }
end

-- bitrix24.client(url | opts): a REST client (see bitrix24.client) on opts.transport, else on
-- the default transport. Raises on misuse.
function _M.client(opts)
   if type(opts) == "string" then opts = { url = opts } end
   if type(opts) == "table" and opts.transport == nil then
      local with = {}
      for k, v in pairs(opts) do with[k] = v end
      with.transport = _M.transport(opts)
      opts = with
   end
   return client.new(opts)
end

return _M
