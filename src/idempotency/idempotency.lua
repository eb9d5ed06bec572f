-- One idempotency key's entry: 'L' .. fingerprint .. token while its first request is in
-- flight (expiring by itself, in case the replica that holds it is gone), then
-- 'C' .. fingerprint .. answer once complete. ARGV[1] is the operation.
local held = redis.call('GET', KEYS[1])
if ARGV[1] == 'begin' then
  -- ARGV[2]: the lock's value; ARGV[3]: its expiry in milliseconds.
  if held then return held end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 0
end
-- complete and release act only for the request that holds the lock (ARGV[2]).
if held ~= ARGV[2] then return 0 end
if ARGV[1] == 'complete' then
  -- ARGV[3]: the entry; ARGV[4]: its expiry in milliseconds.
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('DEL', KEYS[1])
end
return 1
