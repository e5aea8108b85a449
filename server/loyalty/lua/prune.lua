-- prune: drop the markers of resolved transfers (posted 'P', voided 'V', credited 'C') whose
-- time is before ARGV[1]; open holds ('p') stay, and so do the balances. A marker makes a
-- repeated mirror of its transfer answer 'exists'; one that comes after the marker is gone
-- gets 'miss' and a reload from PostgreSQL, which is always right.
-- KEYS[1] wallet hash   KEYS[2] holds hash
-- ARGV[1] cutoff in ms
-- returns {'ok', markers dropped}
local cutoff = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[2])
local drop = {}
for i = 1, #all, 2 do
  local state, ms = string.match(all[i + 1], '^%-?%d+|(%a)|(%d+)$')
  if state and state ~= 'p' and tonumber(ms) < cutoff then drop[#drop + 1] = all[i] end
end
-- HDEL in slices: unpack() of thousands of arguments overflows Lua's stack.
for first = 1, #drop, 1000 do
  redis.call('HDEL', KEYS[2], unpack(drop, first, math.min(first + 999, #drop)))
end
return {'ok', #drop}
