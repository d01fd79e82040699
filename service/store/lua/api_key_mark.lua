-- Mark an API key revoked, or stale (its user changed: rebuild it from SQL),
-- whether or not Redis holds it. The version moves, so a rebuild that read SQL
-- before this mark cannot write over it (api_key_load.lua).
-- KEYS: the key's state. ARGV: 'revoked' or 'stale', why, expire-at.
-- Returns 1, or 0 for a stale mark on a revoked key (it stays revoked).
local k = KEYS[1]
if ARGV[1] == 'revoked' then
  redis.call('HSET', k, 'st', 'revoked', 'why', ARGV[2])
else
  if redis.call('HGET', k, 'st') == 'revoked' then return 0 end
  redis.call('HSET', k, 'st', 'stale')
end
redis.call('HINCRBY', k, 'v', 1)
redis.call('EXPIREAT', k, ARGV[3])
return 1
