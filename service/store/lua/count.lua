-- Count one event in a window (password-reset requests).
-- KEYS: counter. ARGV: window. Returns {count, ttl}.
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
