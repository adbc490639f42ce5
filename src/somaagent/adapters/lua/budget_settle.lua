-- Settle a reservation: release its reserved units and add the actual ones to spent.
-- KEYS[1] the tenant's reservation set   KEYS[2] the reservation's hash   KEYS[3] "done" marker
-- KEYS[4..] every counter the reservation was made on (from the caller's memory)
-- ARGV[1] reservation id   ARGV[2] "tokens nano-USD GPU-us" actually used
-- ARGV[3] "done" marker TTL (s)
-- ARGV[4..] (optional, an allotment's close) per counter, in KEYS order, the units to add to
--   its spent instead of ARGV[2] (a counter reset or rebuilt meanwhile owes less)
-- Reply: {0} already settled or released (nothing changed) | {1} settled | {2} settled, but
-- the reservation was gone (reaped or lost with Redis data): the actual still counts.
-- A counter that is missing is skipped (its rebuild counts this charge from the ledger); a
-- counter rebuilt while this settle was pending carries field 'x:<id>' and already counts it.
if redis.call('EXISTS', KEYS[3]) == 1 then return {0} end
local spent = {'st', 'sn', 'su'}
local held = {'rt', 'rn', 'ru'}
local function add(key, f, amount, sign)
  if amount ~= '0' then redis.call('HINCRBY', key, f, sign .. amount) end
end
local function words(text)
  local out = {}
  for w in string.gmatch(text, '%S+') do out[#out + 1] = w end
  return out
end
local actual = words(ARGV[2])
local r = redis.call('HMGET', KEYS[2], 't', 'n', 'u', 'c')
local holds = {}
if r[4] then
  for key in string.gmatch(r[4], '%S+') do holds[key] = true end
end
local marker = 'x:' .. ARGV[1]
for i = 4, #KEYS do
  local key = KEYS[i]
  local v = redis.call('HMGET', key, 'st', marker)
  if v[2] then
    redis.call('HDEL', key, marker)  -- rebuilt with this charge counted already
  elseif v[1] then
    if holds[key] then
      for d = 1, 3 do add(key, held[d], r[d], '-') end
    end
    local owed = actual
    if ARGV[i] then owed = words(ARGV[i]) end  -- ARGV[4..] align with KEYS[4..]
    for d = 1, 3 do add(key, spent[d], owed[d], '') end
  end
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
if r[4] then return {1} end
return {2}
