-- bitrix24.appstore's memory store: the contract every application store keeps (the host's
-- SQLite and process-wide stores keep it too: spec/host_tokens_spec.lua).
local appstore = require "bitrix24.appstore"

describe("bitrix24.appstore memory store", function()
   local t, store
   before_each(function()
      t = 1000
      store = appstore.memory{ now = function() return t end }
   end)

   local function record(extra)
      local r = { member_id = "m1", domain = "a.bitrix24.ru", access_token = "acc0001", refresh_token = "ref0001",
                  client_endpoint = "https://a.bitrix24.ru/rest/", expires_at = 4600, application_token = "app0001" }
      for k, v in pairs(extra or {}) do r[k] = v end
      return r
   end

   it("puts, gets by member_id or domain (any case), and versions each put", function()
      assert.equal(1, store:put(record()))
      assert.equal("acc0001", store:get("m1").access_token)
      assert.equal("m1", store:get("A.Bitrix24.RU").member_id)
      assert.equal(1, store:get("m1").version)
      assert.equal(1000, store:get("m1").updated_at)
      assert.equal(2, store:put(record{ access_token = "acc0002", domain = "b.bitrix24.ru" }))
      assert.is_nil(store:get("a.bitrix24.ru")) -- the old domain no longer names it
      assert.equal("acc0002", store:get("b.bitrix24.ru").access_token)
      assert.is_nil(store:get("nobody"))
   end)

   it("hands out copies", function()
      store:put(record())
      local r = store:get("m1")
      r.access_token = "changed"
      assert.equal("acc0001", store:get("m1").access_token)
   end)

   it("swaps only at the version it was read at", function()
      store:put(record())
      assert.equal(2, store:swap("m1", 1, { access_token = "acc0002", refresh_token = "ref0002" }))
      local ok, current = store:swap("m1", 1, { access_token = "lost" })
      assert.is_false(ok)
      assert.equal(2, current)
      assert.equal("acc0002", store:get("m1").access_token)
      assert.is_false((store:swap("nobody", 1, { access_token = "x" })))
   end)

   it("leases to one holder until it expires or is released", function()
      store:put(record())
      assert.is_true(store:lease("m1", "h1", 30))
      local ok, holder, expires = store:lease("m1", "h2", 30)
      assert.is_false(ok)
      assert.equal("h1", holder)
      assert.equal(1030, expires)
      assert.is_true(store:lease("m1", "h1", 30)) -- the holder extends it
      t = 1031
      assert.is_true(store:lease("m1", "h2", 30)) -- expired: taken over
      store:release("m1", "h1")                   -- not h1's any more: nothing happens
      assert.is_false((store:lease("m1", "h3", 30)))
      store:release("m1", "h2")
      assert.is_true(store:lease("m1", "h3", 30))
   end)

   it("deletes a portal with its lease and lists the rest in member_id order", function()
      store:put(record{ member_id = "m2", domain = "c.bitrix24.ru" })
      store:put(record())
      store:lease("m1", "h1", 30)
      assert.is_true(store:delete("m1"))
      assert.is_nil(store:get("m1"))
      assert.is_true(store:lease("m1", "h2", 30))
      store:put(record{ member_id = "m0", domain = "d.bitrix24.ru" })
      local ids = {}
      for i, r in ipairs(store:list()) do ids[i] = r.member_id end
      assert.same({ "m0", "m2" }, ids)
   end)

   it("refuses bad records with a reason that shows no value", function()
      local _, why = store:put({ domain = "x" })
      assert.matches("member_id", why)
      _, why = store:put(record{ access_token = ("s"):rep(5000) })
      assert.matches("too long", why)
      assert.not_matches("sss", why)
      _, why = store:put(record{ expires_at = "soon" })
      assert.matches("number", why)
      -- what is not a record field is ignored: put(get(key)) works
      assert.equal(1, store:put(record{ password = "x", version = 99 }))
      assert.is_nil(store:get("m1").password)
   end)
end)
