-- b24.emulator.dates: dates as a portal prints and reads them, in the portal's time zone (the
-- --timezone option, "+03:00"). Printing is CRestUtil::ConvertDateTime (date('c') in the server's
-- zone: "2026-12-07T15:04:05+03:00"); reading is CRestUtil::unConvertDateTime, which hands the
-- value to PHP's strtotime: an ISO-8601 time with any offset, or a time without one in the
-- server's zone, and the d.m.Y forms a portal prints (rest/classes/general/rest_util.php).
-- Civil dates are computed here (days from 1970-01-01), not by os.date/os.time, whose zone is
-- the host's.
local type = type
local tonumber = tonumber
local string_format = string.format
local string_match = string.match
local math_floor = math.floor

local _M = {}

-- Seconds east of UTC of "+03:00" / "-0530"; nil for anything else.
function _M.offset_seconds(tz)
   local sign, h, m = string_match(tz or "", "^([+-])(%d%d):?(%d%d)$")
   if not sign then return nil end
   local s = tonumber(h) * 3600 + tonumber(m) * 60
   return sign == "-" and -s or s
end

-- Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
   if m <= 2 then y = y - 1 end
   local era = math_floor(y / 400)
   local yoe = y - era * 400
   local mp = (m + 9) % 12
   local doy = math_floor((153 * mp + 2) / 5) + d - 1
   local doe = yoe * 365 + math_floor(yoe / 4) - math_floor(yoe / 100) + doy
   return era * 146097 + doe - 719468
end

-- The civil date of a day number: year, month, day.
local function civil_from_days(z)
   z = z + 719468
   local era = math_floor(z / 146097)
   local doe = z - era * 146097
   local yoe = math_floor((doe - math_floor(doe / 1460) + math_floor(doe / 36524) - math_floor(doe / 146096)) / 365)
   local y = yoe + era * 400
   local doy = doe - (365 * yoe + math_floor(yoe / 4) - math_floor(yoe / 100))
   local mp = math_floor((5 * doy + 2) / 153)
   local d = doy - math_floor((153 * mp + 2) / 5) + 1
   local m = mp < 10 and mp + 3 or mp - 9
   if m <= 2 then y = y + 1 end
   return y, m, d
end

-- Unix time t as ISO-8601 in zone tz ("+03:00"): "2026-12-07T15:04:05+03:00".
function _M.format(t, tz)
   local off = _M.offset_seconds(tz) or 0
   local s = math_floor(t) + off
   local days = math_floor(s / 86400)
   local secs = s - days * 86400
   local y, m, d = civil_from_days(days)
   local sign = off < 0 and "-" or "+"
   local a = off < 0 and -off or off
   return string_format("%04d-%02d-%02dT%02d:%02d:%02d%s%02d:%02d", y, m, d, math_floor(secs / 3600),
      math_floor(secs % 3600 / 60), secs % 60, sign, math_floor(a / 3600), math_floor(a % 3600 / 60))
end

-- Unix time t as the date alone in zone tz: "2026-12-07" (a `date` field's ISO form).
function _M.format_date(t, tz)
   return string_match(_M.format(t, tz), "^[^T]+")
end

local function valid(y, mo, d, h, mi, s)
   return mo >= 1 and mo <= 12 and d >= 1 and d <= 31 and h <= 24 and mi <= 59 and s <= 60 and y >= 1
end

-- The unix time of text as strtotime reads it, a time without an offset taken in zone tz; nil
-- for text that is not one of: YYYY-MM-DD, YYYY-MM-DD[T ]HH:MM[:SS[.frac]][Z|±HH[:]MM],
-- DD.MM.YYYY [HH:MM[:SS]].
function _M.parse(text, tz)
   if type(text) ~= "string" then return nil end
   local y, mo, d, rest = string_match(text, "^%s*(%d%d%d%d)%-(%d%d?)%-(%d%d?)(.-)%s*$")
   if not y then
      d, mo, y, rest = string_match(text, "^%s*(%d%d?)%.(%d%d?)%.(%d%d%d%d)(.-)%s*$")
      if not y then return nil end
   end
   local h, mi, s, zone = 0, 0, 0, nil
   if rest ~= "" then
      local hh, mm, tail = string_match(rest, "^[T ](%d%d?):(%d%d)(.*)$")
      if not hh then return nil end
      h, mi = tonumber(hh), tonumber(mm)
      local ss, after = string_match(tail, "^:(%d%d)(.*)$")
      if ss then s, tail = tonumber(ss), after end
      tail = string_match(tail, "^%.%d+(.*)$") or tail
      if tail == "Z" or tail == "z" then
         zone = 0
      elseif tail ~= "" then
         zone = _M.offset_seconds(tail)
         if not zone then return nil end
      end
   end
   y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
   if not valid(y, mo, d, h, mi, s) then return nil end
   if zone == nil then zone = _M.offset_seconds(tz) or 0 end
   return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - zone
end

return _M
