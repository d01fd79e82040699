-- The guard's one round trip for an API key: alive, within its rate limit, last use due?
-- KEYS: the key's state, its rate counter. ARGV: now, last-use interval,
-- limit (0: no limit), window.
-- Key state fields: st live|revoked|disabled|none|stale, why, ex expires
-- (epoch seconds), lu last write-back of last use, uid, nm username, id key
-- id, sc scopes (already narrowed to the user's), v version (moved by each mark).
-- Returns {'miss', version} | {'none'} | {'ended', why} | {'limited', retry-after}
--       | {'ok', sync ('1' or ''), uid, username, id, scopes}
local k, now = KEYS[1], tonumber(ARGV[1])
local h = redis.call('HMGET', k, 'st', 'why', 'ex', 'lu', 'uid', 'nm', 'id', 'sc', 'v')
local st = h[1]
if not st or st == 'stale' then return {'miss', h[9] or ''} end
if st == 'none' then return {'none'} end
if st ~= 'live' then return {'ended', h[2] or 'revoked'} end
if now >= tonumber(h[3]) then return {'ended', 'expired'} end
local limit = tonumber(ARGV[3])
if limit > 0 then
  local ok, left = rate(KEYS[2], now, ARGV[1], limit, tonumber(ARGV[4]))
  if not ok then return {'limited', left} end
end
local sync = ''
if now - tonumber(h[4]) >= tonumber(ARGV[2]) then
  redis.call('HSET', k, 'lu', ARGV[1])
  sync = '1'
end
return {'ok', sync, h[5], h[6], h[7], h[8]}
