-- The hostile bodies of bench/body_memory.sh: writes each into DIR and prints one line per body,
-- "name<TAB>content type<TAB>auth<TAB>bytes<TAB>file", auth being "none" or "token".
--
--   lua5.4 bench/body_memory/bodies.lua DIR TOKEN MAX_BODY SIZE…
--
-- Every body carries event=ONCRMLEADADD, so a body with the valid token that the limits let
-- through is a delivery (200); the token goes last, where Bitrix24 puts auth. Each shape is
-- written at each SIZE (bytes, up to MAX_BODY; the body is as long as the shape allows without
-- going over), except the issue's body, which is written as seen (70,029 bytes) and as its
-- ~1 MB variant.
local dir, token, max_body = arg[1], arg[2], tonumber(arg[3])
assert(dir and token and max_body and arg[4], "usage: bodies.lua DIR TOKEN MAX_BODY SIZE...")
local sizes = {}
for i = 4, #arg do sizes[#sizes + 1] = assert(math.tointeger(tonumber(arg[i])), "bad size " .. arg[i]) end

local JSON, FORM = "application/json", "application/x-www-form-urlencoded"
local EVENT = "ONCRMLEADADD"

-- head .. unit × n .. tail, n the most units that keep the body within size
local function fill(head, unit, tail, size)
   local n = (size - #head - #tail) // #unit
   assert(n > 0, "size too small for the shape")
   return head .. string.rep(unit, n) .. tail
end

-- like fill, for units joined by a separator (no trailing one)
local function join(head, unit, sep, tail, size)
   local n = (size - #head - #tail + #sep) // (#unit + #sep)
   assert(n > 0, "size too small for the shape")
   return head .. string.rep(unit, n, sep) .. tail
end

local function json_auth(auth)
   return auth and (',"auth":{"application_token":"' .. token .. '"}') or ""
end

local function form_auth(auth)
   return auth and ("&auth%5Bapplication_token%5D=" .. token) or ""
end

local json_head = '{"event":"' .. EVENT .. '"'
local form_head = "event=" .. EVENT .. "&"

-- name -> function(size, auth) -> body; content type
local shapes = {
   { "json-issue", JSON, function(size, auth) -- {"event":…,"kkk…":[1,1,…]}
      -- as seen: a 30,000-byte key and 20,000 ones in 70,029 bytes; scaled by the same ratio
      local keys, ones = 30000, 20000
      if size > 70029 + 64 then keys, ones = size * 3 // 7, size * 2 // 7 end
      local tail = "]" .. json_auth(auth) .. "}"
      local body = json_head .. ',"' .. string.rep("k", keys) .. '":[' .. string.rep("1", ones, ",") .. tail
      while #body > size and size > 70029 + 64 do -- trim ones until it fits
         ones = ones - (#body - size) // 2 - 1
         body = json_head .. ',"' .. string.rep("k", keys) .. '":[' .. string.rep("1", ones, ",") .. tail
      end
      return body
   end },
   { "json-deep", JSON, function(size, auth) -- "d":[[[[…]]]]
      local tail = json_auth(auth) .. "}"
      local n = (size - #json_head - 5 - #tail) // 2
      return json_head .. ',"d":' .. string.rep("[", n) .. string.rep("]", n) .. tail
   end },
   { "json-keys", JSON, function(size, auth) -- "k1":1,"k2":1,…
      local parts, len = { json_head }, #json_head
      local tail = json_auth(auth) .. "}"
      local i = 1
      while true do
         local part = ',"k' .. i .. '":1'
         if len + #part + #tail > size then break end
         parts[#parts + 1] = part
         len = len + #part
         i = i + 1
      end
      parts[#parts + 1] = tail
      return table.concat(parts)
   end },
   { "json-objects", JSON, function(size, auth) -- "a":[{},{},…]
      return join(json_head .. ',"a":[', "{}", ",", "]" .. json_auth(auth) .. "}", size)
   end },
   { "json-arrays", JSON, function(size, auth) -- "a":[[],[],…]
      return join(json_head .. ',"a":[', "[]", ",", "]" .. json_auth(auth) .. "}", size)
   end },
   { "form-brackets", FORM, function(size, auth) -- a[][]…[]=&… (66 pairs of brackets: 1 MB is 7,750 pairs)
      return fill(form_head, "a" .. string.rep("[]", 66) .. "=&", "z=1" .. form_auth(auth), size)
   end },
   { "form-keys", FORM, function(size, auth) -- k1=1&k2=1&…
      local parts, len = { "event=" .. EVENT }, #("event=" .. EVENT)
      local tail = form_auth(auth)
      local i = 1
      while true do
         local part = "&k" .. i .. "=1"
         if len + #part + #tail > size then break end
         parts[#parts + 1] = part
         len = len + #part
         i = i + 1
      end
      parts[#parts + 1] = tail
      return table.concat(parts)
   end },
   { "form-pairs", FORM, function(size, auth) -- a=1&a=1&…
      return fill(form_head, "a=1&", "z=1" .. form_auth(auth), size)
   end },
   { "form-deep", FORM, function(size, auth) -- a[b][b]…[b]=1
      return fill(form_head .. "a", "[b]", "=1" .. form_auth(auth), size)
   end },
}

local function emit(name, content_type, auth, body)
   assert(#body <= max_body, name .. " is over MAX_BODY")
   local file = ("%s/%s.%s.%d"):format(dir, name, auth and "token" or "none", #body)
   local f = assert(io.open(file, "wb"))
   f:write(body)
   f:close()
   print(table.concat({ name, content_type, auth and "token" or "none", #body, file }, "\t"))
end

for _, shape in ipairs(shapes) do
   local name, content_type, make = shape[1], shape[2], shape[3]
   local these = sizes
   if name == "json-issue" then these = { 70029, math.min(1000000, max_body) } end
   for _, size in ipairs(these) do
      for _, auth in ipairs({ false, true }) do
         emit(name, content_type, auth, make(size, auth))
      end
   end
end
