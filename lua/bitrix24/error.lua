-- bitrix24.error: bitrix24.Error, what every runtime failure of the Lua layer returns
-- (`nil, err`), and masking: the core's one rule for secrets (core.mask, the rule b24's logs
-- use too) after the exact secrets a client knows (its webhook code, its OAuth token).
--   local Error = require "bitrix24.error"   -- also bitrix24.Error
--   return nil, Error.new{ code = "timeout", description = "…", method = "crm.lead.get" }
local core = require "bitrix24.core"
local hints = require "bitrix24.hints"

local type = type
local pairs = pairs
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local string_gsub = string.gsub
local table_concat = table.concat
local table_sort = table.sort
local core_mask = core.mask

local _M = {}
local mt = { __index = _M, __name = "bitrix24.Error" }

-- bitrix24: METHOD[LABEL]: CODE: description (HTTP status, url, N attempts) — hint, absent parts
-- left out
function mt.__tostring(e)
   local parts = { "bitrix24: " }
   if e.method then parts[#parts + 1] = e.method .. (e.label and ("[" .. e.label .. "]") or "") .. ": " end
   local code = e.code
   if code == nil or code == "" then code = "(no code)" end
   parts[#parts + 1] = tostring(code)
   if e.description and e.description ~= "" then parts[#parts + 1] = ": " .. tostring(e.description) end
   local extra = {}
   if e.status then extra[#extra + 1] = "HTTP " .. tostring(e.status) end
   if e.url then extra[#extra + 1] = e.url end
   if e.attempts and e.attempts > 1 then extra[#extra + 1] = e.attempts .. " attempts" end
   if #extra > 0 then parts[#parts + 1] = " (" .. table_concat(extra, ", ") .. ")" end
   if e.hint then parts[#parts + 1] = " — " .. tostring(e.hint) end
   return table_concat(parts)
end

-- Error.new{ code, description, status, method, retryable, hint, … } → a bitrix24.Error (the
-- table itself, retryable false unless given). A code no retry can cure (bitrix24.hints) gets
-- its hint, what the user should do, unless one is given.
function _M.new(t)
   t = t or {}
   if t.retryable == nil then t.retryable = false end
   if t.hint == nil then t.hint = hints.hint(t.code, t.method) end
   return setmetatable(t, mt)
end

-- Whether v is a bitrix24.Error.
function _M.is(v)
   return getmetatable(v) == mt
end

local function plain_pattern(s)
   return (string_gsub(s, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- A function(s) → s with every occurrence of the given secrets (a table, holes allowed; strings
-- of 4 characters or more; others are ignored) replaced by ***, then the core's rule applied. nil stays nil.
function _M.masker(secrets)
   local known = {}
   for _, s in pairs(secrets or {}) do -- pairs: a secret may be nil, { code, nil, auth }
      if type(s) == "string" and #s >= 4 then known[#known + 1] = s end
   end
   table_sort(known, function(a, b) return #a > #b end) -- a longer secret may hold a shorter one
   local patterns = {}
   for i = 1, #known do patterns[i] = plain_pattern(known[i]) end
   return function(s)
      if s == nil then return nil end
      s = tostring(s)
      for i = 1, #patterns do s = string_gsub(s, patterns[i], "***") end
      return (core_mask(s))
   end
end

return _M
