-- b24.emulator.options: the emulator's command-line options (`b24 emulate`, emulator.main), their
-- usage text, and argv parsed into the options table of emulator.new. A bad option raises
-- error("b24 emulate: …", 0); a bad secret is never echoed.
local events = require "b24.emulator.events"
local oauth = require "b24.emulator.oauth"
local faults = require "b24.emulator.faults"

local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local error = error
local string_format = string.format
local string_match = string.match
local string_gmatch = string.gmatch
local string_sub = string.sub
local string_lower = string.lower
local table_concat = table.concat
local math_floor = math.floor
local math_huge = math.huge

local _M = {}

local PREFIX = "b24 emulate: "

-- option, key, kind, value name, description; kinds check and convert the value (flag takes none).
local OPTIONS = {
   { "--user-id", "user_id", "id", "N", "the webhook's user id (1)" },
   { "--code", "code", "secret", "CODE", "the webhook code (a fixed development code by default)" },
   { "--token", "token", "secret", "TOKEN", "the application token sent with events" },
   { "--events-to", "events_to", "url", "URL", "POST events to this URL (repeatable)" },
   { "--events", "events", "events", "NAMES",
     "the events the --events-to before it gets, e.g. ONCRMLEADADD,ONCRMDEAL* (all by default)" },
   { "--domain", "domain", "text", "DOMAIN", "the portal domain in events (" .. events.DEFAULT_DOMAIN .. ")" },
   { "--member-id", "member_id", "text", "ID", "auth[member_id] in events (derived from the domain)" },
   { "--app", "app", "app", "CLIENT_ID:SECRET",
     "an application installed on the portal (OAuth tokens at /oauth/token/, auth= on /rest/METHOD)" },
   { "--app-code", "app_code", "text", "CODE", "what app.info answers as the application's CODE (its CLIENT_ID)" },
   { "--install-to", "install_to", "url", "URL",
     "POST the application's ONAPPINSTALL here at the first request served (repeatable)" },
   { "--token-ttl", "token_ttl", "positive", "SECONDS", "an access token's life on the portal's clock (3600)" },
   { "--oauth-latency", "oauth_latency_ms", "amount", "MS", "milliseconds the OAuth server's answers take (0)" },
   { "--oauth-server", "oauth_server", "url", "URL",
     "another b24 emulate --app that mints and checks this portal's tokens (as oauth.bitrix.info; needs --app)" },
   { "--public-url", "public_url", "url", "URL",
     "the base URL the portal is reached at (from the first request's Host by default)" },
   { "--offline-extended", "offline_extended", "onoff", "on|off",
     "the feature rest_offline_extended: event.offline.get with clear=0 (on, as on commercial plans)" },
   { "--offline-retention", "offline_retention", "positive", "SECONDS",
     "how long an offline event row is kept (2952000, the platform's ~34 days)" },
   { "--seed-leads", "seed_leads", "count", "N", "start with N leads (0)" },
   { "--seed-tasks", "seed_tasks", "count", "N", "start with N tasks (0)" },
   { "--seed-deals", "seed_deals", "count", "N", "start with N deals (0)" },
   { "--seed-contacts", "seed_contacts", "count", "N", "start with N contacts (0)" },
   { "--seed-companies", "seed_companies", "count", "N", "start with N companies (0)" },
   { "--timezone", "timezone", "offset", "+HH:MM", "the portal's time zone, in dates it prints and parses (+03:00)" },
   { "--latency", "latency_ms", "amount", "MS", "milliseconds added to each request (0)" },
   { "--row-cost", "row_cost_us", "amount", "US", "microseconds of processing per row returned (0)" },
   { "--count-cost", "count_cost_us", "amount", "US", "microseconds per row counted for a page's total (0)" },
   { "--faults", "faults", "faults", "SPEC", "e.g. 503=0.2,500=0.05,reset=0.02,slow=0.01,drop=0.3 (probabilities)" },
   { "--slow-delay", "slow_delay", "amount", "SECONDS", "seconds a slow fault holds the answer (10)" },
   { "--method-latency", "method_latency", "methods", "SPEC",
     "METHOD[@N]=MS,…: the method (its N-th call only) runs, its answer leaves MS later" },
   { "--method-stall", "method_stall", "methods", "SPEC",
     "METHOD[@N]=MS,…: the call is held MS, then refused 503 without running" },
   { "--enterprise", "enterprise", "flag", "", "leaky bucket 250/5 instead of 50/2" },
   { "--operating-limit", "operating_limit", "positive", "SECONDS",
     "operating seconds per method per window (420, the platform's default; plans set their own)" },
   { "--operating-window", "operating_window", "positive", "SECONDS",
     "the operating limit's window, ten baskets (600)" },
   { "--time-scale", "time_scale", "positive", "X", "how much faster the limits' clock runs (1)" },
   { "--data", "data", "text", "PATH", "persist entities to this JSON file" },
   { "--random-seed", "random_seed", "integer", "N", "seed of the fault dice (drop included)" },
}
local BY_NAME = {}
for _, o in ipairs(OPTIONS) do BY_NAME[o[1]] = o end

-- The options, one a line, as `b24 emulate --help` lists them after the host's own.
_M.USAGE = (function()
   local lines = { "emulator options:" }
   for _, o in ipairs(OPTIONS) do
      local arg = o[4] == "" and "" or " " .. o[4]
      lines[#lines + 1] = string_format("  %-28s %s", o[1] .. arg, o[5])
   end
   return table_concat(lines, "\n")
end)()

-- Raises a usage error: error("b24 emulate: " .. msg, 0).
function _M.fail(msg)
   error(PREFIX .. msg, 0)
end
local fail = _M.fail

-- msg as a usage error: prefixed with "b24 emulate: " unless it is one already.
function _M.usage_error(msg)
   msg = tostring(msg)
   if string_sub(msg, 1, #PREFIX) ~= PREFIX then msg = PREFIX .. msg end
   return msg
end

-- Each kind: the converted value or nil, and what a good value is.
local CHECK = {
   id = function(v)
      local n = tonumber(v)
      return n and n >= 1 and n == math_floor(n) and n or nil, "a positive integer"
   end,
   count = function(v)
      local n = tonumber(v)
      return n and n >= 0 and n == math_floor(n) and n or nil, "an integer >= 0"
   end,
   integer = function(v)
      local n = tonumber(v)
      return n and n == math_floor(n) and n or nil, "an integer"
   end,
   amount = function(v)
      local n = tonumber(v)
      return n and n >= 0 and n < math_huge and n or nil, "a number >= 0"
   end,
   positive = function(v)
      local n = tonumber(v)
      return n and n > 0 and n < math_huge and n or nil, "a number > 0"
   end,
   -- on|off (also yes/no, true/false, 1/0) as a boolean
   onoff = function(v)
      local t = ({ on = true, yes = true, ["true"] = true, ["1"] = true,
                   off = false, no = false, ["false"] = false, ["0"] = false })[string_lower(v)]
      return t, "on or off"
   end,
   text = function(v) return v ~= "" and v or nil, "a non-empty value" end,
   offset = function(v)
      local sign, h, m = string_match(v, "^([+-])(%d%d):?(%d%d)$")
      local ok = sign and tonumber(h) <= 14 and tonumber(m) < 60
      return ok and (sign .. h .. ":" .. m) or nil, "a UTC offset like +03:00"
   end,
   secret = function(v) return string_match(v, "^[%w_%-]+$") and v or nil, "letters, digits, - or _" end,
   -- CLIENT_ID:SECRET, kept as { client_id, secret }; the secret is never echoed
   app = function(v)
      local client_id, secret = oauth.parse_app(v)
      if not client_id then return nil, secret end
      return { client_id = client_id, secret = secret }, nil
   end,
   url = function(v)
      return string_match(v, "^[hH][tT][tT][pP][sS]?://[^/%s]+") and v or nil, "an http:// or https:// URL"
   end,
   faults = function(v)
      local f, err = faults.parse(v)
      if not f then fail("--faults: " .. err) end
      return f
   end,
   -- METHOD[@N]=MS,… (faults.parse_methods); repeated options add up
   methods = function(v)
      local rules, err = faults.parse_methods(v)
      if not rules then fail("method holds: " .. err) end
      return rules
   end,
   -- comma-separated names or prefixes ending in "*", each a documented event (events.pattern)
   events = function(v)
      local list = {}
      for item in string_gmatch(v, "[^,]+") do
         item = string_match(item, "^%s*(.-)%s*$")
         if item ~= "" then
            local p, err = events.pattern(item)
            if not p then fail("--events: " .. err) end
            list[#list + 1] = p
         end
      end
      return #list > 0 and list or nil, "event names or prefixes ending in *"
   end,
}

-- Parses emulator options (`--name value` or `--name=value`) into an options table for
-- emulator.new (events_to is always a list; events maps an events_to index to the patterns its
-- --events gave, the target before them).
function _M.parse(argv)
   local opts = { events_to = {}, events = {}, install_to = {} }
   local i = 1
   while i <= #argv do
      local arg = tostring(argv[i])
      local name, value = string_match(arg, "^(%-%-[%w-]+)=(.*)$")
      name = name or arg
      local o = BY_NAME[name]
      if not o then
         if string_sub(arg, 1, 1) == "-" then fail("unknown option " .. string_match(arg, "^[^=]*")) end
         fail("unexpected argument '" .. arg .. "'")
      end
      if o[3] == "flag" then
         if value then fail(name .. " takes no value") end
         opts[o[2]] = true
      else
         if not value then
            i = i + 1
            value = argv[i]
            if value == nil then fail(name .. " needs a value") end
            value = tostring(value)
         end
         local got, want = CHECK[o[3]](value)
         if got == nil then
            -- secrets are not echoed
            if o[3] == "secret" or o[3] == "app" then fail(name .. " needs " .. want) end
            fail(name .. " needs " .. want .. ", not '" .. value .. "'")
         end
         if o[2] == "events_to" then
            opts.events_to[#opts.events_to + 1] = got
         elseif o[2] == "install_to" then
            opts.install_to[#opts.install_to + 1] = got
         elseif o[3] == "methods" then
            local list = opts[o[2]] or {}
            for _, r in ipairs(got) do list[#list + 1] = r end
            opts[o[2]] = list
         elseif o[2] == "events" then
            local target = #opts.events_to
            if target == 0 then fail("--events needs an --events-to before it (the target it applies to)") end
            local list = opts.events[target] or {}
            for _, p in ipairs(got) do list[#list + 1] = p end
            opts.events[target] = list
         else
            opts[o[2]] = got
         end
      end
      i = i + 1
   end
   if #opts.install_to > 0 and not opts.app then fail("--install-to needs --app (the application installed)") end
   if opts.app_code and not opts.app then fail("--app-code needs --app") end
   if opts.oauth_server and not opts.app then fail("--oauth-server needs --app (the application it issues for)") end
   if opts.public_url then opts.public_url = string_match(opts.public_url, "^(.-)/*$") end
   return opts
end

return _M
