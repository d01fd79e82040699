-- Renew one instance's near-check lease, then send its heartbeat (store/near.py).
-- KEYS: the lease set. ARGV: instance id, lease in ms, heartbeat number.
-- The lease ends at Redis's time plus the lease; the heartbeat goes out on the
-- instance's own channel after the lease is written.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[1])
-- Instances gone for a minute are forgotten.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%.0f', now - 60000))
redis.call('PEXPIRE', KEYS[1], 120000)
redis.call('PUBLISH', 'tg:near:' .. ARGV[1], ARGV[3])
return 1
