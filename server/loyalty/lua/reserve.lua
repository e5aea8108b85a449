-- reserve: put a hold on a guest's points (the fast admission of a spend).
-- KEYS[1] wallet hash {posted, pending, version}   KEYS[2] holds hash {transfer id -> "points|state|ms"}
-- ARGV[1] transfer id   ARGV[2] points (> 0)   ARGV[3] now in ms   ARGV[4] key ttl in s
-- returns {status, spendable after}; status: 'ok' | 'exists' | 'insufficient' | 'miss'
local w = redis.call('HMGET', KEYS[1], 'posted', 'pending')
if not w[1] then return {'miss', 0} end
local posted, pending = tonumber(w[1]), tonumber(w[2])
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {'exists', posted - pending} end
local points = tonumber(ARGV[2])
if posted - pending < points then return {'insufficient', posted - pending} end
redis.call('HSET', KEYS[1], 'pending', pending + points)
redis.call('HSET', KEYS[2], ARGV[1], points .. '|p|' .. ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {'ok', posted - pending - points}
