-- Refresh rotation, with the grace window and reuse detection.
-- KEYS: session, user set. ARGV: sid, now, idle, maxage, grace, presented jti, new aj, new rj,
-- the note the end is announced with when the session is over.
-- Returns {'miss'} | {'ended', why, fresh?} | {'rotated'|'same', aj, rj, ia, nm, previous rj}
-- A rotation stays unconfirmed ('un') until the caller has written it to SQL
-- and confirms it (confirm.lua): until then the retired token still gets the
-- same successor pair, however late it comes back, because the answer that
-- carried the pair may never have reached the client (a 503, a lost reply).
local k, z, sid = KEYS[1], KEYS[2], ARGV[1]
local now, idle = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxage, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local presented = ARGV[6]
local h, reply = alive(k, z, sid, now, idle, maxage, 'aj', 'rj', 'pj', 'ia', 'ra', 'nm', 'un')
if not h then
  -- Over, now or before: announced with this call's note, which it waits on.
  if reply[1] == 'ended' then announce(ARGV[9], {sid}) end
  return reply
end
if presented == h.rj then
  -- 'ia' is the new pair's iat (whole seconds); 'ra' the exact rotation time
  -- that the grace window is measured from.
  local ia = string.format('%d', math.floor(now))
  redis.call('HSET', k, 'pj', h.rj, 'rj', ARGV[8], 'aj', ARGV[7], 'ia', ia, 'ra', ARGV[2],
             'ls', ARGV[2], 'sy', ARGV[2], 'un', '1')
  return {'rotated', ARGV[7], ARGV[8], ia, h.nm, h.rj}
end
local rotated_at = tonumber(h.ra) or tonumber(h.ia)
if presented == h.pj and (h.un == '1' or now - rotated_at <= grace) then
  redis.call('HSET', k, 'ls', ARGV[2])
  return {'same', h.aj, h.rj, h.ia, h.nm, h.pj}
end
finish(k, z, sid, 'reused', ARGV[9])
return {'ended', 'reused', '1'}
