-- Withdraw a request admitted in one scope (a tenant's limits) that another of its scopes
-- (its key's) refused in the same round: its request leaves the window and its token hold
-- is released, as if it had never been admitted (see rate_admit.lua for the keys).
-- KEYS: rate_admit.lua's four; ARGV: hold id
-- Reply: 1 when the request was still counted, 0 when it was not (lapsed, or settled)
local id = ARGV[1]
local counted = redis.call('ZREM', KEYS[1], id)
if redis.call('ZREM', KEYS[3], id) == 1 then
  local amount = tonumber(redis.call('HGET', KEYS[4], id)) or 0
  redis.call('HINCRBY', KEYS[4], '+', -amount)
  redis.call('HDEL', KEYS[4], id)
end
return counted
