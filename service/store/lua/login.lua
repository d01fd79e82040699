-- Add a live session, enforcing the per-user limit atomically.
-- KEYS: user set, new session, then the session key of every member of the
--       user set the caller saw (read just before; the script checks it).
-- ARGV: sid, now, idle, maxage, limit, expiry (EXPIREAT), slack, the note the
--       sessions it replaces are announced with, field, value...
-- Returns {'miss'} (load the user set first) | {'stale'} (the set changed
-- since the caller read it: read it and run again) | {'ok', {replaced}, {expired}}
local z, k, sid = KEYS[1], KEYS[2], ARGV[1]
local now, idle = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxage, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local expiry, slack = ARGV[6], tonumber(ARGV[7])
if redis.call('EXISTS', z) == 0 then return {'miss'} end
if redis.call('EXISTS', k) == 1 then
  if redis.call('HGET', k, 'st') == 'live' then
    -- This login ran already and its reply was lost (the call was sent
    -- again): the same answer, so the caller records the same in SQL.
    local done = cjson.decode(redis.call('HGET', k, 'lo') or '[[], []]')
    announce(ARGV[8], done[1])
    return {'ok', done[1], done[2]}
  end
  -- Loaded into the set from SQL by a concurrent login and pushed out by
  -- another before this login got here: it lost the race.
  redis.call('ZREM', z, sid)
  announce(ARGV[8], {sid})
  return {'ok', {sid}, {}}
end
local prefix = string.sub(k, 1, #k - #sid)
local declared = {}
for i = 3, #KEYS do declared[KEYS[i]] = true end
redis.call('ZREMRANGEBYSCORE', z, '(0', string.format('%.0f', (now - maxage) * 1000000))
local members = redis.call('ZRANGE', z, 1, -1)
for _, m in ipairs(members) do
  if not declared[prefix .. m] then return {'stale'} end
end
local replaced, gone = {}, {}
for _, m in ipairs(members) do
  local mk = prefix .. m
  if redis.call('EXISTS', mk) == 1 then
    local h = hget(mk, 'st', 'cr', 'ls')
    if h.st ~= 'live' then
      redis.call('ZREM', z, m)
    elseif expired(h, now, idle, maxage) then
      finish(mk, z, m, 'expired')
      table.insert(gone, m)
    end
  end
end
redis.call('HSET', k, unpack(ARGV, 9))
redis.call('EXPIREAT', k, expiry)
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
      local missing = redis.call('EXISTS', mk) == 0
      redis.call('HSET', mk, 'st', 'ended', 'why', 'replaced')
      if missing then redis.call('EXPIREAT', mk, expiry) end
      redis.call('ZREM', z, m)
      table.insert(replaced, m)
    end
  end
end
if redis.call('TTL', z) < maxage + slack then redis.call('EXPIRE', z, maxage + slack) end
announce(ARGV[8], replaced)
if #replaced > 0 or #gone > 0 then
  redis.call('HSET', k, 'lo', cjson.encode({replaced, gone}))
end
return {'ok', replaced, gone}
