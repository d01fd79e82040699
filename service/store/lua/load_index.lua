-- Load the user's set of live sessions from SQL, unless someone already has.
-- KEYS: user set. ARGV: expire-at, score, sid, score, sid ... Returns 1 when loaded, else 0.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], 0, '~')
for i = 2, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
