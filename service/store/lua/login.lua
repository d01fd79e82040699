-- Add a live session, enforcing the per-user limit atomically.
-- KEYS: user set, new session. ARGV: sid, now, idle, maxage, limit, expire-at, field, value...
-- Returns {'miss'} | {'ok', {replaced sids}, {expired sids}}
local z, k, sid = KEYS[1], KEYS[2], ARGV[1]
local now, idle = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxage, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('EXISTS', z) == 0 then return {'miss'} end
if redis.call('EXISTS', k) == 1 then
  -- Loaded into the set from SQL by a concurrent login and pushed out by
  -- another before this login got here: it lost the race.
  redis.call('ZREM', z, sid)
  return {'ok', {sid}, {}}
end
local prefix = string.sub(k, 1, #k - #sid)
local replaced, gone = {}, {}
redis.call('ZREMRANGEBYSCORE', z, '(0', string.format('%.0f', (now - maxage) * 1000000))
for _, m in ipairs(redis.call('ZRANGE', z, 1, -1)) do
  local mk = prefix .. m
  if redis.call('EXISTS', mk) == 1 then
    local h = hget(mk, 'st', 'cr', 'ls')
    if h.st ~= 'live' then
      redis.call('ZREM', z, m)
    elseif expired(h, now, idle, maxage) then
      finish(mk, z, m, 'expired', now)
      table.insert(gone, m)
    end
  end
end
redis.call('HSET', k, unpack(ARGV, 7))
redis.call('EXPIREAT', k, ARGV[6])
-- Scores are whole microseconds, strictly increasing in login order, even
-- for logins within the same microsecond.
local score = math.floor(now * 1000000)
local top = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= score then score = tonumber(top[2]) + 1 end
redis.call('ZADD', z, string.format('%.0f', score), sid)
if limit > 0 then
  local excess = redis.call('ZCARD', z) - 1 - limit
  if excess > 0 then
    for _, m in ipairs(redis.call('ZRANGE', z, 1, excess)) do
      local mk = prefix .. m
      if redis.call('EXISTS', mk) == 0 then
        redis.call('HSET', mk, 'st', 'ended', 'why', 'replaced')
        redis.call('EXPIREAT', mk, ARGV[6])
      else
        redis.call('HSET', mk, 'st', 'ended', 'why', 'replaced')
      end
      redis.call('ZREM', z, m)
      table.insert(replaced, m)
    end
  end
end
local ttl = redis.call('TTL', z)
if ttl < maxage + 60 then redis.call('EXPIRE', z, maxage + 60) end
return {'ok', replaced, gone}
