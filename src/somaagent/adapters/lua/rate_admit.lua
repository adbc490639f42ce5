-- Admit one request against an API key's rate limits, atomically, on the Redis clock
-- (see adapters/redis_rate_limit.py and domain/rate_limits.py).
-- KEYS[1] requests: zset, member = hold id, score = admission time (ms)
-- KEYS[2] settled:  zset, member = hold id, score = settle time (ms)
-- KEYS[3] held:     zset, member = hold id, score = the hold's expiry (ms)
-- KEYS[4] amounts:  hash, hold id -> tokens; "=" settled tokens in the window, "+" held tokens
-- ARGV: hold id, rpm (-1: none), tpm (-1: none), worst-case tokens, window ms, hold ms
-- Reply: {status, retry ms, requests left (-1: none), tokens left (-1: none)}
--   status 1 admitted, 2 requests limit reached, 3 tokens limit reached, 4 too large
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local id = ARGV[1]
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, window, hold = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local since = now - window
local BATCH = 500

-- Remove the members of zkey scored at most upto; take their amounts off the total field.
local function drop(zkey, upto, field)
  while true do
    local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', upto, 'LIMIT', 0, BATCH)
    if #gone == 0 then return end
    local amounts = redis.call('HMGET', KEYS[4], unpack(gone))
    local sum = 0
    for i = 1, #amounts do sum = sum + (tonumber(amounts[i]) or 0) end
    redis.call('HDEL', KEYS[4], unpack(gone))
    redis.call('ZREM', zkey, unpack(gone))
    redis.call('HINCRBY', KEYS[4], field, -sum)
    if #gone < BATCH then return end
  end
end

local requests, used = 0, 0
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', since)
  requests = redis.call('ZCARD', KEYS[1])
end
if tpm >= 0 then
  drop(KEYS[2], since, '=')
  drop(KEYS[3], now, '+')
  local totals = redis.call('HMGET', KEYS[4], '=', '+')
  used = (tonumber(totals[1]) or 0) + (tonumber(totals[2]) or 0)
end
local requests_left = rpm >= 0 and rpm - requests or -1
local tokens_left = tpm >= 0 and tpm - used or -1

if tpm >= 0 and cost > tpm then
  return {4, 0, requests_left, tokens_left}
end
if rpm >= 0 and requests >= rpm then
  -- the last of the oldest requests that must leave the window for one more to fit: at
  -- now + retry its score is at most the window's start, so it is gone (>= 1 ms: an entry
  -- at the start was removed above)
  local oldest = redis.call('ZRANGE', KEYS[1], requests - rpm, requests - rpm, 'WITHSCORES')
  return {2, tonumber(oldest[2]) + window - now, 0, tokens_left}
end
if tpm >= 0 and used + cost > tpm then
  -- settled calls leave the window oldest first; when they cannot free enough, calls in
  -- flight hold the rest and free it as they end: look again in a second
  local need, freed, retry, start = used + cost - tpm, 0, 1000, 0
  while freed < need and start < 20 * BATCH do
    local entries = redis.call('ZRANGE', KEYS[2], start, start + BATCH - 1, 'WITHSCORES')
    if #entries == 0 then break end
    local ids = {}
    for i = 1, #entries, 2 do ids[#ids + 1] = entries[i] end
    local amounts = redis.call('HMGET', KEYS[4], unpack(ids))
    for i = 1, #ids do
      freed = freed + (tonumber(amounts[i]) or 0)
      if freed >= need then
        retry = tonumber(entries[2 * i]) + window - now
        break
      end
    end
    start = start + BATCH
  end
  return {3, retry, requests_left, tokens_left}
end

if rpm >= 0 then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('PEXPIRE', KEYS[1], window)
  requests_left = requests_left - 1
end
if tpm >= 0 then
  redis.call('ZADD', KEYS[3], now + hold, id)
  redis.call('HSET', KEYS[4], id, cost)
  redis.call('HINCRBY', KEYS[4], '+', cost)
  for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], window + hold) end
  tokens_left = tokens_left - cost
end
return {1, 0, requests_left, tokens_left}
