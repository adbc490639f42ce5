-- Manual reset: set one counter's spent units to 0, keep what is reserved.
-- KEYS[1] the counter.  Reply: {0} missing | {1, tokens, nano-USD, GPU us} spent before
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local v = redis.call('HMGET', KEYS[1], 'st', 'sn', 'su')
redis.call('HSET', KEYS[1], 'st', '0', 'sn', '0', 'su', '0')
return {1, tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')}
