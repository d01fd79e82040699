-- Ask to start one password check under one or more limits.
-- KEYS: pairs of (failure counter, in-flight set), one pair per limit, all in
-- one slot: for an untrusted client, its address on the account and the whole
-- account; for a trusted device, the device alone; for the address across
-- every username, the address alone.
-- ARGV: now, attempt id, lease (seconds a check may hold its slot; the sets
-- live twice that), then one limit per pair.
-- Returns {1} (go), {0} (wait for a slot) or {-1, ttl} (over a limit).
-- A password check may start only while the failures so far plus the checks
-- still running stay under every limit: a burst of guesses cannot outrun the
-- count, and correct passwords sent at once simply take turns.
local now, lease = tonumber(ARGV[1]), tonumber(ARGV[3])
local scopes = #KEYS / 2
local busy = false
for i = 1, scopes do
  redis.call('ZREMRANGEBYSCORE', KEYS[2 * i], '-inf', now - lease)
end
for i = 1, scopes do
  local limit = tonumber(ARGV[3 + i])
  local failed = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  if failed >= limit then return {-1, redis.call('TTL', KEYS[2 * i - 1])} end
  if failed + redis.call('ZCARD', KEYS[2 * i]) >= limit then busy = true end
end
if busy then return {0} end
for i = 1, scopes do
  redis.call('ZADD', KEYS[2 * i], now, ARGV[2])
  redis.call('EXPIRE', KEYS[2 * i], 2 * lease)
end
return {1}
