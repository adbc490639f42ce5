-- Reserve the same amounts on every counter of one tenant, or on none (one atomic script).
-- KEYS[1] the tenant's reservation set (score = deadline, Unix ms)
-- KEYS[2] this reservation's hash       KEYS[3] its "done" marker
-- KEYS[4..] the counters (hashes: st sn su = spent, rt rn ru = reserved units; a rebuilt
--   counter always has all six fields, so HMGET of nothing but nils means "missing")
-- ARGV[1] reservation id   ARGV[2] lifetime in ms
-- ARGV[3] "tokens nano-USD GPU-us" to hold
-- ARGV[4] reservation hash key prefix (reaping)   ARGV[5] most expired reservations to reap
-- ARGV[6] seconds the reservation hash outlives its deadline
-- ARGV[7] per counter, its token, nano-USD and GPU-us limits ('-1' = unlimited), space-separated
-- ARGV[8] "done" marker key prefix   ARGV[9] "done" marker TTL (s) (reaped allotments)
-- Reply: {1, deadline_ms, values...} reserved | {2} id already used | {3, i, ...} counters i
--        missing (nothing changed) | {4, n, i, dim, remaining (n triples)..., values...} would
--        exceed (nothing changed). values: per counter, its six fields as read before this
--        reservation (st sn su rt rn ru, decimal strings), so the caller knows the state it
--        reserved against without reading it again.
local held = {'rt', 'rn', 'ru'}
local spent = {'st', 'sn', 'su'}
local function words(s)
  local out = {}
  for w in string.gmatch(s, '%S+') do out[#out + 1] = w end
  return out
end
local function add(key, f, amount, sign)
  if amount ~= '0' then redis.call('HINCRBY', key, f, sign .. amount) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Reap expired reservations first, so a crashed gateway cannot hold budget forever. Their
-- counters ('c') are those that hold the reserved amounts; a vanished counter is skipped.
-- An allotment ('allot:' id) past its deadline was left by a gateway that died with it
-- open: what its calls spent never reached the counters, so its whole hold (at least that
-- spend) becomes spent, and its "done" marker makes a late close a no-op.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
for _, rid in ipairs(expired) do
  local h = ARGV[4] .. rid
  local r = redis.call('HMGET', h, 't', 'n', 'u', 'c')
  local allotment = string.sub(rid, 1, 6) == 'allot:'
  if r[4] then
    for key in string.gmatch(r[4], '%S+') do
      if redis.call('EXISTS', key) == 1 then
        for d = 1, 3 do add(key, held[d], r[d], '-') end
        if allotment then
          for d = 1, 3 do add(key, spent[d], r[d], '') end
        end
      end
    end
  end
  if allotment then redis.call('SET', ARGV[8] .. rid, '1', 'EX', ARGV[9]) end
  redis.call('DEL', h)
  redis.call('ZREM', KEYS[1], rid)
end

if redis.call('EXISTS', KEYS[2], KEYS[3]) > 0 then return {2} end

local amounts = words(ARGV[3])
local limits = words(ARGV[7])
local values = {}
local read = {}
local missing = {3}
for i = 4, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'st', 'sn', 'su', 'rt', 'rn', 'ru')
  if not v[1] then missing[#missing + 1] = i - 3 end
  values[i] = v
  for f = 1, 6 do read[#read + 1] = v[f] or '0' end
end
if #missing > 1 then return missing end
local function with_values(reply)
  for _, w in ipairs(read) do reply[#reply + 1] = w end
  return reply
end

local exceeded = {4, 0}
for i = 4, #KEYS do
  local v = values[i]
  for d = 1, 3 do
    local limit = tonumber(limits[(i - 4) * 3 + d])
    if limit >= 0 then
      local used = tonumber(v[d]) + tonumber(v[d + 3])
      if used + tonumber(amounts[d]) > limit then
        exceeded[#exceeded + 1] = i - 3
        exceeded[#exceeded + 1] = d
        exceeded[#exceeded + 1] = limit - used
        exceeded[2] = exceeded[2] + 1
      end
    end
  end
end
if exceeded[2] > 0 then return with_values(exceeded) end

local counters = {}
for i = 4, #KEYS do
  for d = 1, 3 do add(KEYS[i], held[d], amounts[d], '') end
  counters[#counters + 1] = KEYS[i]
end
local deadline = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[2], 't', amounts[1], 'n', amounts[2], 'u', amounts[3],
  'c', table.concat(counters, ' '), 'd', string.format('%d', deadline))
redis.call('PEXPIREAT', KEYS[2], string.format('%d', deadline + tonumber(ARGV[6]) * 1000))
redis.call('ZADD', KEYS[1], string.format('%d', deadline), ARGV[1])
return with_values({1, deadline})
