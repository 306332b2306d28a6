-- bitrix24: Bitrix24 REST API and events for Lua. The C mechanism lives in bitrix24.core;
-- this module is the policy layer users require.
local core = require "bitrix24.core"

local _M = {
   _VERSION = core._VERSION,
   core = core,
}

-- bitrix24.router{ … }: an outgoing-webhook receiver (see bitrix24.router)
_M.router = require("bitrix24.router").new
_M.event = require "bitrix24.event"

-- bitrix24.client(url | opts): the REST client (see bitrix24.client); bitrix24.Error its errors
local client = require "bitrix24.client"
_M.client = client.new
_M.Error = client.Error

return _M
