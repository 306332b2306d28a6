-- bench/ingest/areas.lua: reads `perf script -F ip,sym,dso` (samples with call chains, leaf first)
-- on stdin and prints the share of samples per area of a b24 serve request: each sample goes to
-- the innermost frame of its chain that names an area (kernel frames are passed over, so a
-- write(2) counts for whoever called it), and, apart, the kernel's share by system call.
local areas = {
   -- innermost first wins; patterns on the symbol name
   { "logging", { "^b24_log", "^b24_logline", "^logline_", "^log_field", "^host_log" } },
   { "form decode (core.form_decode)", { "^b24_form", "^url_decode", "^form_", "^l_form_decode" } },
   { "token check and digests", { "^b24_crypto", "^l_equal", "^l_sha256", "^sha256", "SHA256" } },
   { "dedup store (b24.dedup)", { "^store_begin", "^store_finish", "^b24_dedup" } },
   { "inbox (queue, SQLite)", { "^b24_inbox", "^sqlite3", "^inbox_", "^stored$", "^store$" } },
   { "request table and results (b24_bridge.c)", { "^dispatch$" } },
   { "Lua VM (the handler's Lua code)", { "^luaV_", "^luaD_", "^lua_call", "^lua_pcall" } },
   { "request C (b24_request.c, b24_serve.c)", { "^b24_request", "^run_handler", "^access_tracked",
      "^request_done", "^read_state", "^header_notify", "^collect_header", "^respond", "^queue$" } },
   { "libmicrohttpd", { "^MHD_", "^MHD", "libmicrohttpd" } },
}

local function area_of(frames)
   for _, f in ipairs(frames) do
      if not f.kernel then
         for _, a in ipairs(areas) do
            for _, p in ipairs(a[2]) do
               if f.sym:find(p) or (p == "libmicrohttpd" and f.dso:find(p, 1, true)) then return a[1] end
            end
         end
      end
   end
   local leaf = frames[1]
   if leaf and leaf.dso:find("libc", 1, true) then return "libc, no known caller" end
   if leaf and leaf.kernel then return "kernel, no known caller" end
   return "other"
end

-- The system call a kernel sample is in: the libc wrapper that made it (the first frame out of
-- the kernel), or nil for an interrupt of user code.
local function syscall_of(frames)
   local entered = false
   for i = 1, #frames do
      local f = frames[i]
      if f.kernel then
         if f.sym:find("^entry_SYSCALL") then entered = true end
      elseif entered then
         return (f.sym:gsub("^__GI_", ""):gsub("^__libc_", ""):gsub("^__", ""))
      else
         return nil
      end
   end
   return nil
end

local counts, kernel_counts, total, kernel_total = {}, {}, 0, 0
local frames = {}

local function flush()
   if #frames == 0 then return end
   total = total + 1
   local a = area_of(frames)
   counts[a] = (counts[a] or 0) + 1
   if frames[1].kernel then
      kernel_total = kernel_total + 1
      local s = syscall_of(frames) or "(not in a system call: interrupts)"
      kernel_counts[s] = (kernel_counts[s] or 0) + 1
   end
   frames = {}
end

for line in io.lines() do
   local ip, sym, dso = line:match("^%s+(%x+)%s+(.-)%s+%((.*)%)%s*$")
   if ip then
      sym = sym:gsub("%+0x%x+$", "")
      frames[#frames + 1] = { sym = sym, dso = dso, kernel = dso:find("kernel", 1, true) ~= nil }
   elseif line:match("^%s*$") then
      flush()
   end
end
flush()

local function print_sorted(t, n, indent)
   local rows = {}
   for k, v in pairs(t) do rows[#rows + 1] = { k, v } end
   table.sort(rows, function(a, b) return a[2] > b[2] end)
   for _, r in ipairs(rows) do
      print(string.format("%s%6.1f%%  %s", indent, 100 * r[2] / n, r[1]))
   end
end

print(string.format("   %d samples", total))
print_sorted(counts, total, "   ")
print(string.format("   kernel: %.1f%% of all samples; by system call:", 100 * kernel_total / math.max(total, 1)))
print_sorted(kernel_counts, total, "     ")
