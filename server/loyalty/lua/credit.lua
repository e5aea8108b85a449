-- credit: apply a single-phase transfer already committed in PostgreSQL (earn, accrual,
-- adjustment, refund; negative points for a debit such as expiry or a clawback).
-- KEYS[1] wallet hash   KEYS[2] holds hash
-- ARGV[1] transfer id   ARGV[2] points (signed)   ARGV[3] account version after it   ARGV[4] now ms
-- returns {status, spendable}; status: 'ok' | 'exists' | 'miss'
local w = redis.call('HMGET', KEYS[1], 'posted', 'pending', 'version', 'loaded')
if not w[1] then return {'miss', 0} end
local posted, pending = tonumber(w[1]), tonumber(w[2])
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {'exists', posted - pending} end
-- A load at this transfer's version or later counted it already (and dropped the markers).
if w[4] and tonumber(ARGV[3]) <= tonumber(w[4]) then return {'exists', posted - pending} end
posted = posted + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'posted', posted,
  'version', math.max(tonumber(w[3]), tonumber(ARGV[3])))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '|C|' .. ARGV[4])
return {'ok', posted - pending}
