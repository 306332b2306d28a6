-- The crash test of the durable inbox at a size for the suite: scripts/crashtest.lua (run by
-- lua5.4; `make crashtest` runs it at full size) posts distinct deliveries from 4 concurrent
-- senders to `b24 serve --inbox FILE`, SIGKILLs the host after some hundreds of 200s, restarts it
-- on the same file, waits until the inbox is empty, and checks every delivery's runs against
-- the answers it got and against what the file held at the kill.
local b24 = require "helpers.b24"
local cjson = require "cjson"

describe("b24 serve --inbox killed with SIGKILL mid-stream", function()
   it("loses no delivery answered 200, and runs again only those running at the kill", function()
      local out, code = b24.exec(("cd %s && lua5.4 scripts/crashtest.lua --bin %s --events 1200"
         .. " --senders 4 --kill-after 300 --json"):format(b24.quote(b24.root), b24.quote(b24.bin)))
      local json = out:match("\n({[^\n]*\"pass\":[^\n]*})\n")
      assert.is_string(json, out)
      local fig = cjson.decode(json)
      assert.equal(0, code, out)
      assert.is_true(fig.pass, out)
      assert.equal(1200, fig.sent)
      assert.is_true(fig.ok_before_kill >= 300, out)
      assert.is_true(fig.ok + fig.failed == 1200, out)  -- every answer was a 200 or none at all
      assert.equal(0, fig.lost, out)                    -- every 200 was processed
      assert.equal(0, fig.not_durable_at_kill, out)     -- and was in the file at the kill
      assert.equal(0, fig.unexplained, out)             -- twice only if running at the kill
      assert.equal(0, fig.reprocessed_after_commit, out) -- never again after a committed success
      assert.equal(0, fig.processed_more, out)
      assert.is_true(fig.processed >= fig.ok, out)
      assert.is_true(fig.processed_twice <= fig.running_at_kill, out)
   end)
end)
