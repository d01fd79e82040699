-- End sessions of one user.
-- KEYS: user set, session key prefix (not a key; carries the hash tag).
-- ARGV: why, expire-at, keep sid ('' for none), sid... ('*' ends every set member).
-- Returns the sids it ended.
local z, prefix, why, exp, keep = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local targets = {}
for i = 4, #ARGV do
  if ARGV[i] == '*' then
    for _, m in ipairs(redis.call('ZRANGE', z, 1, -1)) do table.insert(targets, m) end
  else
    table.insert(targets, ARGV[i])
  end
end
local ended = {}
for _, sid in ipairs(targets) do
  if sid ~= keep then
    local k = prefix .. sid
    if redis.call('HGET', k, 'st') ~= 'ended' then
      redis.call('HSET', k, 'st', 'ended', 'why', why)
      if redis.call('TTL', k) < 0 then redis.call('EXPIREAT', k, exp) end
      table.insert(ended, sid)
    end
    redis.call('ZREM', z, sid)
  end
end
return ended
