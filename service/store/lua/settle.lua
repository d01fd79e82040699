-- Settle a password check: a failure is counted, a success clears the count.
-- KEYS: failure counter, in-flight set. ARGV: attempt id, failed (1|0), window.
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 or redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
else
  redis.call('DEL', KEYS[1])
end
return 1
