-- Tells a Telegram chat about each new lead, deal and task: on ONCRMLEADADD, ONCRMDEALADD and
-- ONTASKADD it sends a message through the Bot API's sendMessage. With B24_WEBHOOK_URL set the
-- message carries the entity's title, fetched through the incoming webhook.
--   B24_APP_TOKEN=… TELEGRAM_BOT_TOKEN=123456:ABC… TELEGRAM_CHAT_ID=-100123… \
--   B24_WEBHOOK_URL=https://PORTAL/rest/1/CODE/ b24 serve examples/telegram_notify.lua
-- TELEGRAM_API changes the Bot API's base URL (https://api.telegram.org; a local Bot API server,
-- or a stand-in in tests). Telegram failing (5xx, 429, no connection) raises, so the durable
-- inbox sends again later; Telegram refusing the message (another 4xx, e.g. a wrong chat) is
-- logged with Telegram's reason and not retried. The bot token is part of the request's path,
-- so no URL is ever logged: failures name the method only.
local bitrix24 = require "bitrix24"
local cjson = require("cjson.safe").new()

local function setting(name, default)
   local v = os.getenv(name)
   if v == nil or v == "" then
      if default ~= nil then return default end
      error("telegram_notify: set " .. name .. " (see examples/telegram_notify.lua)", 0)
   end
   return v
end

local app_token = setting("B24_APP_TOKEN")
local bot_token = setting("TELEGRAM_BOT_TOKEN")
local chat_id = setting("TELEGRAM_CHAT_ID")
local api = setting("TELEGRAM_API", "https://api.telegram.org"):gsub("/+$", "")
if not api:match("^https?://[^/]") then error("telegram_notify: TELEGRAM_API is not an http(s) URL", 0) end
local webhook = os.getenv("B24_WEBHOOK_URL")

local client
if webhook and webhook ~= "" then client = bitrix24.client{ url = webhook, retries = 3 } end
local http = bitrix24.core.http{ connect_timeout = 5, timeout = 20 }
local router = bitrix24.router{ token = app_token, client = client }

-- Whatever may echo the request (a libcurl message, a reply) loses the bot token.
local token_pattern = bot_token:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
local function clean(s)
   return (tostring(s):gsub(token_pattern, "***"))
end

-- Sends text to the chat: true, or raises when another try may succeed, or false after
-- logging a refusal that another try would get again.
local function send(text, event, ctx)
   local res, msg, kind = http:request{
      method = "POST", url = api .. "/bot" .. bot_token .. "/sendMessage",
      headers = { ["Content-Type"] = "application/json" },
      body = cjson.encode{ chat_id = chat_id, text = text, disable_web_page_preview = true },
   }
   if res == nil then
      error("telegram sendMessage failed: " .. tostring(kind) .. ": " .. clean(msg), 0)
   end
   local reply = cjson.decode(res.body or "")
   local reason = type(reply) == "table" and type(reply.description) == "string" and clean(reply.description) or ""
   if res.status >= 500 or res.status == 429 then
      error("telegram sendMessage failed: HTTP " .. res.status .. (reason ~= "" and (": " .. reason) or ""), 0)
   end
   if res.status >= 300 or type(reply) ~= "table" or reply.ok ~= true then
      ctx.log("error", "telegram sendMessage refused",
              { event = event.name, id = event.id or "?", status = res.status, reason = reason })
      return false
   end
   return true
end

-- What each event is about: a word for the message, and the title in what its *.get returns.
local KINDS = {
   ONCRMLEADADD = { what = "lead", path = "/crm/lead/details/%s/", title = function(r) return r.TITLE end },
   ONCRMDEALADD = { what = "deal", path = "/crm/deal/details/%s/", title = function(r) return r.TITLE end },
   ONTASKADD = { what = "task", title = function(r) return r.title end },
}

local function notify(event, ctx)
   local kind = KINDS[event.name]
   local id = event.id or "?"
   local title
   if ctx.client then
      local got, err = event:fetch(ctx.client)
      if got == nil then
         -- the message still goes out, without the title
         ctx.log("warn", "telegram_notify: title not fetched", { event = event.name, id = id, error = tostring(err) })
      elseif type(got) == "table" then
         title = kind.title(got)
      end
   end
   local text = "New " .. kind.what .. " #" .. id
   if type(title) == "string" and title ~= "" then text = text .. ": " .. title end
   if kind.path and event.domain then
      text = text .. "\nhttps://" .. event.domain .. kind.path:format(id)
   end
   if send(text, event, ctx) then
      ctx.log("info", "telegram_notify: sent", { event = event.name, id = id, attempt = ctx.attempt })
   end
end

for _, name in ipairs{ "ONCRMLEADADD", "ONCRMDEALADD", "ONTASKADD" } do router:on(name, notify) end

return router
