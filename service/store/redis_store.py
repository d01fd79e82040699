"""The Redis side: hot session state, kept and changed by Lua scripts.

Key layout (``<uid>`` is the user id; ``{u<uid>}`` is a Redis Cluster hash
tag, so every key one script touches lives in the same slot)::

    tg:{u<uid>}:s:<sid>   hash   one session's hot state (fields below)
    tg:{u<uid>}:live      zset   the user's live sessions, scored by creation
                                 time in whole microseconds (strictly in login
                                 order), plus the sentinel "~" (score 0) that
                                 says the set was loaded from SQL
    tg:{n<digest>}:fails  string failed logins for one account in the window
    tg:{n<digest>}:inflight zset password checks of that account now running

Session hash fields: ``st`` live|ended, ``why`` end reason, ``cr`` created,
``ls`` last seen, ``sy`` last time ``ls`` was written back to SQL, ``aj``/``rj``
current access/refresh jti, ``pj`` the refresh jti they replaced, ``ia`` the
pair's issue time (whole seconds, its ``iat``), ``ra`` the exact rotation
time, ``nm`` username, ``xf``/``xa``/``xi`` the last implicit refresh
(expired access jti → new access jti, issue time).

Every session key expires when the session's absolute age runs out (plus a
minute); the user set is pruned of members older than that at each login and
expires with the newest. A missing key is never taken to mean "live": the
caller rebuilds it from SQL and runs the script again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from .pipelined import PipelinedScripts

KEY_PREFIX = "tg:"
# How long past its absolute age an ended session's state is kept.
EXPIRY_SLACK = 60

_COMMON = """
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
local function finish(k, z, sid, why, now)
  redis.call('HSET', k, 'st', 'ended', 'why', why)
  redis.call('ZREM', z, sid)
end
-- The session's fields (those named, and the ones every check needs) if it
-- is alive; else nil and the reply that ends the script: missing, ended, or
-- found past its idle timeout or absolute age just now (then ended here).
local function alive(k, z, sid, now, idle, maxage, ...)
  if redis.call('EXISTS', k) == 0 then return nil, {'miss'} end
  local h = hget(k, 'st', 'why', 'cr', 'ls', ...)
  if h.st ~= 'live' then return nil, {'ended', h.why} end
  if expired(h, now, idle, maxage) then
    finish(k, z, sid, 'expired', now)
    return nil, {'ended', 'expired', '1'}
  end
  return h
end
"""

# KEYS: session, user set. ARGV: sid, now, idle, maxage, sync.
# Returns {'miss'} | {'ended', why, fresh?} | {'ok', sync?}
CHECK = (
    _COMMON
    + """
local k, z, sid = KEYS[1], KEYS[2], ARGV[1]
local now, idle = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxage, sync = tonumber(ARGV[4]), tonumber(ARGV[5])
local h, reply = alive(k, z, sid, now, idle, maxage, 'sy')
if not h then return reply end
redis.call('HSET', k, 'ls', ARGV[2])
if now - tonumber(h.sy) >= sync then
  redis.call('HSET', k, 'sy', ARGV[2])
  return {'ok', '1'}
end
return {'ok'}
"""
)

# KEYS: session, user set. ARGV: sid, now, idle, maxage, expired access jti, new access jti.
# Returns {'miss'} | {'ended', why, fresh?} | {'ok', access jti, issued at, name}
IMPLICIT = (
    _COMMON
    + """
local k, z, sid = KEYS[1], KEYS[2], ARGV[1]
local now, idle, maxage = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h, reply = alive(k, z, sid, now, idle, maxage, 'xf', 'xa', 'xi', 'nm')
if not h then return reply end
redis.call('HSET', k, 'ls', ARGV[2])
if h.xf == ARGV[5] then return {'ok', h.xa, h.xi, h.nm} end
local iat = string.format('%d', math.floor(now))
redis.call('HSET', k, 'xf', ARGV[5], 'xa', ARGV[6], 'xi', iat)
return {'ok', ARGV[6], iat, h.nm}
"""
)

# KEYS: session, user set. ARGV: sid, now, idle, maxage, grace, presented jti, new aj, new rj.
# Returns {'miss'} | {'ended', why, fresh?} | {'rotated'|'same', aj, rj, ia, nm, previous rj}
REFRESH = (
    _COMMON
    + """
local k, z, sid = KEYS[1], KEYS[2], ARGV[1]
local now, idle = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxage, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local presented = ARGV[6]
local h, reply = alive(k, z, sid, now, idle, maxage, 'aj', 'rj', 'pj', 'ia', 'ra', 'nm')
if not h then return reply end
if presented == h.rj then
  -- 'ia' is the new pair's iat (whole seconds); 'ra' the exact rotation time
  -- that the grace window is measured from.
  local ia = string.format('%d', math.floor(now))
  redis.call('HSET', k, 'pj', h.rj, 'rj', ARGV[8], 'aj', ARGV[7], 'ia', ia, 'ra', ARGV[2],
             'ls', ARGV[2], 'sy', ARGV[2])
  return {'rotated', ARGV[7], ARGV[8], ia, h.nm, h.rj}
end
local rotated_at = tonumber(h.ra) or tonumber(h.ia)
if presented == h.pj and now - rotated_at <= grace then
  redis.call('HSET', k, 'ls', ARGV[2])
  return {'same', h.aj, h.rj, h.ia, h.nm, h.pj}
end
finish(k, z, sid, 'reused', now)
return {'ended', 'reused', '1'}
"""
)

# KEYS: session. ARGV: expire-at, field, value, ... Sets the hash only if absent.
LOAD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
"""

# KEYS: user set. ARGV: expire-at, score, sid, score, sid ... Loads the set only if absent.
LOAD_INDEX = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], 0, '~')
for i = 2, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
"""

# KEYS: user set, new session. ARGV: sid, now, idle, maxage, limit, expire-at, field, value...
# Returns {'miss'} | {'ok', {replaced sids}, {expired sids}}
LOGIN = (
    _COMMON
    + """
local z, k, sid = KEYS[1], KEYS[2], ARGV[1]
local now, idle = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxage, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('EXISTS', z) == 0 then return {'miss'} end
if redis.call('EXISTS', k) == 1 then
  -- Loaded into the set from SQL by a concurrent login and pushed out by
  -- another before this login got here: it lost the race.
  redis.call('ZREM', z, sid)
  return {'ok', {sid}, {}}
end
local prefix = string.sub(k, 1, #k - #sid)
local replaced, gone = {}, {}
redis.call('ZREMRANGEBYSCORE', z, '(0', string.format('%.0f', (now - maxage) * 1000000))
for _, m in ipairs(redis.call('ZRANGE', z, 1, -1)) do
  local mk = prefix .. m
  if redis.call('EXISTS', mk) == 1 then
    local h = hget(mk, 'st', 'cr', 'ls')
    if h.st ~= 'live' then
      redis.call('ZREM', z, m)
    elseif expired(h, now, idle, maxage) then
      finish(mk, z, m, 'expired', now)
      table.insert(gone, m)
    end
  end
end
redis.call('HSET', k, unpack(ARGV, 7))
redis.call('EXPIREAT', k, ARGV[6])
-- Scores are whole microseconds, strictly increasing in login order, even
-- for logins within the same microsecond.
local score = math.floor(now * 1000000)
local top = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= score then score = tonumber(top[2]) + 1 end
redis.call('ZADD', z, string.format('%.0f', score), sid)
if limit > 0 then
  local excess = redis.call('ZCARD', z) - 1 - limit
  if excess > 0 then
    for _, m in ipairs(redis.call('ZRANGE', z, 1, excess)) do
      local mk = prefix .. m
      if redis.call('EXISTS', mk) == 0 then
        redis.call('HSET', mk, 'st', 'ended', 'why', 'replaced')
        redis.call('EXPIREAT', mk, ARGV[6])
      else
        redis.call('HSET', mk, 'st', 'ended', 'why', 'replaced')
      end
      redis.call('ZREM', z, m)
      table.insert(replaced, m)
    end
  end
end
local ttl = redis.call('TTL', z)
if ttl < maxage + 60 then redis.call('EXPIRE', z, maxage + 60) end
return {'ok', replaced, gone}
"""
)

# KEYS: user set, session key prefix (not a key; carries the hash tag).
# ARGV: why, expire-at, keep sid ('' for none), sid... ('*' ends every set member).
# Returns the sids it ended.
END = """
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
"""

# KEYS: throttle counter. ARGV: window. Returns {count, ttl}.
# KEYS: failure counter, in-flight set. ARGV: now, attempt id, limit.
# Returns {1} (go), {0} (wait for a slot) or {-1, ttl} (over the limit).
# A password check may start only while failures so far plus the checks
# still running stay under the limit: a burst of guesses cannot outrun the
# count, and correct passwords sent at once simply take turns.
ATTEMPT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 30)
local fails = tonumber(redis.call('GET', KEYS[1]) or '0')
if fails >= tonumber(ARGV[3]) then return {-1, redis.call('TTL', KEYS[1])} end
if fails + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return {0} end
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('EXPIRE', KEYS[2], 60)
return {1}
"""

# KEYS: failure counter, in-flight set. ARGV: attempt id, failed (1|0), window.
SETTLE = """
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 or redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a script said about a session."""

    status: str
    values: tuple[str, ...] = ()


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


class RedisSessionStore:
    """Hot session state in Redis; each method is one script call."""

    def __init__(self, redis: Redis, pipelined: PipelinedScripts | None = None) -> None:
        self.redis = redis
        # The guard's check goes over this lean path when there is one.
        self.pipelined = pipelined
        self._check = redis.register_script(CHECK)
        self._implicit = redis.register_script(IMPLICIT)
        self._refresh = redis.register_script(REFRESH)
        self._load = redis.register_script(LOAD)
        self._load_index = redis.register_script(LOAD_INDEX)
        self._login = redis.register_script(LOGIN)
        self._end = redis.register_script(END)
        self._fail = redis.register_script(FAIL)
        self._attempt = redis.register_script(ATTEMPT)
        self._settle = redis.register_script(SETTLE)

    # -- keys -------------------------------------------------------------
    @staticmethod
    def session_prefix(user_id: str) -> str:
        return f"{KEY_PREFIX}{{u{user_id}}}:s:"

    @classmethod
    def session_key(cls, user_id: str, sid: str) -> str:
        return cls.session_prefix(user_id) + sid

    @staticmethod
    def index_key(user_id: str) -> str:
        return f"{KEY_PREFIX}{{u{user_id}}}:live"

    @staticmethod
    def throttle_key(kind: str, name: str) -> str:
        # The exact name: usernames are case-sensitive, so "Alice" and "alice"
        # are two accounts and must not share (or clear) one counter.
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        return f"{KEY_PREFIX}{{n{digest}}}:{kind}"

    # -- scripts ----------------------------------------------------------
    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return _text(await script(keys=list(keys), args=list(args)))

    async def check(
        self, user_id: str, sid: str, *, now: float, idle: int, max_age: int, sync: int
    ) -> Outcome:
        """The guard's one round trip: is the session alive? Slides last-seen."""
        keys = (self.session_key(user_id, sid), self.index_key(user_id))
        args = (sid, repr(now), idle, max_age, sync)
        if self.pipelined is not None:
            reply = _text(await self.pipelined.run(self._check.sha, CHECK, keys, args))
        else:
            reply = await self._run(self._check, keys, args)
        return Outcome(reply[0], tuple(reply[1:]))

    async def implicit_refresh(
        self, user_id: str, sid: str, *, now: float, idle: int, max_age: int,
        expired_jti: str, new_jti: str,
    ) -> Outcome:  # fmt: skip
        reply = await self._run(
            self._implicit,
            (self.session_key(user_id, sid), self.index_key(user_id)),
            (sid, repr(now), idle, max_age, expired_jti, new_jti),
        )
        return Outcome(reply[0], tuple(reply[1:]))

    async def refresh(
        self, user_id: str, sid: str, *, now: float, idle: int, max_age: int, grace: int,
        presented_jti: str, new_access_jti: str, new_refresh_jti: str,
    ) -> Outcome:  # fmt: skip
        reply = await self._run(
            self._refresh,
            (self.session_key(user_id, sid), self.index_key(user_id)),
            (sid, repr(now), idle, max_age, grace, presented_jti, new_access_jti, new_refresh_jti),
        )
        return Outcome(reply[0], tuple(reply[1:]))

    async def load(self, user_id: str, sid: str, fields: Mapping[str, Any], expire_at: int) -> None:
        """Put a session rebuilt from SQL back, unless someone already has."""
        flat: list[Any] = [expire_at]
        for name, value in fields.items():
            flat += [name, value]
        await self._run(self._load, (self.session_key(user_id, sid),), flat)

    async def load_index(
        self, user_id: str, live: Sequence[tuple[str, float]], expire_at: int
    ) -> None:
        flat: list[Any] = [expire_at]
        previous = 0
        for sid, created in live:  # oldest first; ties keep that order
            score = max(int(created * 1_000_000), previous + 1)
            flat += [str(score), sid]
            previous = score
        await self._run(self._load_index, (self.index_key(user_id),), flat)

    async def login(
        self, user_id: str, sid: str, fields: Mapping[str, Any], *, now: float, idle: int,
        max_age: int, limit: int, expire_at: int,
    ) -> Outcome | tuple[list[str], list[str]]:  # fmt: skip
        """Add a live session, enforcing the per-user limit atomically.

        Returns ``Outcome('miss')`` when the user set must be loaded first,
        else the sids pushed out (``replaced``) and found expired on the way.
        """
        flat: list[Any] = [sid, repr(now), idle, max_age, limit, expire_at]
        for name, value in fields.items():
            flat += [name, value]
        reply = await self._run(
            self._login, (self.index_key(user_id), self.session_key(user_id, sid)), flat
        )
        if reply[0] == "miss":
            return Outcome("miss")
        return cast(list[str], reply[1]), cast(list[str], reply[2])

    async def end(
        self, user_id: str, sids: Sequence[str], *, why: str, expire_at: int, keep: str = ""
    ) -> list[str]:
        """End ``sids`` (``'*'`` for every live one) except ``keep``; return those ended."""
        reply = await self._run(
            self._end,
            (self.index_key(user_id), self.session_prefix(user_id)),
            (why, expire_at, keep, *sids),
        )
        return cast(list[str], reply)

    async def record_failure(self, name: str, window: int, kind: str = "fails") -> tuple[int, int]:
        """Count one more event of ``kind`` for ``name``; return the count and the TTL."""
        reply = await self._run(self._fail, (self.throttle_key(kind, name),), (window,))
        return int(reply[0]), int(reply[1])

    def _attempt_keys(self, name: str) -> tuple[str, str]:
        return self.throttle_key("fails", name), self.throttle_key("inflight", name)

    async def begin_attempt(self, name: str, attempt: str, *, now: float, limit: int) -> int:
        """Ask to check a password of ``name``: 1 go, 0 wait, or minus the seconds left."""
        reply = await self._run(
            self._attempt, self._attempt_keys(name), (repr(now), attempt, limit)
        )
        if int(reply[0]) < 0:
            return -max(1, int(reply[1]))
        return int(reply[0])

    async def end_attempt(self, name: str, attempt: str, *, failed: bool, window: int) -> None:
        """Settle an attempt: a failure is counted, a success clears the count."""
        await self._run(
            self._settle, self._attempt_keys(name), (attempt, "1" if failed else "0", window)
        )
