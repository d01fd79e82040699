-- Settle a password check. A wrong password counts against the address and
-- the account; a right one clears the address's count (the account's runs
-- out with its window, so one success cannot wipe out another address's
-- guesses); a check that never decided (the database or Redis failed) only
-- gives its slot back.
-- KEYS: as attempt.lua, then the set of addresses with a count (for unlock).
-- ARGV: attempt id, 'failed' | 'ok' | 'undecided', window, address.
local function count(key, window)
  local n = redis.call('INCR', key)
  if n == 1 or redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, window) end
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if ARGV[2] == 'failed' then
  count(KEYS[1], ARGV[3])
  count(KEYS[3], ARGV[3])
  redis.call('SADD', KEYS[5], ARGV[4])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
elseif ARGV[2] == 'ok' then
  redis.call('DEL', KEYS[1])
end
return 1
