-- The guard's one round trip: is the session alive? Slides last-seen.
-- KEYS: session, user set, then the client's rate counter (a client's token
-- under TOKENGATE_RATE_LIMIT) and last the DPoP proof's replay key (a request
-- with a proof). ARGV: sid, now, idle, maxage, sync, then limit and window
-- ('' without a counter) and the replay key's TTL.
-- Returns {'miss'} | {'ended', why, fresh?} | {'replay'} | {'limited', retry-after}
--       | {'ok', sync ('1' or ''), created}
local k, z, sid = KEYS[1], KEYS[2], ARGV[1]
local now, idle = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxage, sync = tonumber(ARGV[4]), tonumber(ARGV[5])
local h, reply = alive(k, z, sid, now, idle, maxage, 'sy')
if not h then return reply end
-- Only a live session's proof is noted: a request answered 'miss' is sent
-- again, with the same proof, once the session is rebuilt.
if ARGV[8] and not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'EX', ARGV[8]) then
  return {'replay'}
end
if ARGV[6] and ARGV[6] ~= '' then
  local ok, left = rate(KEYS[3], now, ARGV[2], tonumber(ARGV[6]), tonumber(ARGV[7]))
  if not ok then return {'limited', left} end
end
redis.call('HSET', k, 'ls', ARGV[2])
if now - tonumber(h.sy) >= sync then
  redis.call('HSET', k, 'sy', ARGV[2])
  return {'ok', '1', h.cr}
end
return {'ok', '', h.cr}
