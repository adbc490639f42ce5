-- Settle one admitted request's token hold to the tokens it used, counted now, on the
-- Redis clock (see rate_admit.lua for the keys).
-- KEYS: settled zset, held zset, amounts hash (rate_admit.lua's KEYS[2..4])
-- ARGV: hold id, tokens used, window ms, hold ms
-- Reply: 1 when the hold was still open, 0 when it had lapsed (the tokens count anyway)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local id, tokens = ARGV[1], tonumber(ARGV[2])
local window, hold = tonumber(ARGV[3]), tonumber(ARGV[4])
local open = redis.call('ZREM', KEYS[2], id)
if open == 1 then
  local amount = tonumber(redis.call('HGET', KEYS[3], id)) or 0
  redis.call('HINCRBY', KEYS[3], '+', -amount)
end
if tokens > 0 then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('HSET', KEYS[3], id, tokens)
  redis.call('HINCRBY', KEYS[3], '=', tokens)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], window + hold) end
else
  redis.call('HDEL', KEYS[3], id)
end
return open
