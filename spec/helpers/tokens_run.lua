-- `b24 run spec/helpers/tokens_run.lua PATH OPS_JSON` for spec/host_tokens_spec.lua: opens
-- b24.host.tokens(PATH) (PATH "-": no path) and prints what tokens_apply gives for OPS as one
-- JSON line; opening the store raising prints { open_error = msg }.
local cjson = require("cjson.safe").new()
local apply = require "tokens_apply"

local path, ops = ...
local ok, store = pcall(require("b24.host").tokens, path ~= "-" and path or nil)
if not ok then
   io.write(cjson.encode({ open_error = tostring(store) }), "\n")
   return 0
end
io.write(assert(cjson.encode(apply(store, assert(cjson.decode(ops))))), "\n")
return 0
