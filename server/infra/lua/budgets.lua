-- Count one more against several budgets at once, or against none: the first budget that is
-- used up refuses, and then nothing is counted (a client refused by its own limit must not
-- spend the brand's or the global budget). One round trip, atomic.
-- KEYS[1..n]  the counters, in the order they are checked (one hash slot: the caller tags them)
-- ARGV[1]     the window in seconds (a counter's window starts at its first count)
-- ARGV[2..n+1] the most each counter may reach
-- returns {0, 0} when every counter was counted, or {i, ttl_s} for the first counter i that is
-- at its most (ttl_s: when its window ends)
local window = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local used = tonumber(redis.call('GET', key) or '0')
  if used >= tonumber(ARGV[i + 1]) then
    return {i, redis.call('TTL', key)}
  end
end
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then
    redis.call('EXPIRE', key, window)
  end
end
return {0, 0}
