-- b24.emulator.users: the webhook's user as the portal's user methods show it (user.current,
-- user.admin). The portal prints a user through an allowed-field list, not the whole b_user row.
local type = type
local ipairs = ipairs
local tostring = tostring
local os_date = os.date
local math_floor = math.floor

local _M = {}

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
      UF_DEPARTMENT = { 1 }, USER_TYPE = "employee",
   }
end

-- user.current: rest/lib/api/user.php User::userCurrent through getUserData: the allowed fields
-- only (no ADMIN: that is user.admin), ACTIVE a boolean, a field whose column is null left out
-- (isset).
local function user_current(p)
   local row = row_of(p, p.started)
   local out = {}
   for _, name in ipairs(ALLOWED) do
      local v = row[name]
      if name == "ACTIVE" then v = v == "Y" end
      if v ~= nil then out[name] = v end
   end
   return out, { rows = 1 }
end

-- user.admin: rest/lib/api/user.php User::isAdmin (rest_util.php CRestUtil::isAdmin: the
-- bitrix24_config operation on a Bitrix24): the webhook's user administers the portal.
local function user_admin()
   return true, { rows = 1 }
end

-- Registers user.current and user.admin into methods.
function _M.register(portal, methods)
   if type(portal.started) ~= "number" then portal.started = math_floor(portal.wall()) end
   methods["user.current"] = user_current
   methods["user.admin"] = user_admin
end

return _M
