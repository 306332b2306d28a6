-- b24.emulator.batch: the portal's batch method. Up to 50 "method?query" commands run in the
-- order sent, each able to reference earlier results ($result[label][…], $result_next[label],
-- $result_total[label]); the answer has result, result_error, result_total, result_next and
-- result_time keyed by label.
local core = require "bitrix24.core"
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
local table_sort = table.sort
local table_concat = table.concat
local math_huge = math.huge
local form_decode = core.form_decode
local to_text = storage.to_text
local method_name = request.method_name

local _M = {}

local MAX = 50
local REF_KINDS = { result = "result", next = "result_next", total = "result_total" }

-- Reads a reference such as $result[c0][49][ID] at position i of s: kind, label, path, end.
local function read_ref(s, i)
   local kind, label, j = string_match(s, "^%$(%a+)%[([^%]]*)%]()", i)
   if not kind or not REF_KINDS[kind] then return nil end
   local path = {}
   while true do
      local seg, k = string_match(s, "^%[([^%]]*)%]()", j)
      if not seg then break end
      path[#path + 1] = seg
      j = k
   end
   return kind, label, path, j - 1
end

local function lookup(sections, kind, label, path)
   local v = sections[REF_KINDS[kind]][label]
   for _, seg in ipairs(path) do
      if type(v) ~= "table" then return nil end
      local n = tonumber(seg)
      if n and v[n + 1] ~= nil and v[1] ~= nil then v = v[n + 1] else v = v[seg] end
   end
   return v
end

-- Replaces references in the string values of params: a whole-value reference keeps its type.
local function substitute(v, sections)
   if type(v) == "table" then
      for k, item in pairs(v) do v[k] = substitute(item, sections) end
      return v
   end
   if type(v) ~= "string" or not string_find(v, "$", 1, true) then return v end
   local kind, label, path, last = read_ref(v, 1)
   if kind and last == #v then
      local got = lookup(sections, kind, label, path)
      if got == nil then return "" end
      return got
   end
   local out, i = {}, 1
   while i <= #v do
      local k, l, p, e
      if string_sub(v, i, i) == "$" then k, l, p, e = read_ref(v, i) end
      if k then
         out[#out + 1] = to_text(lookup(sections, k, l, p)) or ""
         i = e + 1
      else
         out[#out + 1] = string_sub(v, i, i)
         i = i + 1
      end
   end
   return table_concat(out)
end

-- Labels in the order the portal runs them: the order sent (`sent`, read from the request text),
-- as a portal does, or natural order ("c2" before "c10") when unknown; a label is moved later only
-- when it references a label not yet run.
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
      table_sort(order_of, function(a, b) return (rank[a] or math_huge) < (rank[b] or math_huge) end)
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

local TOO_LONG = { error = "ERROR_BATCH_LENGTH_EXCEEDED", error_description = "Max batch length exceeded" }
local NOT_ALLOWED = { error = "ERROR_BATCH_METHOD_NOT_ALLOWED",
                      error_description = "Method is not allowed for batch usage" }
local NOT_FOUND = { error = "ERROR_METHOD_NOT_FOUND", error_description = "Method not found!" }

-- The batch method of `portal` (its methods, call(name, params) and the request being answered):
-- params.cmd (label -> "method?query"), params.halt (stop at the first error). As
-- rest/classes/general/rest_provider.php (CRestProvider::batch) runs it: each command is a call of
-- its own method (CRestServerBatchItem), blocked or billed as that method; an error, a blocked
-- method's OPERATION_TIME_LIMIT included, goes to result_error and the next commands still run
-- unless halt is set.
function _M.run(portal, params)
   local cmd = params.cmd
   local commands = {}
   if type(cmd) == "table" then
      for k, v in pairs(cmd) do
         local label = type(k) == "number" and tostring(k - 1) or tostring(k)
         commands[label] = to_text(v) or ""
      end
   end
   local halt = to_text(params.halt)
   halt = halt == "1" or halt == "Y" or halt == "true"
   local sections = { result = {}, result_error = {}, result_total = {}, result_next = {}, result_time = {} }
   local order = run_order(commands, portal.request and labels.of(portal.request))
   for i, label in ipairs(order) do
      local err
      if i > MAX then
         err = TOO_LONG
      else
         local method, query = string_match(commands[label], "^([^?]*)%??(.*)$")
         method = method_name(method)
         if method == "batch" then
            err = NOT_ALLOWED
         elseif not portal.methods[method] then
            err = NOT_FOUND
         else
            local sub = substitute(form_decode(query) or {}, sections)
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
