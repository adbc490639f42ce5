-- Release a reservation without spend (the call failed): its reserved units are freed.
-- KEYS[1] the tenant's reservation set   KEYS[2] the reservation's hash   KEYS[3] "done" marker
-- KEYS[4..] every counter the reservation was made on
-- ARGV[1] reservation id   ARGV[2] "done" marker TTL (s)
-- Reply: {0} already settled or released | {1} released | {2} it was gone already
if redis.call('EXISTS', KEYS[3]) == 1 then return {0} end
local held = {'rt', 'rn', 'ru'}
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
    redis.call('HDEL', key, marker)  -- rebuilt without this reservation already
  elseif v[1] and holds[key] then
    for d = 1, 3 do
      if r[d] ~= '0' then redis.call('HINCRBY', key, held[d], '-' .. r[d]) end
    end
  end
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
if r[4] then return {1} end
return {2}
