-- Confirm a rotation once SQL holds it: from now on the retired refresh
-- token is honoured only within the grace window (refresh.lua).
-- KEYS: session. ARGV: the new refresh jti. Returns 1 if it was confirmed.
if redis.call('HGET', KEYS[1], 'rj') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'un')
end
return 0
