-- Like keys.lua (X-Api-Key rotating over N keys), with an Idempotency-Key on every request:
--   wrk ... -s bench/idempotency.lua URL -- N unique    a new key per request (each forwarded)
--   wrk ... -s bench/idempotency.lua URL -- N replay    one key per client (all but its first replayed)
local n, i, sent, mode, cached = 1000, 0, 0, "unique", {}

local function build(k, idem)
   return "GET " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"]
      .. "\r\nX-Api-Key: key-" .. k .. "\r\nIdempotency-Key: \"" .. idem .. "\"\r\n\r\n"
end

function init(args)
   n = tonumber(args[1] or "1000")
   mode = args[2] or "unique"
   if mode == "replay" then
      for k = 1, n do cached[k] = build(k, "replay-" .. k) end
   end
end

function request()
   i = i + 1
   if i > n then i = 1 end
   if mode == "replay" then return cached[i] end
   sent = sent + 1
   -- Unique across wrk's threads and runs: the thread's table address and a counter.
   return build(i, tostring(cached):sub(8) .. "-" .. sent)
end
