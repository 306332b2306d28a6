-- b24.emulator.users: the portal's users as its user methods show them (user.current, user.admin,
-- user.get) and as other modules print them (tasks' creator/responsible). The portal prints a
-- user through an allowed-field list, not the whole b_user row. The users are a store of their
-- own (portal.stores.user, so --data keeps them) holding the webhook's user; more users come
-- from a --data file.
local storage = require "b24.emulator.store"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local next = next
local os_date = os.date
local math_floor = math.floor
local string_upper = string.upper
local string_lower = string.lower
local string_match = string.match
local string_find = string.find
local string_gsub = string.gsub
local table_sort = table.sort
local to_text = storage.to_text
local php_int = storage.php_int
local compare = storage.compare

local _M = {}

local PAGE = 50

-- rest/lib/api/user.php User::$allowedUserFields, with USER_TYPE (getDefaultAllowedUserFields
-- adds it where the intranet module is installed, as on every Bitrix24): the fields a webhook
-- with the user scope sees (getAllowedUserFields).
local ALLOWED = {
   "ID", "XML_ID", "ACTIVE", "NAME", "LAST_NAME", "SECOND_NAME", "TITLE", "EMAIL", "LAST_LOGIN",
   "DATE_REGISTER", "TIME_ZONE", "IS_ONLINE", "TIMESTAMP_X", "LAST_ACTIVITY_DATE", "PERSONAL_GENDER",
   "PERSONAL_PROFESSION", "PERSONAL_WWW", "PERSONAL_BIRTHDAY", "PERSONAL_PHOTO", "PERSONAL_ICQ",
   "PERSONAL_PHONE", "PERSONAL_FAX", "PERSONAL_MOBILE", "PERSONAL_PAGER", "PERSONAL_STREET",
   "PERSONAL_CITY", "PERSONAL_STATE", "PERSONAL_ZIP", "PERSONAL_COUNTRY", "PERSONAL_MAILBOX",
   "PERSONAL_NOTES", "WORK_PHONE", "WORK_COMPANY", "WORK_POSITION", "WORK_DEPARTMENT", "WORK_WWW",
   "WORK_FAX", "WORK_PAGER", "WORK_STREET", "WORK_MAILBOX", "WORK_CITY", "WORK_STATE", "WORK_ZIP",
   "WORK_COUNTRY", "WORK_PROFILE", "WORK_LOGO", "WORK_NOTES", "UF_SKYPE_LINK", "UF_ZOOM",
   "UF_EMPLOYMENT_DATE", "UF_TIMEMAN", "UF_DEPARTMENT", "UF_INTERESTS", "UF_SKILLS", "UF_WEB_SITES",
   "UF_XING", "UF_LINKEDIN", "UF_FACEBOOK", "UF_TWITTER", "UF_SKYPE", "UF_DISTRICT", "UF_PHONE_INNER",
   "USER_TYPE",
}
_M.ALLOWED = ALLOWED
local IS_ALLOWED = {}
for _, name in ipairs(ALLOWED) do IS_ALLOWED[name] = true end
-- User::userGet: the filter may also name these (HAS_DEPARTAMENT, NAME_SEARCH are not columns)
local FILTER_EXTRA = { IS_ONLINE = true, HAS_DEPARTAMENT = true, NAME_SEARCH = true, EXTERNAL_AUTH_ID = true }
-- prepareUserFilter: their operator prefix is dropped
local CLEAR_PREFIX = { HAS_DEPARTAMENT = true, NAME_SEARCH = true, FIND = true }

local DEF = { fields = {}, by_name = {}, standard = {} }

-- The b_user row of the webhook's user as CUser::GetByID fetches it (strings; null columns
-- absent), at unix time t: an employee of department 1 who registered and logged in at t.
local function row_of(p, t)
   local id = tostring(p.user_id)
   return {
      ID = id, XML_ID = "", ACTIVE = "Y", NAME = "Emulator", LAST_NAME = "User", SECOND_NAME = "",
      EMAIL = "user" .. id .. "@example.com",
      LAST_LOGIN = os_date("!%Y-%m-%dT%H:%M:%S+00:00", t),
      DATE_REGISTER = os_date("!%Y-%m-%dT00:00:00+00:00", t),
      IS_ONLINE = "Y", TIMESTAMP_X = os_date("!%d.%m.%Y %H:%M:%S", t),
      LAST_ACTIVITY_DATE = os_date("!%Y-%m-%d %H:%M:%S", t),
      PERSONAL_GENDER = "", PERSONAL_BIRTHDAY = "", WORK_POSITION = "", UF_EMPLOYMENT_DATE = "",
      UF_DEPARTMENT = { 1 }, USER_TYPE = "employee", TIME_ZONE = "",
   }
end

-- The user store, with the webhook's user in it (a --data file from before users were kept
-- has none).
local function store_of(p)
   local store = p.stores.user
   local id = p.user_id
   if not store.rows[id] then
      store.rows[id] = row_of(p, p.started)
      local ids = store.ids
      ids[#ids + 1] = id
      table_sort(ids)
      if store.next_id <= id then store.next_id = id + 1 end
   end
   return store
end

-- The row of user id (a number or numeric text), or nil when the portal has no such user.
function _M.find(p, id)
   local n = tonumber(to_text(id) or "")
   if not n then return nil end
   return store_of(p).rows[n]
end

-- The user as tasks print it: tasks/lib/rest/controllers/task.php fillUserInfo (ID, the name
-- in the site's format "#NAME# #LAST_NAME#", the profile link, tasks/lib/ui/avatar.php
-- getPerson's default picture without a photo, WORK_POSITION); nil for an unknown user.
function _M.brief(p, id)
   local row = _M.find(p, id)
   if not row then return nil end
   local name = ((row.NAME or "") .. " " .. (row.LAST_NAME or "")):gsub("^%s+", ""):gsub("%s+$", "")
   if name == "" then name = row.LOGIN or "" end
   return { id = row.ID, name = name, link = "/company/personal/user/" .. row.ID .. "/",
            icon = "/bitrix/images/tasks/default_avatar.png", workPosition = row.WORK_POSITION or "" }
end

-- User::getUserData over the allowed fields (names): ACTIVE a boolean, a field whose column is
-- null left out (isset).
local function view(row, names)
   local out = {}
   for _, name in ipairs(names or ALLOWED) do
      local v = row[name]
      if name == "ACTIVE" then v = v == "Y" end
      if v ~= nil then out[name] = v end
   end
   return out
end

-- user.current: rest/lib/api/user.php User::userCurrent through getUserData: the allowed fields
-- only (no ADMIN: that is user.admin).
local function user_current(p)
   return view(store_of(p).rows[p.user_id]), { rows = 1 }
end

-- user.admin: rest/lib/api/user.php User::isAdmin (rest_util.php CRestUtil::isAdmin: the
-- bitrix24_config operation on a Bitrix24): the webhook's user administers the portal.
local function user_admin()
   return true, { rows = 1 }
end

-- A user field's values as text: a list (UF_DEPARTMENT) or one value.
local function values_of(v)
   if type(v) == "table" then
      local out = {}
      for _, item in pairs(v) do out[#out + 1] = to_text(item) end
      return out
   end
   return { to_text(v) }
end

-- The ORM's LIKE without an operator (Bitrix\Main\ORM legacy filter on a string column: the
-- value is a pattern, % any run, case-insensitive as MySQL's collation).
local function like(have, pattern)
   local lua = "^" .. string_gsub(string_lower(pattern), "[%^%$%(%)%.%[%]%*%+%-%?%%]", function(c)
      if c == "%" then return ".*" end
      return "%" .. c
   end) .. "$"
   return string_find(string_lower(have), lua) ~= nil
end

-- One filter condition on a row: op ("", "=", "!", "%", ">", ">=", "<", "<="), field, value.
local function holds(row, op, field, value)
   if field == "HAS_DEPARTAMENT" then
      if value ~= "Y" then return true end
      return type(row.UF_DEPARTMENT) == "table" and next(row.UF_DEPARTMENT) ~= nil
   end
   if field == "NAME_SEARCH" then
      -- main/lib/userutils.php getUserSearchFilter: every word is found in the name fields
      local text = string_lower(table.concat({ row.NAME or "", row.LAST_NAME or "", row.SECOND_NAME or "",
                                               row.EMAIL or "", row.WORK_POSITION or "" }, " "))
      for word in string.gmatch(string_lower(to_text(value) or ""), "%S+") do
         if not string_find(text, word, 1, true) then return false end
      end
      return true
   end
   local wanted = values_of(value)
   local haves = values_of(row[field])
   if #haves == 0 then haves = { "" } end
   local negate = op == "!" or op == "!="
   local found = false
   for _, have in ipairs(haves) do
      for _, want in ipairs(wanted) do
         local ok
         if op == "%" then ok = string_find(string_lower(have), string_lower(want), 1, true) ~= nil
         elseif op == ">" then ok = have ~= "" and compare(have, want) > 0
         elseif op == ">=" then ok = have ~= "" and compare(have, want) >= 0
         elseif op == "<" then ok = have ~= "" and compare(have, want) < 0
         elseif op == "<=" then ok = have ~= "" and compare(have, want) <= 0
         elseif op == "" and not tonumber(want) then ok = like(have, want)
         else ok = compare(have, want) == 0 end
         if ok then found = true end
      end
   end
   if negate then return not found end
   return found
end

-- User::prepareUserFilter: keys "<op><FIELD>" (op one or two non-word characters) naming an
-- allowed field (others dropped); USER_TYPE and ACTIVE compare with =; ACTIVE true/"Y" is "Y".
local function prepare_filter(query)
   local out = {}
   for key, value in pairs(query) do
      if type(key) == "string" then
         local op, field = string_match(key, "^(%W%W?)(.+)$")
         if not op then op, field = "", key end
         if IS_ALLOWED[field] or FILTER_EXTRA[field] then
            if op ~= "" and CLEAR_PREFIX[field] then op = "" end
            if op == "" and (field == "USER_TYPE" or field == "ACTIVE") then op = "=" end
            if field == "ACTIVE" then value = (value and value ~= "N" and value ~= false) and "Y" or "N" end
            if field == "ID" and type(value) ~= "table" then value = tostring(php_int(value)) end
            out[#out + 1] = { op = op, field = field, value = value }
         end
      end
   end
   return out
end

-- user.get: rest/lib/api/user.php User::userGet. Parameter names in any case;
-- the filter is FILTER when it is an array, else the query itself (the platform's "mistake kept
-- for compatibility"); SORT and ORDER sort when both are given (a bad ORDER is 400); SELECT narrows the
-- allowed fields; ADMIN_MODE only lifts the extranet restriction (no extranet here). Paging is
-- the ORM's (IRestService::getNavData(start, true)): 50 rows at offset intval(start), next =
-- offset + rows while rows remain, total the count (0 with start=-1, which counts nothing); no
-- rows: [] without total (setNavData is not called).
local function user_get(p, params)
   local store = store_of(p)
   local query = {}
   for k, v in pairs(params) do
      if type(k) == "string" then query[string_upper(k)] = v end
   end
   local sort, order, select = query.SORT, query.ORDER, query.SELECT
   local start = php_int(params.start)
   local source = query
   if type(query.FILTER) == "table" then
      source = {}
      for k, v in pairs(query.FILTER) do
         if type(k) == "string" then source[string_upper(k)] = v end
      end
   end
   if source.FIND ~= nil and source.NAME_SEARCH == nil then source.NAME_SEARCH = source.FIND end
   local conditions = prepare_filter(source)
   local rows = {}
   for _, id in ipairs(store.ids) do
      local row = store.rows[id]
      local ok = true
      for _, c in ipairs(conditions) do
         if not holds(row, c.op, c.field, c.value) then ok = false; break end
      end
      if ok then rows[#rows + 1] = row end
   end
   if sort ~= nil and sort ~= false and sort ~= "" and sort ~= "0" and order ~= nil and order ~= false and
      order ~= "" and order ~= "0" then
      -- main/lib/orm/query/query.php addOrder: a direction that is not a string, or not ASC/DESC
      -- after strtoupper, is an ArgumentException (restexception.php initFromException: 400
      -- ERROR_ARGUMENT)
      if type(order) ~= "string" then
         return nil, { status = 400, error = "ERROR_ARGUMENT", error_description = "Order must be a string" }
      end
      local dir = string_upper(order)
      if dir ~= "ASC" and dir ~= "DESC" then
         return nil, { status = 400, error = "ERROR_ARGUMENT", error_description = 'Invalid order "' .. dir .. '"' }
      end
      local field, desc = string_upper(to_text(sort) or ""), dir == "DESC"
      table_sort(rows, function(a, b)
         local r = compare(a[field] or "", b[field] or "")
         if r == 0 then return tonumber(a.ID) < tonumber(b.ID) end
         if desc then return r > 0 end
         return r < 0
      end)
   end
   local names = ALLOWED
   if type(select) == "table" and next(select) ~= nil then
      local wanted, star, all_uf = {}, false, false
      for _, key in pairs(select) do
         key = to_text(key)
         if key == "*" then star = true elseif key == "UF_*" then all_uf = true elseif key then wanted[key] = true end
      end
      if not star then
         names = {}
         for _, name in ipairs(ALLOWED) do
            if wanted[name] or (all_uf and name:sub(1, 3) == "UF_") then names[#names + 1] = name end
         end
      end
   end
   local offset = start >= 0 and start or 0
   local page = {}
   for i = offset + 1, offset + PAGE do
      if not rows[i] then break end
      page[#page + 1] = view(rows[i], names)
   end
   if #page == 0 then return page, { rows = 0 } end
   local count = start ~= -1 and #rows or 0
   local meta = { total = count, rows = #page, counted = count }
   if offset + #page < count then meta.next = offset + #page end
   return page, meta
end

-- Registers user.current, user.admin and user.get into methods, and the user store.
function _M.register(portal, methods)
   if type(portal.started) ~= "number" then portal.started = math_floor(portal.wall()) end
   portal.stores.user = storage.new("user", DEF)
   store_of(portal)
   methods["user.current"] = user_current
   methods["user.admin"] = user_admin
   methods["user.get"] = user_get
end

return _M
