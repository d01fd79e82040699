-- An expired access token whose session is alive gets one successor, the
-- same for every request that carries the same expired token.
-- KEYS: session, user set. ARGV: sid, now, idle, maxage, expired access jti, new access jti.
-- Returns {'miss'} | {'ended', why, fresh?} | {'ok', access jti, issued at, name}
local k, z, sid = KEYS[1], KEYS[2], ARGV[1]
local now, idle, maxage = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h, reply = alive(k, z, sid, now, idle, maxage, 'xf', 'xa', 'xi', 'nm')
if not h then return reply end
redis.call('HSET', k, 'ls', ARGV[2])
if h.xf == ARGV[5] then return {'ok', h.xa, h.xi, h.nm} end
local iat = string.format('%d', math.floor(now))
redis.call('HSET', k, 'xf', ARGV[5], 'xa', ARGV[6], 'xi', iat)
return {'ok', ARGV[6], iat, h.nm}
