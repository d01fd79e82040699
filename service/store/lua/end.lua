-- End sessions of one user.
-- KEYS: user set, then the session key of each sid in ARGV (same order).
-- ARGV: why, expiry (EXPIREAT, for keys Redis had lost), keep sid ('' for
--       none), every (1: the sids must cover the whole user set), the
--       note of the end as announced (see announce in session_lib), sid...
-- Returns {'stale'} when `every` is set and the user set holds a session the
-- caller did not name (it changed since the caller read it: read it and run
-- again), else {'ok', {the sids it ended}}.
local z, why, expiry, keep = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if ARGV[4] == '1' then
  local named = {}
  for i = 6, #ARGV do named[ARGV[i]] = true end
  for _, m in ipairs(redis.call('ZRANGE', z, 1, -1)) do
    if not named[m] then return {'stale'} end
  end
end
local ended, over = {}, {}
for i = 6, #ARGV do
  local sid, k = ARGV[i], KEYS[i - 4]
  if sid ~= keep then
    table.insert(over, sid)
    if redis.call('HGET', k, 'st') ~= 'ended' then
      redis.call('HSET', k, 'st', 'ended', 'why', why)
      if redis.call('TTL', k) < 0 then redis.call('EXPIREAT', k, expiry) end
      table.insert(ended, sid)
    end
    redis.call('ZREM', z, sid)
  end
end
-- Every named session is over now, ended by this call or before it: all are
-- announced, so that a call sent again (or a second logout) has its own
-- acknowledgements to wait for.
announce(ARGV[5], over)
return {'ok', ended}
