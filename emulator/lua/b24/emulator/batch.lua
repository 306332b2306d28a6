-- b24.emulator.batch: the portal's batch method. Up to 50 "method?query" commands run in the
-- order sent, each able to reference earlier results ($result[label][…], $next[label],
-- $total[label], $time[label][…], $error[label][…]); the answer has result, result_error,
-- result_total, result_next and result_time keyed by label.
local json = require "b24.emulator.json"
local labels = require "b24.emulator.labels"
local request = require "b24.emulator.request"
local storage = require "b24.emulator.store"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local string_match = string.match
local string_gmatch = string.gmatch
local string_find = string.find
local string_sub = string.sub
local string_gsub = string.gsub
local string_rep = string.rep
local string_char = string.char
local string_lower = string.lower
local string_upper = string.upper
local next = next
local table_sort = table.sort
local math_huge = math.huge
local to_text = storage.to_text
local method_name = request.method_name

local _M = {}

local MAX = 50
-- rest_provider.php methodsBatch: $arResult's keys, in the order rest_util.php
-- processBatchStructure joins them into processBatchElement's pattern, and the section of each.
local REF_KINDS = { "result", "next", "total", "time", "error" }
local SECTION_OF = { result = "result", next = "result_next", total = "result_total", time = "result_time",
                     error = "result_error" }

-- The references of a parameter value as rest_util.php processBatchElement's
-- preg_match_all("/\$(result|next|total|time|error)([^\s]*)/i") finds them: { text, kind,
-- path }, the text running to the next white space; kind as written (the match is
-- case-insensitive, the lookup in $arResult is not); path the non-empty [segments] of the rest.
local function references(s)
   local out, i = {}, 1
   while true do
      local at = string_find(s, "$", i, true)
      if not at then return out end
      local kind
      for _, k in ipairs(REF_KINDS) do
         local written = string_sub(s, at + 1, at + #k)
         if string_lower(written) == k then kind = written; break end
      end
      if kind then
         local rest = string_match(s, "^%S*", at + 1 + #kind)
         local path = {}
         for seg in string_gmatch(rest, "%[([^%]]+)%]") do path[#path + 1] = seg end
         out[#out + 1] = { text = "$" .. kind .. rest, kind = kind, path = path }
         i = at + 1 + #kind + #rest
      else
         i = at + 1
      end
   end
end

-- PHP's isset($r[$key]) then $r[$key], on a result as the emulator holds it: a Lua list is a PHP
-- list (key "0" its first item), a string is indexed by integer offsets, null is not set.
local function step(r, key)
   local n = string_match(key, "^%-?%d+$") and tonumber(key)
   if type(r) == "table" then
      local v
      if n and r[1] ~= nil then v = r[n + 1] else v = r[key] end
      if v == nil and n and r[1] == nil then v = r[n] end
      if v == nil or v == json.null then return nil end
      return v
   end
   if type(r) == "string" and n then
      if n < 0 then n = #r + n end
      if n >= 0 and n < #r then return string_sub(r, n + 1, n + 1) end
   end
   return nil
end

-- processBatchElement's walk: from $arResult[kind], key after key while isset; a missing key
-- stops the walk where it is, so the value is the deepest one found (the whole label's result,
-- or the whole section), not an empty string. A kind not in lower case names nothing (null).
local function lookup(sections, kind, path)
   local section = SECTION_OF[kind]
   if not section then return nil end
   local r = sections[section]
   for _, key in ipairs(path) do
      local v = step(r, key)
      if v == nil then break end
      r = v
   end
   return r
end

local function plain(s)
   return (string_gsub(s, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- processBatchElement on a parameter value: a value that is one whole reference becomes the
-- referenced value, of its type (null when nothing); within a longer text a number or string
-- replaces every copy of the reference's text (str_replace), anything else leaves it as written.
local function substitute_value(v, sections)
   if not string_find(v, "$", 1, true) then return v end
   for _, ref in ipairs(references(v)) do
      if #ref.path > 0 then
         local r = lookup(sections, ref.kind, ref.path)
         if ref.text == v then
            v = r
         elseif type(v) == "string" then
            if type(r) == "number" then r = to_text(r) end
            if type(r) == "string" then
               v = string_gsub(v, plain(ref.text), (string_gsub(r, "%%", "%%%%")))
            end
         end
      end
   end
   return v
end

-- processBatchStructure: every value, at any depth, goes through processBatchElement; so does
-- every key, with an empty pattern of kinds that finds null: a key that is one whole "$…[…]"
-- becomes "" (PHP's null key), other keys stay.
local function substitute(params, sections)
   local out = {}
   for k, v in pairs(params) do
      if type(k) == "string" and string_match(k, "^%$%S*%[[^%]]+%]%S*$") then k = "" end
      if type(v) == "table" then
         out[k] = substitute(v, sections)
      elseif type(v) == "string" then
         out[k] = substitute_value(v, sections)
      else
         out[k] = v
      end
   end
   return out
end

-- Labels in the order the portal runs them: the order sent (`sent`, read from the request text),
-- as rest_provider.php methodsBatch's foreach does, whatever the references. When the order is
-- unknown: natural order ("c2" before "c10"), a label moved later only when it references a
-- label not yet run.
local function run_order(commands, sent)
   local order_of = {}
   for label in pairs(commands) do order_of[#order_of + 1] = label end
   local function natural(s)
      return (string_gsub(s, "%d+", function(d) return string_rep("0", 20 - #d) .. d end))
   end
   table_sort(order_of, function(a, b) return natural(a) < natural(b) end)
   if sent then
      local rank = {}
      for i, label in ipairs(sent) do rank[label] = rank[label] or i end
      table_sort(order_of, function(a, b)
         local ra, rb = rank[a] or math_huge, rank[b] or math_huge
         if ra ~= rb then return ra < rb end
         return natural(a) < natural(b)
      end)
      return order_of
   end
   local deps = {}
   for _, label in ipairs(order_of) do
      deps[label] = {}
      -- references sit in the command's query string, usually percent-encoded (http_build_query)
      local text = string_gsub(commands[label], "%%(%x%x)", function(h) return string_char(tonumber(h, 16)) end)
      for _, dep in string_gmatch(text, "%$(%a+)%[([^%]]*)%]") do
         if commands[dep] and dep ~= label then deps[label][#deps[label] + 1] = dep end
      end
   end
   local done, order = {}, {}
   while #order < #order_of do
      local pick
      for _, label in ipairs(order_of) do
         if not done[label] then
            local ready = true
            for _, dep in ipairs(deps[label]) do if not done[dep] then ready = false end end
            if ready then pick = label; break end
            pick = pick or label
         end
      end
      if not pick then break end
      done[pick] = true
      order[#order + 1] = pick
   end
   return order
end

-- PHP's truthiness of a request value ("0", "", 0, false, null and [] are false).
local function truthy(v)
   if v == nil or v == false or v == json.null or v == "" or v == "0" or v == 0 then return false end
   if type(v) == "table" then return next(v) ~= nil end
   return true
end

-- methodsBatch's array_change_key_case($arQuery, CASE_UPPER): the parameter `name` under a key
-- of any case (cmd, CMD, Cmd).
local function any_case(params, name)
   if params[name] ~= nil then return params[name] end
   for k, v in pairs(params) do
      if type(k) == "string" and string_upper(k) == name then return v end
   end
   return nil
end

local TOO_LONG = { error = "ERROR_BATCH_LENGTH_EXCEEDED", error_description = "Max batch length exceeded" }
local NOT_ALLOWED = { error = "ERROR_BATCH_METHOD_NOT_ALLOWED",
                      error_description = "Method is not allowed for batch usage" }
local NOT_FOUND = { error = "ERROR_METHOD_NOT_FOUND", error_description = "Method not found!" }

-- The batch method of `portal` (its methods, call(name, params) and the request being answered):
-- params.cmd (label -> "method?query"), params.halt (stop at the first error), under keys of any
-- case, halt true as PHP reads a value ("N" and "false" are true). As
-- rest/classes/general/rest_provider.php (CRestProvider::methodsBatch) runs it: each command is a call of
-- its own method (CRestServerBatchItem), blocked or billed as that method; an error, a blocked
-- method's OPERATION_TIME_LIMIT included, goes to result_error and the next commands still run
-- unless halt is set.
function _M.run(portal, params)
   local cmd = any_case(params, "CMD")
   local commands, skipped = {}, {}
   if type(cmd) == "table" then
      for k, v in pairs(cmd) do
         local label = type(k) == "number" and tostring(k - 1) or tostring(k)
         -- a command that is not a string is passed over, though it counts towards the 50
         if type(v) == "string" then commands[label] = v else commands[label] = ""; skipped[label] = true end
      end
   end
   local halt = truthy(any_case(params, "HALT"))
   local sections = { result = {}, result_error = {}, result_total = {}, result_next = {}, result_time = {} }
   local order = run_order(commands, portal.request and labels.of(portal.request))
   for i, label in ipairs(order) do
      local err
      if i > MAX then
         err = TOO_LONG
      elseif not skipped[label] then
         local method, query = string_match(commands[label], "^([^?]*)%??(.*)$")
         method = method_name(method)
         if method == "batch" then
            err = NOT_ALLOWED
         elseif not portal.methods[method] then
            err = NOT_FOUND
         else
            -- the command's parameters keep the order sent, as PHP's parse_str does
            local raw = request.form_parameters(query)
            local sub = request.keep_order(substitute(raw, sections), raw)
            local result, meta, time = portal:call(method, sub)
            if result == nil then
               -- an error has no time, so no result_time (rest.php processException); a blocked
               -- method's error is OPERATION_TIME_LIMIT here, in an HTTP 200 batch
               err = { error = meta.error, error_description = meta.error_description }
            else
               sections.result[label] = result
               sections.result_total[label] = meta.total
               sections.result_next[label] = meta.next
               sections.result_time[label] = time
            end
         end
      end
      if err then
         sections.result_error[label] = err
         if halt then break end
      end
   end
   for name, map in pairs(sections) do sections[name] = json.php_map(map, order) end
   return sections
end

return _M
