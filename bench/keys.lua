-- Rotates the X-Api-Key header over N keys: wrk ... -s bench/keys.lua URL -- N [FIRST]
-- starting after key FIRST (default 0). Up to 100 000 keys the requests are built once;
-- beyond, each is built as it is sent.
local n, i, cached = 1000, 0, {}

local function build(k)
   return "GET " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"]
      .. "\r\nX-Api-Key: key-" .. k .. "\r\n\r\n"
end

function init(args)
   n = tonumber(args[1] or "1000")
   i = tonumber(args[2] or "0") % n
   if n <= 100000 then
      for k = 1, n do cached[k] = build(k) end
   end
end

function request()
   i = i + 1
   if i > n then i = 1 end
   return cached[i] or build(i)
end
