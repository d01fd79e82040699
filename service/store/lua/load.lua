-- Put a session rebuilt from SQL back, unless someone already has.
-- KEYS: session. ARGV: expire-at, field, value, ... Returns 1 when loaded, else 0.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
