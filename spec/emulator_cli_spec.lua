-- emulator.main(argv): the options of `b24 emulate`, their errors, and the command itself.
local b24 = require "helpers.b24"
local emu = require "helpers.emulator"
local emulator = require "b24.emulator"
local core = require "bitrix24.core"

local function fails(argv)
   local ok, err = pcall(emulator.main, argv)
   assert.is_false(ok, table.concat(argv, " "))
   assert.equal("string", type(err))
   assert.matches("^b24 emulate: ", err)
   return err
end

describe("emulator.main(argv)", function()
   it("parses every option, as --name value and --name=value", function()
      local opts = emulator.parse_args{ "--user-id", "7", "--code=abc123", "--token", "tok_1",
         "--events-to", "http://127.0.0.1:1/a", "--events-to=https://example.com/b", "--seed-leads", "3",
         "--seed-tasks=2", "--latency", "1.5", "--row-cost", "20", "--count-cost", "30",
         "--faults", "503=0.2,500=0.05,reset=0.02,slow=0.01", "--slow-delay", "4", "--enterprise",
         "--operating-limit", "2", "--operating-window=30", "--time-scale", "10", "--data", "/tmp/x.json",
         "--random-seed", "9", "--domain", "d.example", "--member-id", "m1" }
      assert.equal(7, opts.user_id)
      assert.equal("abc123", opts.code)
      assert.equal("tok_1", opts.token)
      assert.same({ "http://127.0.0.1:1/a", "https://example.com/b" }, opts.events_to)
      assert.equal(3, opts.seed_leads)
      assert.equal(2, opts.seed_tasks)
      assert.equal(1.5, opts.latency_ms)
      assert.equal(20, opts.row_cost_us)
      assert.equal(30, opts.count_cost_us)
      assert.same({ [503] = 0.2, [500] = 0.05, reset = 0.02, slow = 0.01 }, opts.faults)
      assert.equal(4, opts.slow_delay)
      assert.is_true(opts.enterprise)
      assert.equal(2, opts.operating_limit)
      assert.equal(30, opts.operating_window)
      assert.equal(10, opts.time_scale)
      assert.equal("/tmp/x.json", opts.data)
      assert.equal(9, opts.random_seed)
      assert.equal("d.example", opts.domain)
      assert.equal("m1", opts.member_id)
   end)

   it("returns a handler answering as the portal", function()
      local handler = emulator.main{ "--code", emu.CODE, "--seed-leads", "2" }
      assert.equal("function", type(handler))
      local status, _, body = handler{ method = "POST", path = emu.path("crm.lead.list"), query = "",
         headers = {}, body = "", remote_addr = "127.0.0.1" }
      assert.equal(200, status)
      assert.matches('"total":2', body, 1, true)
   end)

   it("raises clear errors for unknown options, missing and bad values", function()
      assert.matches("unknown option %-%-nope", fails{ "--nope" })
      assert.matches("unknown option %-%-nope", fails{ "--nope=1" })
      assert.matches("unexpected argument 'extra'", fails{ "extra" })
      assert.matches("%-%-latency needs a value", fails{ "--latency" })
      assert.matches("%-%-latency needs a number >= 0, not 'abc'", fails{ "--latency", "abc" })
      assert.matches("%-%-seed%-leads needs an integer >= 0", fails{ "--seed-leads", "1.5" })
      assert.matches("%-%-user%-id needs a positive integer", fails{ "--user-id", "0" })
      assert.matches("%-%-time%-scale needs a number > 0", fails{ "--time-scale", "0" })
      assert.matches("%-%-operating%-window needs a number > 0", fails{ "--operating-window", "-2" })
      assert.matches("%-%-events%-to needs an http", fails{ "--events-to", "ftp://x" })
      assert.matches("%-%-enterprise takes no value", fails{ "--enterprise=1" })
      assert.matches("%-%-faults: unknown fault", fails{ "--faults", "404=1" })
   end)

   it("never echoes a bad secret", function()
      local err = fails{ "--code", "my secret/code" }
      assert.not_matches("my secret", err, 1, true)
      err = fails{ "--token", "tok en" }
      assert.not_matches("tok en", err, 1, true)
   end)
end)

describe("emulator.main(argv, services)", function()
   local function request(method, body)
      return { method = "POST", path = emu.path(method), query = "",
               headers = { ["content-type"] = "application/json" }, body = body or "{}", remote_addr = "127.0.0.1" }
   end

   it("refuses --events-to without a post service, at option time", function()
      local err = fails{ "--events-to", "http://127.0.0.1:1/a" }
      assert.matches("%-%-events%-to needs a host that posts events", err)
   end)

   it("posts each event through services.post and logs a refusal through services.log", function()
      local posts, lines = {}, {}
      local answer = true
      local handler = emulator.main({ "--code", emu.CODE, "--events-to", "http://127.0.0.1:1/hook?k=s3cr3t" }, {
         post = function(url, body, headers)
            posts[#posts + 1] = { url = url, body = body, headers = headers }
            if answer then return true end
            return nil, "queue full"
         end,
         log = function(level, msg, fields) lines[#lines + 1] = { level = level, msg = msg, fields = fields } end,
      })
      local status = handler(request("crm.lead.add", '{"fields":{"TITLE":"x"}}'))
      assert.equal(200, status)
      assert.equal(1, #posts)
      assert.equal("http://127.0.0.1:1/hook?k=s3cr3t", posts[1].url)
      assert.matches("^event=ONCRMLEADADD&", posts[1].body)
      assert.equal("application/x-www-form-urlencoded", posts[1].headers["Content-Type"])
      assert.equal(0, #lines)
      answer = false
      assert.equal(200, (handler(request("crm.lead.add", '{"fields":{"TITLE":"y"}}'))))
      assert.equal(2, #posts)
      assert.equal(1, #lines)
      assert.equal("warn", lines[1].level)
      assert.equal("event not queued", lines[1].msg)
      assert.equal("queue full", lines[1].fields.error)
      assert.not_matches("s3cr3t", lines[1].fields.url, 1, true)
   end)

   it("returns the delay with services.delay, and sleeps it without", function()
      local handler = emulator.main({ "--code", emu.CODE, "--latency", "300" }, { delay = true })
      local status, _, _, extra = handler(request("user.current"))
      assert.equal(200, status)
      assert.equal(0.3, extra.delay)
      handler = emulator.main{ "--code", emu.CODE, "--latency", "300" }
      local t0 = core.now()
      status, _, _, extra = handler(request("user.current"))
      assert.equal(200, status)
      assert.is_nil(extra)
      assert.is_true(core.now() - t0 >= 0.3)
   end)

   it("keeps a reset's close when it sleeps the delay", function()
      local handler = emulator.main{ "--code", emu.CODE, "--latency", "10", "--faults", "reset=1" }
      local status, _, _, extra = handler(request("user.current"))
      assert.equal(200, status)
      assert.same({ close = true }, extra)
   end)

   it("b24.emulator.command documents the same options", function()
      assert.equal(emulator.USAGE, require("b24.emulator.command").USAGE)
      assert.matches("%-%-events%-to URL", emulator.USAGE)
   end)
end)

describe("b24 emulate", function()
   it("exits non-zero with the message on a bad option", function()
      if not b24.has_emulate() then
         pending("the binary has no emulate command")
         return
      end
      local out, code = b24.exec(b24.quote(b24.bin) .. " emulate --listen 127.0.0.1:0 --latency abc")
      assert.is_true(code == 1 or code == 2, "exit " .. tostring(code))
      assert.matches("b24 emulate: --latency needs a number >= 0, not 'abc'", out, 1, true)
   end)

   it("serves the portal with the options given", function()
      local srv = b24.emulate{ args = { "--code", emu.CODE, "--user-id", "3", "--seed-leads", "4" } }
      finally(function() srv:stop() end)
      local status, body = emu.call(srv, "crm.lead.list", {}, { user = "3" })
      assert.equal(200, status)
      assert.equal(4, body.total)
      assert.equal(401, (emu.call(srv, "crm.lead.list", {}, { user = "1" })))
   end)
end)
