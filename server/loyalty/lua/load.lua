-- load: write a wallet read from PostgreSQL, unless Redis already mirrors a newer version.
-- Holds Redis has reserved in the last grace period but PostgreSQL does not show yet are
-- checkouts in flight: they are kept, so a reload never admits a spend twice. Holds named in
-- ARGV[7] are voided first (a spend PostgreSQL refused) unless PostgreSQL shows them open, so
-- refusing and reloading is one call.
-- KEYS[1] wallet hash   KEYS[2] holds hash
-- ARGV[1] posted   ARGV[2] version   ARGV[3] now ms   ARGV[4] grace ms   ARGV[5] key ttl s
-- ARGV[6] 1 to write even when the version is not newer (reconcile), else 0
-- ARGV[7] space-separated transfer ids of holds to void first ('' for none)
-- ARGV[8..] pending holds from PostgreSQL as id, points, id, points, ...
-- The wallet's 'loaded' field keeps the version written here: every transfer up to it is
-- counted, so a mirror of one of them that arrives late (credit, post) does not count it again.
-- returns {status, spendable}; status: 'ok' | 'exists' (Redis is as new or newer)
-- A hold PostgreSQL shows open is not voided: a duplicate request with the same key (the same
-- transfer id) committed it while this one was refused.
local open_in_pg = {}
for i = 8, #ARGV, 2 do open_in_pg[ARGV[i]] = true end
for id in string.gmatch(ARGV[7], '%S+') do
  local hold = redis.call('HGET', KEYS[2], id)
  if hold and not open_in_pg[id] then
    local points, state, ms = string.match(hold, '^(%-?%d+)|(%a)|(%d+)$')
    if state == 'p' then
      redis.call('HINCRBY', KEYS[1], 'pending', -tonumber(points))
      redis.call('HSET', KEYS[2], id, points .. '|V|' .. ms)
    end
  end
end
local current = redis.call('HGET', KEYS[1], 'version')
if current and ARGV[6] ~= '1' and tonumber(current) >= tonumber(ARGV[2]) then
  local w = redis.call('HMGET', KEYS[1], 'posted', 'pending')
  return {'exists', tonumber(w[1]) - tonumber(w[2])}
end
local now, grace = tonumber(ARGV[3]), tonumber(ARGV[4])
local keep, pending = {}, 0
for i = 8, #ARGV, 2 do
  keep[ARGV[i]] = ARGV[i + 1] .. '|p|' .. ARGV[3]
  pending = pending + tonumber(ARGV[i + 1])
end
local old = redis.call('HGETALL', KEYS[2])
for i = 1, #old, 2 do
  local points, state, ms = string.match(old[i + 1], '^(%-?%d+)|(%a)|(%d+)$')
  if keep[old[i]] then
    keep[old[i]] = points .. '|p|' .. ms
  elseif state == 'p' and now - tonumber(ms) < grace then
    keep[old[i]] = old[i + 1]
    pending = pending + tonumber(points)
  end
end
redis.call('DEL', KEYS[2])
for id, value in pairs(keep) do redis.call('HSET', KEYS[2], id, value) end
redis.call('HSET', KEYS[1], 'posted', ARGV[1], 'pending', pending, 'version', ARGV[2],
  'loaded', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if next(keep) then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
return {'ok', tonumber(ARGV[1]) - pending}
