-- Ask to start one password check of an account.
-- KEYS: failure counter, in-flight set. ARGV: now, attempt id, limit, lease
-- (seconds a check may hold its slot; the set lives twice that).
-- Returns {1} (go), {0} (wait for a slot) or {-1, ttl} (over the limit).
-- A password check may start only while failures so far plus the checks
-- still running stay under the limit: a burst of guesses cannot outrun the
-- count, and correct passwords sent at once simply take turns.
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - lease)
local fails = tonumber(redis.call('GET', KEYS[1]) or '0')
if fails >= tonumber(ARGV[3]) then return {-1, redis.call('TTL', KEYS[1])} end
if fails + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return {0} end
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('EXPIRE', KEYS[2], 2 * lease)
return {1}
