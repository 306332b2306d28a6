-- b24.emulator.misc: the small methods an integration calls besides the entities: profile,
-- methods, scope, app.info, server.time (rest/classes/general/rest_provider.php), the event
-- methods, an application's only (rest/lib/api/event.php), im.notify.system.add
-- (im/classes/general/im_rest.php) and department.get (intranet/classes/general/rest.php).
local storage = require "b24.emulator.store"
local users = require "b24.emulator.users"
local json = require "b24.emulator.json"
local documented = require "bitrix24.events"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local string_upper = string.upper
local string_lower = string.lower
local string_match = string.match
local string_find = string.find
local string_gsub = string.gsub
local table_sort = table.sort
local to_text = storage.to_text
local php_int = storage.php_int

local _M = {}

-- CRestUtil::GLOBAL_SCOPE (rest/classes/general/rest_util.php)
local GLOBAL = "_global"
-- The scopes of the emulated webhook (CRestServer::getAuthScope: the scopes it was made with),
-- one for each module whose methods are emulated; ScopeManager::listScope (full=true) knows no
-- more here.
local SCOPES = { "crm", "department", "im", "task", "user" }

-- The scope a method is registered under (each module's OnRestServiceBuildDescription):
-- rest_provider.php, api/event.php and api/user.php's user.admin are global.
local function scope_of(name)
   local head = string_match(name, "^([^.]+)%.") or name
   if head == "crm" then return "crm" end
   if head == "tasks" or head == "task" then return "task" end
   if head == "department" then return "department" end
   if head == "im" then return "im" end
   if name == "user.current" or name == "user.get" or name == "user.search" then return "user" end
   return GLOBAL
end
_M.scope_of = scope_of

-- A RestException as the REST server prints it (code "" and 400 unless given).
local function fail(desc, code, status)
   return nil, { status = status or 400, error = code or "", error_description = desc }
end

-- The query's keys upper-cased (array_change_key_case(CASE_UPPER)).
local function upper_keys(params)
   local out = {}
   for k, v in pairs(params) do
      if type(k) == "string" then out[string_upper(k)] = v end
   end
   return out
end

-- profile: rest_provider.php getProfile: the active user's ID, ADMIN (CRestUtil::isAdmin),
-- NAME, LAST_NAME, PERSONAL_GENDER, TIME_ZONE, and PERSONAL_PHOTO only with a photo; [] for an
-- inactive user. (No TIME_ZONE_OFFSET: the platform prints none.)
local function profile(p)
   local row = users.find(p, p.user_id)
   if not row or row.ACTIVE ~= "Y" then return {}, { rows = 1 } end
   local out = { ID = row.ID, ADMIN = true, NAME = row.NAME, LAST_NAME = row.LAST_NAME,
                 PERSONAL_GENDER = row.PERSONAL_GENDER or "", TIME_ZONE = row.TIME_ZONE or "" }
   if tonumber(row.PERSONAL_PHOTO or "") and tonumber(row.PERSONAL_PHOTO) > 0 then
      out.PERSONAL_PHOTO = row.PERSONAL_PHOTO
   end
   return out, { rows = 1 }
end

-- methods: rest_provider.php methodsList: the names (lower case, as getServiceDescription keys
-- them) of the methods of SCOPE when given ("" keeps the global scope only), of every scope with
-- FULL, else of the webhook's scopes and the global one. Sorted here (the platform lists them in
-- its modules' registration order).
local function methods_list(p, params)
   local query = upper_keys(params)
   local wanted = {}
   if query.SCOPE ~= nil then
      local scope = to_text(query.SCOPE) or ""
      wanted[scope ~= "" and scope or GLOBAL] = true
   else
      for _, s in ipairs(SCOPES) do wanted[s] = true end
      wanted[GLOBAL] = true
   end
   local out = {}
   for name in pairs(p.methods) do
      if wanted[scope_of(name)] then out[#out + 1] = string_lower(name) end
   end
   table_sort(out)
   return out, { rows = #out }
end

-- scope: rest_provider.php scopeList: the webhook's scopes (FULL: every scope of the portal).
local function scope_list()
   local out = {}
   for i, s in ipairs(SCOPES) do out[i] = s end
   return out, { rows = #out }
end

-- app.info: rest_provider.php appInfo. For an application (getClientId): its ID, CODE, VERSION,
-- STATUS (AppTable::getAppStatusInfo: "L" for a local one), INSTALLED, PAYMENT_EXPIRED "N", DAYS
-- (null: no paid period), LANGUAGE_ID, LICENSE and, on a cloud portal, LICENSE_TYPE and
-- LICENSE_FAMILY (CBitrix24). For a webhook (getPasswordId): its SCOPE and the LICENSE,
-- "<lang>_<license>" from getBitrix24LicenseName (a "pro" plan here).
local function app_info(p)
   if p.caller == "oauth" and p.app then
      return { ID = 1, CODE = p.app.code, VERSION = 1, STATUS = "L", INSTALLED = true, PAYMENT_EXPIRED = "N",
               DAYS = json.null, LANGUAGE_ID = "en", LICENSE = "en_pro", LICENSE_TYPE = "pro",
               LICENSE_FAMILY = "pro" }, { rows = 1 }
   end
   local scopes = scope_list()
   return { SCOPE = scopes, LICENSE = "en_pro" }, { rows = 1 }
end

-- server.time: rest_provider.php getServerTime, date('c') in the portal's time zone.
local function server_time(p)
   return p:date(), { rows = 1 }
end

-- rest/lib/authtypeexception.php (an AccessException: 403): what rest/lib/api/event.php answers
-- every call not made with an application's OAuth token (getAuthType() !== Auth::AUTH_TYPE).
local function wrong_auth_type()
   return fail("Current authorization type is denied for this method", "WRONG_AUTH_TYPE", 403)
end

-- True for a call made with the application's token (CRestServer::getAuthType() is
-- Auth::AUTH_TYPE, "oauth"); rest/lib/api/event.php answers any other wrong_auth_type().
local function is_app(p)
   return p.caller == "oauth" and p.app ~= nil
end

-- A parameter as PHP reads it for a string: a scalar's text, "" for none or an array.
local function text_of(v)
   if v == nil or type(v) == "table" then return "" end
   return to_text(v) or ""
end

-- EVENT_TYPE of event.bind/event.unbind: "online" (the default), "offline" | nil, the error
-- (Exceptions\ArgumentException, 400 ERROR_ARGUMENT).
local function event_type(query)
   local t = string_lower(text_of(query.EVENT_TYPE))
   if t == "" then return "online" end
   if t ~= "online" and t ~= "offline" then
      return nil, { status = 400, error = "ERROR_ARGUMENT", argument = "EVENT_TYPE",
                    error_description = "Value must be one of {online|offline}" }
   end
   return t
end

-- Exceptions\ArgumentNullException: 400 ERROR_ARGUMENT "Argument 'NAME' is null or empty".
local function argument_null(name)
   local _, err = fail("Argument '" .. name .. "' is null or empty", "ERROR_ARGUMENT", 400)
   err.argument = name -- rest/lib/Exceptions/ArgumentException.php setAdditional
   return nil, err
end

-- event.bind: rest/lib/api/event.php eventBind for the application (an admin's token): EVENT
-- (upper-cased) required; EVENT_TYPE online (HANDLER required, checked by
-- rest/lib/handlerhelper.php checkCallback: an http(s) URL whose host has a dot past its first
-- character) or offline (no handler, no user); AUTH_TYPE the user whose token the deliveries
-- carry (0: whoever raised the event). An event no scope of the application offers is
-- ERROR_EVENT_NOT_FOUND; the same binding again is EventTable::checkUniq's "Handler already
-- binded" (ERROR_CORE). Answers true. An offline binding queues its events (b24.emulator.offline),
-- for the connector of the call's auth_connector; ONOFFLINEEVENT is online only, with
-- OPTIONS[minTimeout].
local function event_bind(p, params)
   if not is_app(p) then return wrong_auth_type() end
   local query = upper_keys(params)
   local name = string_upper(text_of(query.EVENT))
   local kind, err = event_type(query)
   local user_id = php_int(query.AUTH_TYPE)
   local handler = text_of(query.HANDLER)
   if name == "" then return argument_null("EVENT") end
   if not kind then return nil, err end
   if kind == "offline" then
      handler, user_id = "", 0
   elseif handler == "" then
      return argument_null("HANDLER")
   end
   if handler ~= "" then
      local scheme, host = string_match(handler, "^([%a][%w+.-]*)://([^/?#:]*)")
      if not host or host == "" or not string_find(host, ".", 2, true) then
         return fail("Wrong handler URL", "ERROR_WRONG_HANDLER_URL")
      end
      scheme = string_lower(scheme)
      if scheme ~= "http" and scheme ~= "https" then
         return fail("Unsupported handler protocol", "ERROR_UNSUPPORTED_PROTOCOL")
      end
   end
   if not documented.known(name) then return fail("Event not found", "ERROR_EVENT_NOT_FOUND") end
   -- rest/lib/api/event.php onRestServiceBuildDescription: onOfflineEvent is "disableOffline"
   -- and allows the option minTimeout (int)
   local options
   if name == "ONOFFLINEEVENT" then
      if handler == "" then
         return fail("Offline event cannot be registered for this event.", "ERROR_ARGUMENT")
      end
      if type(query.OPTIONS) == "table" and query.OPTIONS.minTimeout ~= nil then
         options = { minTimeout = php_int(query.OPTIONS.minTimeout) }
      end
   end
   -- the connector: the auth_connector the call was made with (rest/lib/oauth/auth.php)
   if not p.events:bind(name, handler, user_id, kind == "offline", p.auth_connector or "", options) then
      return fail("Unable to set event handler: Handler already binded", "ERROR_CORE")
   end
   p.dirty = true
   return true, { rows = 1 }
end

-- event.unbind: rest/lib/api/event.php eventUnbind: EVENT required, HANDLER for an online
-- binding, AUTH_TYPE narrowing to that user's; deletes what matches and answers { count }.
local function event_unbind(p, params)
   if not is_app(p) then return wrong_auth_type() end
   local query = upper_keys(params)
   local name = string_upper(text_of(query.EVENT))
   local kind, err = event_type(query)
   local handler = text_of(query.HANDLER)
   if name == "" then return argument_null("EVENT") end
   if not kind then return nil, err end
   local user_id, connector
   if kind == "offline" then
      -- an offline binding of the call's connector (filter =CONNECTOR_ID)
      handler, connector = "", p.auth_connector or ""
   elseif handler == "" then
      return argument_null("HANDLER")
   elseif query.AUTH_TYPE ~= nil then
      user_id = php_int(query.AUTH_TYPE)
   end
   local n = p.events:unbind(name, handler, user_id, connector)
   if n > 0 then p.dirty = true end
   return { count = n }, { rows = 1 }
end

-- event.get: rest/lib/api/event.php eventGet: the application's bindings by ID: an online one
-- { event, handler, auth_type (USER_ID as text), offline = 0 }, an offline one { event,
-- connector_id, offline = 1 }.
local function event_get(p)
   if not is_app(p) then return wrong_auth_type() end
   local out = {}
   for _, b in ipairs(p.events.bindings) do
      if b.offline then
         out[#out + 1] = { event = b.event, connector_id = b.connector or "", offline = 1 }
      else
         out[#out + 1] = { event = b.event, handler = b.handler, auth_type = tostring(b.user_id), offline = 0 }
      end
   end
   return out, { rows = #out }
end

-- events: rest/lib/api/event.php eventsList: the names of the events the application may bind
-- (the documented ones, sorted).
local function events_list(p)
   if not is_app(p) then return wrong_auth_type() end
   local out = {}
   for name in pairs(documented.names) do out[#out + 1] = name end
   table_sort(out)
   return out, { rows = #out }
end

-- event.test: WRONG_AUTH_TYPE for a webhook; for the application not served, so
-- ERROR_METHOD_NOT_FOUND. (The event.offline.* methods: b24.emulator.offline.)
local function not_served(p)
   if not is_app(p) then return wrong_auth_type() end
   return fail("Method not found!", "ERROR_METHOD_NOT_FOUND", 404)
end

-- im.notify.system.add: im_rest.php notifyAdd: USER_ID (or TO) and MESSAGE (trimmed) required,
-- in that order; CIMMessenger::Add (im/classes/general/im_messenger.php) makes a system
-- notification for an active user and answers its id, false when the user is unknown or
-- inactive.
local function notify_add(p, params)
   local query = upper_keys(params)
   if query.TO ~= nil then query.USER_ID = query.TO end
   local user_id = php_int(query.USER_ID)
   if user_id <= 0 then return fail("User ID can't be empty", "USER_ID_EMPTY") end
   local message = type(query.MESSAGE) == "string" and string_gsub(query.MESSAGE, "^%s*(.-)%s*$", "%1") or ""
   if message == "" then return fail("Message can't be empty", "MESSAGE_EMPTY") end
   local user = users.find(p, user_id)
   if not user or user.ACTIVE ~= "Y" then return false, { rows = 1 } end
   local store = p.stores.notify
   local id = store:take_id()
   store:put(id, { ID = tostring(id), TO_USER_ID = tostring(user_id), NOTIFY_TYPE = "4", NOTIFY_MODULE = "rest",
                   NOTIFY_EVENT = "rest_notify", NOTIFY_MESSAGE = message, DATE_CREATE = p:date() })
   p.dirty = true
   return id, { rows = 1 }
end

-- The one department: the company, department 1 at the root, headed by the webhook's user.
local function departments(p)
   return { { ID = "1", NAME = "Company", SORT = "500", UF_HEAD = tostring(p.user_id) } }
end

-- department.get: intranet rest.php departmentGet: the query (or its FILTER when that is an
-- array) filters on ID, NAME, SORT, PARENT, UF_HEAD exactly as spelled (prepareDeptData; other
-- keys ignored; PARENT 0 is the root level), CIBlockSection::GetList paged by the legacy
-- CDBResult (50 a page, total); a row is getDeptData: ID, NAME, SORT as a number, PARENT
-- (IBLOCK_SECTION_ID, absent at the root) and UF_HEAD.
local function department_get(p, params)
   local query = params
   if type(params.FILTER) == "table" then query = params.FILTER end
   local out = {}
   for _, dept in ipairs(departments(p)) do
      local ok = true
      for _, key in ipairs({ "ID", "NAME", "SORT", "PARENT", "UF_HEAD" }) do
         local want = query[key]
         if want ~= nil then
            local have = key == "PARENT" and (dept.PARENT or "0") or dept[key]
            local set = type(want) == "table" and want or { want }
            local found = false
            for _, v in pairs(set) do
               local text = to_text(v) or ""
               if key == "NAME" then
                  -- CIBlock::FilterCreate "string": a case-insensitive match, % any run
                  local pattern = "^" .. string_gsub(string_lower(text), "[%^%$%(%)%.%[%]%*%+%-%?%%]", function(c)
                     if c == "%" then return ".*" end
                     return "%" .. c
                  end) .. "$"
                  if string_find(string_lower(have), pattern) then found = true end
               elseif php_int(text) == tonumber(have) then
                  found = true
               end
            end
            if not found then ok = false end
         end
      end
      if ok then
         out[#out + 1] = { ID = dept.ID, NAME = dept.NAME, SORT = tonumber(dept.SORT), PARENT = dept.PARENT,
                           UF_HEAD = dept.UF_HEAD }
      end
   end
   return out, { total = #out, rows = #out, counted = #out }
end

-- Registers the methods of this module into methods, and the notification store.
function _M.register(portal, methods)
   portal.stores.notify = storage.new("notify", { fields = {}, by_name = {}, standard = {} })
   methods["profile"] = profile
   methods["methods"] = methods_list
   methods["scope"] = scope_list
   methods["app.info"] = app_info
   methods["server.time"] = server_time
   methods["events"] = events_list
   methods["event.bind"] = event_bind
   methods["event.unbind"] = event_unbind
   methods["event.get"] = event_get
   methods["event.test"] = not_served
   methods["im.notify.system.add"] = notify_add
   methods["department.get"] = department_get
end

return _M
