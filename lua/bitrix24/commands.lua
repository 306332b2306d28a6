-- bitrix24.commands: REST commands as the client sends them, the parts that need no client:
-- which methods are reads (safe to send again after an ambiguous failure), the order of a
-- batch's labelled commands (each after the commands it references), a batch answer read by
-- label, and, when blocked commands go again, which go and their $result references resolved
-- from the answers kept (rest/classes/general/rest_util.php processBatchElement). The client
-- (bitrix24.client) runs the requests; this module only computes.
local Error = require "bitrix24.error"
local core = require "bitrix24.core"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local rawget = rawget
local string_lower = string.lower
local string_find = string.find
local string_sub = string.sub
local string_gsub = string.gsub
local string_gmatch = string.gmatch
local string_match = string.match
local string_rep = string.rep
local table_concat = table.concat
local table_sort = table.sort
local json_encode = core.json_encode
local null = core.json_null

local _M = {}

-- Reads: safe to send again after an ambiguous failure. Everything else (add, update, delete,
-- set, bind, send, …) is a write unless the caller marks it safe.
local READ_VERBS = {
   get = true, list = true, fields = true, current = true, count = true, search = true,
   info = true, getlist = true, getfields = true, version = true, access = true, scope = true,
   methods = true, profile = true, settings = true, status = true, tail = true, find = true,
}

local function is_read(method)
   local verb = string_lower(string_match(method, "([^.]*)$") or "")
   if READ_VERBS[verb] then return true end
   if string_sub(verb, 1, 3) == "get" or string_sub(verb, 1, 4) == "list" then return true end
   return false
end

local function natural_key(s)
   return (string_gsub(s, "%d+", function(d) return string_rep("0", 20 - #d) .. d end))
end

-- The labels of a map of commands in an order where each referenced label runs first.
local function label_order(cmds, refs)
   local labels = {}
   for label in pairs(cmds) do labels[#labels + 1] = label end
   table_sort(labels, function(a, b) return natural_key(a) < natural_key(b) end)
   local done, order = {}, {}
   local function visit(label, depth)
      if done[label] or depth > #labels then return end
      done[label] = true
      for dep in pairs(refs[label]) do
         if cmds[dep] ~= nil and dep ~= label then visit(dep, depth + 1) end
      end
      order[#order + 1] = label
   end
   for _, label in ipairs(labels) do visit(label, 0) end
   return order
end

-- Collects the labels referenced by $result[…]/$next[…]/$total[…] in the string values of v.
local function collect_refs(v, into)
   if type(v) == "table" then
      for _, item in pairs(v) do collect_refs(item, into) end
   elseif type(v) == "string" and string_find(v, "$", 1, true) then
      for _, label in string_gmatch(v, "%$(%a+)%[([^%]]*)%]") do into[label] = true end
   end
   return into
end

-- v with fn applied to every value that is no table, copying only the tables on the way to a
-- value fn changed (past 100 levels a table is left as it is: the encoders refuse the nesting).
local function map_leaves(v, fn, depth)
   if type(v) ~= "table" then return fn(v) end
   if depth > 100 then return v end
   local copy
   for k, item in pairs(v) do
      local got = map_leaves(item, fn, depth + 1)
      if got ~= item then
         if not copy then
            copy = {}
            for k2, item2 in pairs(v) do copy[k2] = item2 end
         end
         copy[k] = got
      end
   end
   return copy or v
end


-- LuaJIT's int64_t and uint64_t cdata (123LL) in a command's parameters as their digits:
-- form_encode writes every value as text but takes no cdata.
local LUAJIT = type(rawget(_G, "jit")) == "table"
local function cdata_text(v)
   if type(v) ~= "cdata" then return v end
   return string_match(tostring(v), "^(%-?%d+)U?LL$") or v -- other cdata: form_encode refuses it
end
local function cdata_digits(v)
   return map_leaves(v, cdata_text, 0)
end


local function section_value(sec, label)
   if type(sec) ~= "table" then return nil end
   local v = sec[label]
   if v == nil and sec[1] ~= nil and string_match(label, "^%d+$") then v = sec[tonumber(label) + 1] end
   if v == null then v = nil end
   return v
end


local REF_SECTIONS = { result = true, next = true, total = true, time = true }

-- Reads a reference such as $result[c0][49][ID] at position i of s: section, label, path, end.
local function read_ref(s, i)
   local kind, label, j = string_match(s, "^%$(%a+)%[([^%]]*)%]()", i)
   if not kind then return nil end
   local path = {}
   while true do
      local seg, k = string_match(s, "^%[([^%]]*)%]()", j)
      if not seg then break end
      path[#path + 1] = seg
      j = k
   end
   return kind, label, path, j - 1
end

-- The value a reference names in the kept answers (st), or nil when they do not hold it.
local function ref_value(st, resent, kind, label, path)
   if not REF_SECTIONS[kind] or resent[label] then return nil end
   local v = st[kind][label]
   for _, seg in ipairs(path) do
      if type(v) ~= "table" then return nil end
      if v[1] ~= nil and string_match(seg, "^%d+$") then v = v[tonumber(seg) + 1] else v = v[seg] end
   end
   if v == null then return nil end
   return v
end

-- The references to other commands of the batch in a command's parameters: { kind, label, path, text }.
local function refs_of(v, labels, out, depth)
   if type(v) == "table" and depth <= 100 then
      for _, item in pairs(v) do refs_of(item, labels, out, depth + 1) end
   elseif type(v) == "string" then
      local i = string_find(v, "$", 1, true)
      while i do
         local kind, label, path, last = read_ref(v, i)
         if kind and REF_SECTIONS[kind] and labels[label] then
            out[#out + 1] = { kind = kind, label = label, path = path, text = string_sub(v, i, last) }
         end
         i = string_find(v, "$", i + 1, true)
      end
   end
   return out
end

-- Which commands go again after an answer with blocked ones (the labels in the order sent, and
-- as a set). A blocked command, or one a halt at a blocked one left unrun, goes again, and so
-- does a read that ran on a reference to one going again (its value was missing). A reference
-- naming nothing in the kept answers (a short page's [49], or a read that ran on such a value)
-- cannot be made right by sending again: a blocked command holding one gets NOT_RUN, and a read
-- that ran on one keeps the portal's answer. The rest ran: kept, and no write runs twice.
local function plan_resend(prep, job, st, blocked, halted_at)
   local set, void, labels = {}, {}, {}
   local was_blocked = {}
   for _, label in ipairs(blocked) do was_blocked[label] = true end
   local unrun = prep.halt and halted_at and was_blocked[halted_at]
   for _, label in ipairs(job.order) do
      local waiting = was_blocked[label] or (unrun and st.error[label] ~= nil and st.error[label].code == "NOT_RUN")
      local follows, missing = false, nil
      for _, ref in ipairs(refs_of(prep.params[label], prep.methods, {}, 0)) do
         if set[ref.label] then
            follows = true
         elseif void[ref.label] or ref_value(st, set, ref.kind, ref.label, ref.path) == nil then
            missing = missing or ref
         end
      end
      if missing then
         void[label] = true
         if waiting then
            st.error[label] = Error.new{ code = "NOT_RUN", method = prep.methods[label], label = label,
               description = "not sent again: " .. missing.text .. " names nothing in the answers" }
         end
      elseif waiting or (follows and is_read(prep.methods[label])) then
         set[label] = true
         labels[#labels + 1] = label
      elseif follows then
         void[label] = true -- a write that ran on a missing value: what refers to it cannot be right
      end
   end
   return labels, set
end

-- A command's parameter with its references to kept commands replaced as the portal replaces
-- them (rest/classes/general/rest_util.php processBatchElement): a whole-value reference by the
-- value, one inside a text by the value's text (numbers and strings only). A reference the kept
-- answers do not resolve, or to a command sent along, stays as written.
local function resolve_string(v, st, resent)
   if type(v) ~= "string" or not string_find(v, "$", 1, true) then return v end
   local kind, label, path, last = read_ref(v, 1)
   if kind and last == #v then
      local got = ref_value(st, resent, kind, label, path)
      if got == nil then return v end
      return got
   end
   local out, i, changed = {}, 1, false
   while i <= #v do
      local at = string_find(v, "$", i, true)
      if not at then
         out[#out + 1] = string_sub(v, i)
         break
      end
      out[#out + 1] = string_sub(v, i, at - 1)
      local k, l, p, e = read_ref(v, at)
      local got = k and ref_value(st, resent, k, l, p)
      if type(got) == "number" then got = json_encode(got) end
      if type(got) == "string" then
         out[#out + 1], i, changed = got, e + 1, true
      else
         out[#out + 1], i = "$", at + 1
      end
   end
   return changed and table_concat(out) or v
end

local function resolve_refs(v, st, resent)
   return map_leaves(v, function(leaf) return resolve_string(leaf, st, resent) end, 0)
end

_M.is_read = is_read
_M.label_order = label_order
_M.collect_refs = collect_refs
_M.map_leaves = map_leaves
_M.LUAJIT = LUAJIT
_M.cdata_digits = cdata_digits
_M.section_value = section_value
_M.plan_resend = plan_resend
_M.resolve_refs = resolve_refs

return _M
