-- Write rebuilt counters of one tenant, each only if it is still missing (another process
-- may have rebuilt it first), and put the caller's open reservations back on them.
-- KEYS[1] the tenant's reservation set; KEYS[2 .. N+1] the counters;
-- KEYS[N+2 .. N+M+1] the hashes of the caller's open reservations
-- ARGV[1] N   ARGV[2] M   ARGV[3] seconds a reservation hash outlives its deadline
-- then N blocks: spent tokens, spent nano-USD, spent GPU us, expire-at (Unix s),
--   marker count k, k reservation ids (charges counted here whose settle has not run yet)
-- then M blocks: reservation id, deadline (Unix ms), tokens, nano-USD, GPU us,
--   counter count j, j counter indexes (1..N) that the reservation is held on
-- Reply: one flag per counter: 1 rebuilt now, 0 it existed already (left untouched)
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local grace_ms = tonumber(ARGV[3]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = {'rt', 'rn', 'ru'}
local rebuilt = {}
local a = 4
for i = 1, n do
  local key = KEYS[1 + i]
  local k = tonumber(ARGV[a + 4])
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'st', ARGV[a], 'sn', ARGV[a + 1], 'su', ARGV[a + 2],
      'rt', '0', 'rn', '0', 'ru', '0')
    for x = 1, k do redis.call('HSET', key, 'x:' .. ARGV[a + 4 + x], '1') end
    redis.call('EXPIREAT', key, ARGV[a + 3])
    rebuilt[i] = 1
  else
    rebuilt[i] = 0
  end
  a = a + 5 + k
end
for r = 1, m do
  local h = KEYS[1 + n + r]
  local rid, deadline = ARGV[a], tonumber(ARGV[a + 1])
  local amounts = {ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]}
  local j = tonumber(ARGV[a + 5])
  if deadline > now then  -- an expired one is reaped, not restored
    local c = redis.call('HGET', h, 'c')
    local holds = {}
    local list = {}
    if c then
      for key in string.gmatch(c, '%S+') do holds[key] = true; list[#list + 1] = key end
    end
    for x = 1, j do
      local idx = tonumber(ARGV[a + 5 + x])
      if rebuilt[idx] == 1 then
        local key = KEYS[1 + idx]
        for d = 1, 3 do
          if amounts[d] ~= '0' then redis.call('HINCRBY', key, held[d], amounts[d]) end
        end
        if not holds[key] then holds[key] = true; list[#list + 1] = key end
      end
    end
    if #list > 0 then
      redis.call('HSET', h, 't', amounts[1], 'n', amounts[2], 'u', amounts[3],
        'c', table.concat(list, ' '), 'd', ARGV[a + 1])
      redis.call('PEXPIREAT', h, string.format('%d', deadline + grace_ms))
      redis.call('ZADD', KEYS[1], ARGV[a + 1], rid)
    end
  end
  a = a + 6 + j
end
return rebuilt
