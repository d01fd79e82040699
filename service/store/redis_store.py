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

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from .pipelined import PipelinedScripts

KEY_PREFIX = "tg:"
# How long past its absolute age an ended session's state is kept.
EXPIRY_SLACK = 60

# The scripts live in ``lua/`` inside the package (so they ship in the wheel);
# the session scripts share the helpers of ``session_lib.lua``, put in front
# of each of them here.
_SESSION_SCRIPTS = frozenset({"check", "implicit_refresh", "refresh", "login"})


def script_source(name: str) -> str:
    """The Lua source of script ``name`` as it is sent to Redis."""
    lua = resources.files(__package__ or __name__).joinpath("lua")
    source = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name in _SESSION_SCRIPTS:
        source = lua.joinpath("session_lib.lua").read_text(encoding="utf-8") + source
    return source


def _register(redis: Redis, name: str) -> AsyncScript:
    return redis.register_script(script_source(name))


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
        script = functools.partial(_register, redis)
        self._check = script("check")
        self._implicit = script("implicit_refresh")
        self._refresh = script("refresh")
        self._load = script("load")
        self._load_index = script("load_index")
        self._login = script("login")
        self._end = script("end")
        self._fail = script("count")
        self._attempt = script("attempt")
        self._settle = script("settle")

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
            check = self._check
            source = check.script if isinstance(check.script, str | bytes) else bytes(check.script)
            reply = _text(await self.pipelined.run(check.sha, source, keys, args))
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

    async def clear_throttle(self, name: str) -> None:
        """Forget every failed-login and reset-request count of the account ``name``.

        ``tokengate users unlock`` calls this, and only this: whatever keys the
        throttle uses, this is where they are all cleared.
        """
        await self.redis.delete(self.throttle_key("fails", name), self.throttle_key("reset", name))

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
