-- Put an API key's state rebuilt from SQL back, unless it moved since the check that missed.
-- KEYS: the key's state. ARGV: the version that check saw ('' for none),
-- expire-at, field, value, ...
-- Returns 1 when loaded; 0 when someone loaded or marked it meanwhile (check again).
local k = KEYS[1]
local h = redis.call('HMGET', k, 'st', 'v')
if (h[2] or '') ~= ARGV[1] then return 0 end
if h[1] and h[1] ~= 'stale' then return 0 end
redis.call('HSET', k, unpack(ARGV, 3))
redis.call('EXPIREAT', k, ARGV[2])
return 1
