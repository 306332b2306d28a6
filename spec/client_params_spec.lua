-- Parameters that cannot reach a portal as they are (issue 13 item 6): refused before anything is
-- sent, with the field named and the error pointing at the caller's line, not into client.lua;
-- the same for call, request, batch, call_many, list and all, on Lua 5.4 and LuaJIT.
local bitrix24 = require "bitrix24"
local httpd = require "helpers.httpd"
local core = require "bitrix24.core"
local cjson = require "cjson"

local THIS = "client_params_spec.lua"

describe("client parameters that cannot be sent", function()
   local srv, client
   setup(function()
      srv = httpd.start{}
      client = bitrix24.client(srv.url .. "/rest/1/params0spec0code/")
   end)
   teardown(function() if srv then srv.stop() end end)

   local function requests()
      local res = assert(core.http{}:request{ url = srv.url .. "/stats" })
      return cjson.decode(res.body).requests
   end

   -- each: the bad value, the field as named in the error, what it is
   local BAD = {
      { 0 / 0, "NaN or infinite number" },
      { math.huge, "NaN or infinite number" },
      { -math.huge, "NaN or infinite number" },
      { print, "function value" },
      { { 1, 2, x = 3 }, "both string and integer keys" },
      { "caf\xe9", "not UTF-8" },
      { coroutine.create(print), "thread" },
   }

   local function expect(fn, field, what)
      local ok, err = pcall(fn)
      assert.is_false(ok)
      err = tostring(err)
      -- the caller's line: this file, not client.lua or export.lua
      assert.matches(THIS .. ":%d+: bitrix24%.client: parameter ", err)
      assert.not_matches("client%.lua", err)
      assert.matches("parameter " .. field .. " cannot be sent", err, 1, true)
      assert.matches(what, err, 1, true)
   end

   it("call and request refuse them, naming the field", function()
      local before = requests()
      for _, b in ipairs(BAD) do
         expect(function() client:call("crm.lead.add", { fields = { X = b[1] } }) end, "fields[X]", b[2])
         expect(function() client:request("crm.lead.add", { fields = { X = b[1] } }) end, "fields[X]", b[2])
      end
      assert.equal(before + 1, requests()) -- only /stats itself was asked since
   end)

   it("batch and call_many refuse them in any command", function()
      local before = requests()
      expect(function() client:batch({ a = { "crm.lead.get", { id = 1 } },
                                       b = { "crm.lead.add", { fields = { NAME = "caf\xe9" } } } }) end,
         "fields[NAME]", "not UTF-8")
      expect(function() client:batch({ { "crm.lead.add", { fields = { OPPORTUNITY = 0 / 0 } } } }) end,
         "fields[OPPORTUNITY]", "NaN")
      expect(function() client:call_many({ { "crm.lead.get", { id = 1 } },
                                           { "crm.lead.add", { fields = { F = print } } } }) end,
         "fields[F]", "function value")
      assert.equal(before + 1, requests())
   end)

   it("list and all refuse them before the first request", function()
      local before = requests()
      expect(function() client:all("crm.lead.list", { filter = { [">ID"] = 0 / 0 } }) end, "filter[>ID]", "NaN")
      expect(function() client:list("crm.lead.list", { filter = { X = { 1, y = 2 } } }) end, "filter[X]",
         "both string and integer keys")
      assert.equal(before + 1, requests())
   end)

   it("sends what is fine: integers, floats, UTF-8, empty tables, nested lists", function()
      local ok = pcall(function()
         return client:call("crm.lead.add", { fields = { A = 1, B = 0.1, C = "café", D = {}, E = { 1, 2 } } })
      end)
      assert.is_true(ok) -- /rest/… is a 404 on this server: an error value, not a raise
   end)
end)
