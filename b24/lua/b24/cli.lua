-- b24.cli: `b24 call` and `b24 export` (design.md "The host").
--   b24 call METHOD [JSON | key=value…]     one REST call, the JSON result on stdout
--   b24 export METHOD [JSON]                every row of a list method, one JSON line each
-- The webhook comes from --webhook URL or B24_WEBHOOK_URL. main(argv) returns the exit status:
-- 0 done, 1 a REST or runtime error (on stderr), 2 a usage error.
local bitrix24 = require "bitrix24"
local webhook = require "bitrix24.webhook"
local host = require "b24.host" -- b24's own: its log and isatty

local type = type
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local string_format = string.format
local string_sub = string.sub
local string_find = string.find
local string_gsub = string.gsub
local string_byte = string.byte
local string_rep = string.rep
local table_concat = table.concat
local math_floor = math.floor
local math_ceil = math.ceil
local math_min = math.min
local next = next

local _M = {}

local USAGE = [[
usage: b24 call [--webhook URL] METHOD [JSON | key=value…]
       b24 export [--webhook URL] [--parallel N] METHOD [JSON]
  The webhook URL (https://PORTAL/rest/USER/CODE/) comes from --webhook or B24_WEBHOOK_URL.
  call: parameters as one JSON object or as key=value pairs with PHP bracket keys
        (fields[NAME]=Ivan select[]=ID); prints the result as JSON.
  export: prints every row of a list method as one JSON object per line (NDJSON), with a
        progress line on stderr when it is a terminal.
]]

local core = bitrix24.core
local json_encode = core.json_encode
local json_decode = core.json_decode

-- Percent-encodes s for a form body; brackets stay as they are when keep_brackets.
local function form_escape(s, keep_brackets)
   local pattern = keep_brackets and "[^%w%-%._~%[%]]" or "[^%w%-%._~]"
   return (string_gsub(s, pattern, function(c) return string_format("%%%02X", string_byte(c)) end))
end

-- key=value… with PHP bracket keys → a parameter table (parse_str semantics), or nil, err.
local function pairs_to_params(args, from)
   local parts = {}
   for i = from, #args do
      local a = args[i]
      local eq = string_find(a, "=", 1, true)
      if not eq or eq == 1 then return nil, "expected key=value, got '" .. a .. "'" end
      parts[#parts + 1] = form_escape(string_sub(a, 1, eq - 1), true) .. "="
         .. form_escape(string_sub(a, eq + 1), false)
   end
   if #parts == 0 then return {} end
   local params, err = core.form_decode(table_concat(parts, "&"))
   if not params then return nil, "bad parameters: " .. tostring(err) end
   return params
end

-- A JSON object argument → a parameter table with every digit of its numbers (integers stay
-- integers), or nil, err. An argument is far below the codec's limits but for its count of values.
local function json_object(text)
   local v, err = json_decode(text, { max_pairs = #text + 1 })
   if v == nil and err then return nil, "the parameters are not JSON: " .. tostring(err) end
   if type(v) ~= "table" or v[1] ~= nil then return nil, "the parameters must be a JSON object" end
   return v
end

-- A value as one line of JSON with every digit of its numbers: an empty table is [] (PHP's empty
-- array, what the portal sends for an empty list) unless empty is "object"; nil when it cannot be.
local function to_json(v, empty)
   local ok, text = pcall(json_encode, v, { max_depth = 1000, empty = empty })
   if ok then return text end
   return nil
end

-- Splits options from positional arguments: opts, positional | nil, err.
local function parse(argv, from, env)
   local opts, pos = {}, {}
   local i = from
   while i <= #argv do
      local a = argv[i]
      if a == "--" then
         for j = i + 1, #argv do pos[#pos + 1] = argv[j] end
         break
      elseif a == "-h" or a == "--help" then
         opts.help = true
      elseif a == "--webhook" or a == "--parallel" then
         if argv[i + 1] == nil then return nil, a .. " needs a value" end
         opts[string_sub(a, 3)] = argv[i + 1]
         i = i + 1
      elseif string_sub(a, 1, 10) == "--webhook=" then
         opts.webhook = string_sub(a, 11)
      elseif string_sub(a, 1, 11) == "--parallel=" then
         opts.parallel = string_sub(a, 12)
      elseif string_sub(a, 1, 2) == "--" then
         return nil, "unknown option " .. a
      else
         pos[#pos + 1] = a
      end
      i = i + 1
   end
   if opts.parallel then
      local n = tonumber(opts.parallel)
      if not n or n < 1 or n > 64 or n ~= math_floor(n) then return nil, "--parallel needs a number from 1 to 64" end
      opts.parallel = n
   end
   opts.webhook = opts.webhook or (env and env("B24_WEBHOOK_URL"))
   if opts.webhook == "" then opts.webhook = nil end
   return opts, pos
end

local function make_client(opts)
   local hook, why = webhook.parse(opts.webhook) -- what is wrong with it, the code never shown
   if not hook then return nil, why end
   local ok, client = pcall(bitrix24.client, { url = hook.base, parallel = opts.parallel, log = host.log })
   if not ok then return nil, tostring(client) end
   return client
end

-- The export's progress line on a terminal: a bar when the total is known, rows/s and the ETA
-- the export measured (bitrix24.export's on_progress info), redrawn at most 5 times a second;
-- the last one, info.done, ends the line.
local function progress_printer(out)
   local last = -1
   return function(rows, estimate, info)
      local t = core.now()
      if not info.done and t - last < 0.2 then return end
      last = t
      local line = string_format("\r%d rows", rows)
      if estimate and estimate > 0 then
         local pct = math_min(100, rows * 100 / estimate)
         local width = 24
         local fill = math_floor(pct * width / 100)
         line = string_format("\r[%s%s] %3d%% %d of %d rows", string_rep("#", fill), string_rep(".", width - fill),
                              math_floor(pct), rows, estimate)
      end
      line = line .. string_format("  %.0f rows/s", info.rate or 0)
      if info.done then
         line = line .. string_format("  %.1fs", info.elapsed)
      elseif info.eta then
         line = line .. string_format("  ETA %ds", math_ceil(info.eta))
      end
      out:write(line, "\27[K")
      if info.done then out:write("\n") end
      out:flush()
   end
end

local function cmd_call(opts, pos, stdout, stderr)
   local method = pos[1]
   if not method then return nil, "call needs a METHOD" end
   local params, err
   if pos[2] and string_sub(pos[2], 1, 1) == "{" then
      if pos[3] then return nil, "give the parameters either as one JSON object or as key=value pairs" end
      params, err = json_object(pos[2])
   else
      params, err = pairs_to_params(pos, 2)
   end
   if not params then return nil, err end
   if not opts.webhook then return nil, "no webhook: pass --webhook URL or set B24_WEBHOOK_URL" end
   local client, cerr = make_client(opts)
   if not client then return nil, cerr end
   local ok, result, rerr = pcall(client.call, client, method, params)
   if not ok then return nil, tostring(client.mask(result)) end
   if result == nil and rerr then
      stderr:write("b24 call: ", tostring(rerr), "\n")
      return 1
   end
   local text = to_json(result)
   if not text then
      stderr:write("b24 call: the result cannot be printed as JSON\n")
      return 1
   end
   stdout:write(text, "\n")
   return 0
end

local function cmd_export(opts, pos, stdout, stderr)
   local method = pos[1]
   if not method then return nil, "export needs a METHOD" end
   if pos[3] then return nil, "export takes one JSON object of parameters" end
   local params = {}
   if pos[2] then
      local err
      params, err = json_object(pos[2])
      if not params then return nil, err end
   end
   if not opts.webhook then return nil, "no webhook: pass --webhook URL or set B24_WEBHOOK_URL" end
   local client, cerr = make_client(opts)
   if not client then return nil, cerr end
   local show = host.isatty(2) and progress_printer(stderr) or nil
   local ok, perr = pcall(function()
      for row, rerr in client:list(method, params, { on_progress = show }) do
         if not row then
            if show then stderr:write("\n") end
            stderr:write("b24 export: ", tostring(rerr), "\n")
            return 1
         end
         stdout:write(to_json(row, type(row) == "table" and next(row) == nil and "object" or nil) or "{}", "\n")
      end
   end)
   if not ok then return nil, tostring(client.mask(perr)) end
   if perr == 1 then return 1 end
   stdout:flush()
   return 0
end

-- main(argv[, io]) → exit status. argv = { "call" | "export", … }.
function _M.main(argv, streams)
   streams = streams or {}
   local stdout, stderr = streams.stdout or io.stdout, streams.stderr or io.stderr
   local env = streams.getenv or os.getenv
   argv = argv or {}
   local cmd = argv[1]
   if cmd == nil or cmd == "-h" or cmd == "--help" or cmd == "help" then
      local out = cmd and stdout or stderr
      out:write(USAGE)
      return cmd and 0 or 2
   end
   if cmd ~= "call" and cmd ~= "export" then
      stderr:write("b24: unknown command '", tostring(cmd), "'\n", USAGE)
      return 2
   end
   local opts, pos = parse(argv, 2, env)
   if opts and opts.help then
      stdout:write(USAGE)
      return 0
   end
   local status, err
   if opts then
      if cmd == "call" then status, err = cmd_call(opts, pos, stdout, stderr)
      else status, err = cmd_export(opts, pos, stdout, stderr) end
   else
      err = pos
   end
   if status == nil then
      stderr:write("b24 ", cmd, ": ", tostring(err), "\n", USAGE)
      return 2
   end
   return status
end

return _M
