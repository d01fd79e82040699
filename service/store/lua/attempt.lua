-- Ask to start one password check of an account from one client address.
-- KEYS: the address's failure counter, its in-flight set, the account's
-- failure counter, its in-flight set (one hash tag: the account).
-- ARGV: now, attempt id, limit (per address), ceiling (the whole account),
-- lease (seconds a check may hold its slot; the sets live twice that).
-- Returns {1} (go), {0} (wait for a slot) or {-1, ttl} (over a limit).
-- A password check may start only while the failures so far plus the checks
-- still running stay under the limit, for the address and for the account:
-- a burst of guesses cannot outrun the count, and correct passwords sent at
-- once simply take turns.
local now = tonumber(ARGV[1])
local limit, ceiling, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - lease)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - lease)
local mine = tonumber(redis.call('GET', KEYS[1]) or '0')
local all = tonumber(redis.call('GET', KEYS[3]) or '0')
if mine >= limit then return {-1, redis.call('TTL', KEYS[1])} end
if all >= ceiling then return {-1, redis.call('TTL', KEYS[3])} end
if mine + redis.call('ZCARD', KEYS[2]) >= limit
   or all + redis.call('ZCARD', KEYS[4]) >= ceiling then
  return {0}
end
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZADD', KEYS[4], now, ARGV[2])
redis.call('EXPIRE', KEYS[2], 2 * lease)
redis.call('EXPIRE', KEYS[4], 2 * lease)
return {1}
