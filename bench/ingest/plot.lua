-- bench/ingest/plot.lua: the bench's table as an SVG of two bar charts side by side, requests/s
-- and p99 latency per server, for the README's Performance section.
--   lua5.4 bench/ingest/plot.lua TITLE < ROWS > plot.svg
-- ROWS: one server a line, tab-separated: name, requests/s, p99 in ms, group ("b24" or "peer").
local title = arg[1] or "b24 serve ingest"

local rows = {}
for line in io.lines() do
   local name, rps, p99, group = line:match("^([^\t]+)\t([%d.]+)\t([%d.]+)\t?(%S*)")
   if name then rows[#rows + 1] = { name = name, rps = tonumber(rps), p99 = tonumber(p99), group = group } end
end
assert(#rows > 0, "plot.lua: no rows on stdin")

local function escape(s)
   return (s:gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"))
end

local ROW, TOP, LABEL, BAR, GAP = 22, 46, 300, 260, 110
local width = LABEL + 2 * BAR + GAP + 80
local height = TOP + #rows * ROW + 30
local out = {}
local function add(fmt, ...) out[#out + 1] = string.format(fmt, ...) end

add('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">',
    width, height)
add('<rect width="100%%" height="100%%" fill="white"/>')
add('<text x="10" y="18" font-size="14" font-weight="bold">%s</text>', escape(title))

-- one chart: its column's bars, scaled to its largest value
local function chart(x0, key, heading, unit)
   local max = 0
   for _, r in ipairs(rows) do if r[key] > max then max = r[key] end end
   add('<text x="%d" y="%d" font-weight="bold">%s</text>', x0, TOP - 10, escape(heading))
   for i, r in ipairs(rows) do
      local y = TOP + (i - 1) * ROW
      local w = max > 0 and math.floor(r[key] / max * BAR + 0.5) or 0
      local color = r.group == "b24" and "#2b6cb0" or "#a0aec0"
      add('<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>', x0, y, math.max(w, 1), ROW - 6, color)
      local value = key == "rps" and string.format("%.0f", r[key]) or string.format("%.1f", r[key])
      add('<text x="%d" y="%d">%s%s</text>', x0 + w + 4, y + ROW - 10, value, unit)
   end
end

for i, r in ipairs(rows) do
   add('<text x="10" y="%d">%s</text>', TOP + (i - 1) * ROW + ROW - 10, escape(r.name))
end
chart(LABEL, "rps", "requests/s (higher is better)", "")
chart(LABEL + BAR + GAP, "p99", "p99 latency (lower is better)", " ms")
add('<text x="10" y="%d" fill="#555">blue: b24 serve; grey: its peers. bench/ingest.sh, medians of its rounds.</text>',
    height - 8)
add("</svg>")
io.write(table.concat(out, "\n"), "\n")
