-- post: make a hold final (the points are spent).
-- KEYS[1] wallet hash   KEYS[2] holds hash
-- ARGV[1] transfer id   ARGV[2] PostgreSQL account version after the post
-- returns {status, spendable}; status: 'ok' | 'exists' (already posted) | 'voided' | 'miss'
local w = redis.call('HMGET', KEYS[1], 'posted', 'pending', 'version', 'loaded')
if not w[1] then return {'miss', 0} end
local posted, pending = tonumber(w[1]), tonumber(w[2])
local hold = redis.call('HGET', KEYS[2], ARGV[1])
if not hold then return {'miss', posted - pending} end
local points, state, ms = string.match(hold, '^(%-?%d+)|(%a)|(%d+)$')
if state == 'P' then return {'exists', posted - pending} end
if state ~= 'p' then return {'voided', posted - pending} end
points = tonumber(points)
if w[4] and tonumber(ARGV[2]) <= tonumber(w[4]) then
  -- A load at this post's version or later counted it in 'posted' already, and kept the hold
  -- as one in flight (PostgreSQL no longer shows it open): only the hold is released.
  pending = pending - points
  redis.call('HSET', KEYS[1], 'pending', pending)
  redis.call('HSET', KEYS[2], ARGV[1], points .. '|P|' .. ms)
  return {'ok', posted - pending}
end
posted, pending = posted - points, pending - points
redis.call('HSET', KEYS[1], 'posted', posted, 'pending', pending,
  'version', math.max(tonumber(w[3]), tonumber(ARGV[2])))
redis.call('HSET', KEYS[2], ARGV[1], points .. '|P|' .. ms)
return {'ok', posted - pending}
