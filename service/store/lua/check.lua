-- The guard's one round trip: is the session alive? Slides last-seen.
-- KEYS: session, user set. ARGV: sid, now, idle, maxage, sync.
-- Returns {'miss'} | {'ended', why, fresh?} | {'ok', sync ('1' or ''), created}
local k, z, sid = KEYS[1], KEYS[2], ARGV[1]
local now, idle = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxage, sync = tonumber(ARGV[4]), tonumber(ARGV[5])
local h, reply = alive(k, z, sid, now, idle, maxage, 'sy')
if not h then return reply end
redis.call('HSET', k, 'ls', ARGV[2])
if now - tonumber(h.sy) >= sync then
  redis.call('HSET', k, 'sy', ARGV[2])
  return {'ok', '1', h.cr}
end
return {'ok', '', h.cr}
