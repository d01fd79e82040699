-- Shared by the session scripts (check, implicit_refresh, refresh, login,
-- last_seen, end): the loader puts this file in front of each of them. Session
-- hash fields: st live|ended, why end reason, cr created, ls last seen, sy
-- last write-back of ls to SQL, aj/rj current access/refresh jti, pj the
-- refresh jti they replaced, ia the pair's iat, ra the exact rotation time,
-- un set while that rotation is not yet confirmed in SQL, nm username, xf/xa/xi the last implicit refresh, lo what its login ended.

-- The one rule of a session's life: over once idle for `idle` seconds (0: no
-- idle timeout) or `maxage` seconds after it was created.
local function expired(h, now, idle, maxage)
  local cr, ls = tonumber(h.cr), tonumber(h.ls)
  return now - cr >= maxage or (idle > 0 and now - ls >= idle)
end
local function hget(k, ...)
  local names = {...}
  local values = redis.call('HMGET', k, unpack(names))
  local h = {}
  for i, name in ipairs(names) do h[name] = values[i] end
  return h
end
-- Tell the instances that answer from their near checks (store/near.py)
-- that `sids` are over, in the same script as the end itself, so that no end
-- goes unannounced. `note` names the list the lease holders acknowledge on
-- ('': nobody waits for them). pcall: a Redis user not allowed to publish on
-- tg:* (an ACL without &tg:*) must not stop a script half-way; near checks
-- need that permission (docs/design.md), and without it enders wait leases out.
local function announce(note, sids)
  if #sids > 0 then
    redis.pcall('PUBLISH', 'tg:ends', note .. ' ' .. table.concat(sids, ' '))
  end
end
local function finish(k, z, sid, why, note)
  redis.call('HSET', k, 'st', 'ended', 'why', why)
  redis.call('ZREM', z, sid)
  announce(note or '', {sid})
end
-- The session's fields (those named, and the ones every check needs) if it
-- is alive; else nil and the reply that ends the script: missing, ended, or
-- found past its idle timeout or absolute age just now (then ended here).
local function alive(k, z, sid, now, idle, maxage, ...)
  if redis.call('EXISTS', k) == 0 then return nil, {'miss'} end
  local h = hget(k, 'st', 'why', 'cr', 'ls', ...)
  if h.st ~= 'live' then return nil, {'ended', h.why} end
  if expired(h, now, idle, maxage) then
    finish(k, z, sid, 'expired')
    return nil, {'ended', 'expired', '1'}
  end
  return h
end
