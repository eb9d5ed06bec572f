-- sluice: check and take the limits of one client under one policy, atomically.
--
-- The arithmetic is the in-memory limiter's (src/limiter/gcra.rs and window.rs), in
-- microseconds, so that every number stays an exact integer in Lua's doubles.
--
-- KEYS[1]  the client's state under the policy, comma-separated, limit by limit in the
--          policy's order: a rate keeps its theoretical arrival time; a window keeps the slot
--          its newest counter is for, then one count per slot kept, newest first.
-- ARGV[1]  now, in microseconds; "" for Redis's own clock, which every replica shares
-- ARGV[2]  the least to take (0: only read)
-- ARGV[3]  the most to take
-- ARGV[4…] per limit: "r", emission interval, capacity
--                  or "w", slot length, slots kept, most requests in a window
--
-- Takes n, the most in [least, most] that every limit admits, from every limit, or nothing
-- if less than `least` fits anywhere. Replies {n, now, the state as it was}: the caller
-- works out the figures from that with the same arithmetic. A key expires a second after its
-- state has become a fresh key's, so Redis holds only clients that are active; the second
-- keeps a key in place for a caller that passes its own time, which may run ahead.

-- floor(a / b) for integers below 2^53, exact whatever the rounding of a / b.
local function div(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    return q - 1
  elseif (q + 1) * b <= a then
    return q + 1
  end
  return q
end

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local least, most = tonumber(ARGV[2]), tonumber(ARGV[3])

local stored = {}
local raw = redis.call('GET', KEYS[1])
if raw then
  for v in string.gmatch(raw, '[^,]+') do
    stored[#stored + 1] = tonumber(v)
  end
end

-- Each limit as of now: what it admits (`room`) and its numbers.
local limits, at, arg = {}, 0, 4
local room = most
while ARGV[arg] do
  local l = { kind = ARGV[arg] }
  if l.kind == 'r' then
    l.emission, l.capacity = tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2])
    arg = arg + 3
    l.tat = stored[at + 1] or 0
    at = at + 1
    l.base = math.max(l.tat, now)
    l.room = math.max(0, div(now + l.capacity - l.base, l.emission))
  else
    l.slot, l.slots, l.max = tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2]), tonumber(ARGV[arg + 3])
    arg = arg + 4
    local index, old = div(now, l.slot), stored[at + 1]
    local counts, total = {}, 0
    for age = 1, l.slots do
      counts[age] = stored[at + 1 + age] or 0
      total = total + counts[age]
    end
    at = at + 1 + l.slots
    local elapsed = index - (old or index)
    if elapsed >= 0 and elapsed < l.slots then
      -- Slots that have left drop off the end.
      for age = l.slots, 1, -1 do
        counts[age] = counts[age - elapsed] or 0
      end
      l.index = index
    elseif elapsed < 0 and -elapsed <= l.slots and total > 0 then
      -- A clock a little behind the state counts in the state's slot.
      l.index = old
    else
      for age = 1, l.slots do counts[age] = 0 end
      l.index = index
    end
    total = 0
    for age = 1, l.slots do total = total + counts[age] end
    l.counts = counts
    l.room = math.max(0, l.max - total)
  end
  room = math.min(room, l.room)
  limits[#limits + 1] = l
end

local reply = { 0, now }
for i = 1, at do
  reply[i + 2] = stored[i] or 0
end
if least == 0 or room < least then
  return reply
end

-- Take `room` from every limit; the key lives until the last limit is fresh again.
local state, fresh = {}, 0
for _, l in ipairs(limits) do
  if l.kind == 'r' then
    local tat = l.base + room * l.emission
    state[#state + 1] = tat
    fresh = math.max(fresh, tat - now)
  else
    l.counts[1] = l.counts[1] + room
    state[#state + 1] = l.index
    for age = 1, l.slots do
      state[#state + 1] = l.counts[age]
      if l.counts[age] > 0 then
        fresh = math.max(fresh, (l.index + l.slots - age + 1) * l.slot - now)
      end
    end
  end
end
local text = {}
for i, v in ipairs(state) do
  text[i] = string.format('%.0f', v)
end
redis.call('SET', KEYS[1], table.concat(text, ','), 'PX', math.ceil(fresh / 1000) + 1000)
reply[1] = room
return reply
