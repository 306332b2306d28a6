-- bench/ingest: the nginx + ngx_lua peer (content_by_lua_file; the file is cached per worker).
local FORM = "application/x-www-form-urlencoded"
ngx.header["Content-Type"] = "application/json"
if ngx.req.get_method() ~= "POST" then
   ngx.status = 405
   return ngx.print('{"error":"method not allowed"}')
end
local ctype = ngx.var.content_type or ""
if ctype:sub(1, #FORM):lower() ~= FORM then
   ngx.status = 415
   return ngx.print('{"error":"unsupported media type"}')
end
ngx.req.read_body()
local args = ngx.req.get_post_args()
local token = args and args["auth[application_token]"]
if type(token) == "string" and token == ingest_token then
   ngx.status = 200
   return ngx.print('{"success":true}')
end
ngx.status = 401
return ngx.print('{"error":"unauthorized"}')
