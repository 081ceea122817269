-- The OpenResty-style peer of tools/bench/gateway: API keys in a shared
-- dict (looked up in access_by_lua), one usage line per request queued in
-- log_by_lua into a per-worker buffer that a timer flushes to a file (what
-- lua-resty-logger-socket and most OpenResty gateways do; a real one ships
-- the batch over a cosocket instead of to a local file).
local _M = {}

local keys = ngx.shared.apikeys
local concat = table.concat

local queue, queued = {}, 0
local path

local function flush()
    if queued == 0 then
        return
    end
    local f = io.open(path, "a")
    if f then
        f:write(concat(queue, "\n", 1, queued), "\n")
        f:close()
    end
    queue, queued = {}, 0
end

-- init_by_lua: the key table (a real gateway loads it from its database)
function _M.init(key, value)
    keys:set(key, value)
end

-- init_worker_by_lua
function _M.start(log_path)
    path = log_path
    ngx.timer.every(1, function(premature)
        flush()
    end)
end

-- access_by_lua
function _M.access()
    local key = ngx.var.http_x_api_key
    if not key then
        local auth = ngx.var.http_authorization
        if auth then
            key = auth:match("^[Bb]earer%s+(%S+)")
        end
    end
    local id = key and keys:get(key)
    if not id then
        ngx.header["WWW-Authenticate"] = "ApiKey"
        return ngx.exit(401)
    end
    ngx.ctx.apikey_id = id
end

-- log_by_lua
function _M.log()
    local var = ngx.var
    queued = queued + 1
    queue[queued] = concat({
        ngx.now(), ngx.ctx.apikey_id or "-", var.request_method, var.uri,
        ngx.status, var.request_time, var.bytes_sent, var.remote_addr,
        var.http_user_agent or "",
    }, "\t")
    if queued >= 8192 then
        flush()
    end
end

return _M
