-- b24.emulator.methods: the portal's methods outside the CRM entities, tasks and batch: the
-- user methods (b24.emulator.users), the timeline's comments and activities
-- (b24.emulator.timeline) and the small methods an integration calls (b24.emulator.misc).
local users = require "b24.emulator.users"
local timeline = require "b24.emulator.timeline"
local misc = require "b24.emulator.misc"

local _M = {}

-- Registers the methods of this group into the portal's method table:
--  user.current, user.admin, user.get          rest/lib/api/user.php
--  crm.timeline.comment.add                    crm/lib/controller/timeline/comment.php
--  crm.timeline.comment.get, .list             crm/classes/general/restservice.php CCrmTimelineCommentRestProxy
--  crm.activity.add, .get, .list               crm/classes/general/restservice.php CCrmActivityRestProxy
--  crm.activity.todo.add                       crm/lib/controller/activity/todo.php
--  profile, methods, scope, app.info,
--  server.time                                 rest/classes/general/rest_provider.php
--  events, event.bind, .unbind, .get, …        rest/lib/api/event.php (WRONG_AUTH_TYPE for a webhook)
--  im.notify.system.add                        im/classes/general/im_rest.php notifyAdd
--  department.get                              intranet/classes/general/rest.php departmentGet
function _M.register(portal, methods)
   users.register(portal, methods)
   timeline.register(portal, methods)
   misc.register(portal, methods)
end

return _M
