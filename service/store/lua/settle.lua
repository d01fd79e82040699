-- Settle a password check begun by attempt.lua. A wrong password counts
-- against every limit; a right one clears the first pair's count when ARGV[4]
-- says so (an address's count on the account, a device's), never the others
-- (the account's runs out with its window, so one success cannot wipe out
-- another address's guesses; an address's across usernames, so a guesser
-- cannot clear it with an account of its own); a check that never decided
-- (the database or Redis failed) only gives its slots back.
-- KEYS: the pairs of attempt.lua, then, with an odd count, the set of the
-- account's counted places (for unlock).
-- ARGV: attempt id, 'failed' | 'ok' | 'undecided', window, '1' to clear the
-- first pair on success, the place to add to that set.
local function count(key, window)
  local n = redis.call('INCR', key)
  if n == 1 or redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, window) end
end
local scopes = math.floor(#KEYS / 2)
for i = 1, scopes do
  redis.call('ZREM', KEYS[2 * i], ARGV[1])
end
if ARGV[2] == 'failed' then
  for i = 1, scopes do
    count(KEYS[2 * i - 1], ARGV[3])
  end
  if #KEYS > 2 * scopes then
    redis.call('SADD', KEYS[#KEYS], ARGV[5])
    redis.call('EXPIRE', KEYS[#KEYS], ARGV[3])
  end
elseif ARGV[2] == 'ok' and ARGV[4] == '1' then
  redis.call('DEL', KEYS[1])
end
return 1
