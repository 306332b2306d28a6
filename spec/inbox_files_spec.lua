-- The durable inbox's file: created 0600 with its -wal and -shm (they hold raw bodies with the
-- application token), keys with NUL bytes kept whole, and `b24 inbox list` showing each
-- delivery's object, never its token.
local inbox = require "helpers.inbox"
local b24 = require "helpers.b24"

local function mode(path)
   local p = assert(io.popen("stat -c %a " .. b24.quote(path) .. " 2>/dev/null"))
   local out = p:read("*a")
   p:close()
   return (out:gsub("%s+$", ""))
end

describe("b24 serve --inbox: the file", function()
   it("is created 0600, and so are its -wal and -shm", function()
      local env = inbox.env{ tokens = inbox.tokens() }
      finally(function() env:cleanup() end)
      local srv = env:start{ "--handler-threads", "1" }
      assert.equal(200, inbox.post(srv, inbox.form{ name = "ONCRMDEALADD", id = "8101" }).status)
      inbox.barrier(srv)
      assert.equal("600", mode(env.inbox))
      assert.equal("600", mode(env.inbox .. "-wal"))
      assert.equal("600", mode(env.inbox .. "-shm"))
   end)

   it("lists each delivery's object (event and ID), never its token", function()
      local env = inbox.env{ tokens = inbox.tokens() }
      finally(function() env:cleanup() end)
      local srv = env:start{ "--handler-threads", "1", "--max-attempts", "5", "--retry-base", "3600" }
      assert.equal(200, inbox.post(srv, inbox.form{ name = "ONCRMDEALUPDATE", id = "8102",
                                                    data = { FAILS = "9" } }).status)
      inbox.wait_saw(srv, "ONCRMDEALUPDATE", "8102", 1)
      inbox.barrier(srv)
      local out = env:inbox_cmd("list")
      assert.not_matches(inbox.deal.token, out, 1, true)
      local rows = env:rows()
      assert.equal(1, #rows)
      assert.equal("ONCRMDEALUPDATE", rows[1].event)
      assert.equal("8102", rows[1].object)
   end)
end)

describe("b24 serve --inbox: keys", function()
   it("keeps a key with a NUL byte whole: keys differing after it are two deliveries", function()
      local dir = b24.tmpdir()
      finally(function() os.execute(b24.clean .. "rm -rf " .. b24.quote(dir)) end)
      local srv = b24.start{ script = [[
local bitrix24 = require "bitrix24"
local router = bitrix24.router{ insecure = true, key = function(e) return "k\0" .. e.id end }
router:on("*", function(event, ctx) ctx.log("info", "ran " .. event.id) end)
return router
]], args = { "--inbox", dir .. "/inbox.sqlite" } }
      finally(function() srv:stop() end)
      for _, id in ipairs{ "1", "2" } do
         local res = assert(srv:request{ method = "POST", path = "/hook",
            headers = { ["Content-Type"] = inbox.FORM },
            body = "event=ONCRMDEALADD&data[FIELDS][ID]=" .. id })
         assert.equal('{"success":true}', res.body)
      end
      assert(srv:wait_log('msg="ran 1"'))
      assert(srv:wait_log('msg="ran 2"'))
   end)
end)
