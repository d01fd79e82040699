"""The Redis side: hot session state, kept and changed by Lua scripts.

Key layout (``<uid>`` is the user id; ``{u<uid>}`` is a Redis Cluster hash
tag, so every key one script touches lives in the same slot, and every
script names each key it touches in ``KEYS``)::

    tg:{u<uid>}:s:<sid>   hash   one session's hot state (fields in session_lib.lua)
    tg:{u<uid>}:live      zset   the user's live sessions, scored by creation
                                 time in whole microseconds (strictly in login
                                 order), plus the sentinel "~" (score 0) that
                                 says the set was loaded from SQL
    tg:{u<uid>}:rl:c:<client_id>  hash  a client's rate counter (rate_lib.lua)
    tg:{u<uid>}:dp:<digest>  string  a DPoP proof seen at a guarded request (check.lua)
    tg:dp:<digest>        string  a DPoP proof seen at a token endpoint (``proof_once``)

API keys' state lives under their own tag (``api_keys.py``); the password
throttle's keys are in ``throttle.py``.

The scripts live in ``lua/``, one file each. This module (and ``throttle.py``) is the only code
that knows their arguments, their replies and the hash's field names: every
method returns a typed result (``results.py``). A missing key is never taken
to mean "live": the caller gets ``MISS``, rebuilds the session from SQL and
runs the script again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

import hiredis
from redis.commands.core import AsyncScript

from .connect import KEY_PREFIX, AnyRedis
from .near import LEASE, LEASE_KEY, ack_key
from .pipelined import PipelinedScripts
from .results import (
    MISS,
    REPLAYED,
    CheckResult,
    Ended,
    EndReason,
    Limited,
    Live,
    LoginResult,
    Opened,
    ProofReplay,
    RateCount,
    RefreshResult,
    Reissue,
    ReissueResult,
    Rotation,
    SessionPolicy,
    SessionRecord,
)
from .throttle import ThrottleScripts

# The session scripts share the helpers of session_lib.lua, put in front of each.
_SESSION_SCRIPTS = frozenset(
    {"check", "peek", "implicit_refresh", "refresh", "login", "last_seen", "end"}
)
# The scripts that check a credential count it against TOKENGATE_RATE_LIMIT.
_RATE_SCRIPTS = frozenset({"check", "api_key"})
SCRIPTS = (
    "check", "implicit_refresh", "refresh", "load", "load_index", "login", "end",
    "last_seen", "attempt", "settle", "count", "confirm", "peek", "holders",
)  # fmt: skip
# A script that must see the whole user set runs again if a login changed the
# set between the caller's read and the script: this many times at most.
MAX_STALE_RETRIES = 20


def script_source(name: str) -> str:
    """The Lua source of script ``name`` as it is sent to Redis."""
    lua = resources.files(__package__ or __name__).joinpath("lua")
    source = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name in _RATE_SCRIPTS:
        source = lua.joinpath("rate_lib.lua").read_text(encoding="utf-8") + source
    if name in _SESSION_SCRIPTS:
        source = lua.joinpath("session_lib.lua").read_text(encoding="utf-8") + source
    return source


def rate_key(tag: str, ident: str) -> str:
    """A credential's rate counter, under its tag: ``k`` for an API key, ``c:<client_id>``."""
    return f"{tag}rl:{ident}"


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def _source(script: AsyncScript) -> str | bytes:
    text = script.script
    return text if isinstance(text, str | bytes) else bytes(text)


log = logging.getLogger("tokengate")
# Waiting for acknowledgements: first look after this long, then twice as long
# each time, up to ACK_POLL_MAX; a lease that never acknowledges is waited out
# for LEASE plus ACK_SLACK after the holders were read.
ACK_POLL_FIRST, ACK_POLL_MAX, ACK_SLACK = 0.001, 0.05, 0.05
# Lease holders whose lease ended this recently by Redis's clock are waited for too.
RECENT_MS = 5000
# For this long after Redis started (uptime_in_seconds), an end waits out any lease:
# a restart lost the lease set, and a lease from before it runs for LEASE at most.
RESTART_S = 2


def _ended(reply: list[Any]) -> Ended:
    """``{'ended', why, '1'?}``: the third element says this call ended it."""
    return Ended(EndReason.parse(reply[1] if len(reply) > 1 else None), len(reply) > 2)


class StaleSet(RuntimeError):
    """The user's set kept changing under a script that needed all of it."""


class RedisSessionStore(ThrottleScripts):
    """Hot session state in Redis; each method is one script call (two for the user set).

    The password throttle's scripts come from ``ThrottleScripts`` (``throttle.py``).
    """

    def __init__(
        self, redis: AnyRedis, policy: SessionPolicy, pipelined: PipelinedScripts | None = None
    ) -> None:
        self.redis = redis
        self.policy = policy
        # The guard's check goes over this lean path when there is one.
        self.pipelined = pipelined
        self._scripts = {name: redis.register_script(script_source(name)) for name in SCRIPTS}
        # Each script's SHA and text as the lean path sends them, and the
        # check's arguments that never change: the guard's call builds nothing else.
        self._lean = {name: (script.sha, _source(script)) for name, script in self._scripts.items()}
        self._check_tail = (policy.idle_timeout, policy.max_age, policy.sync_interval)

    # -- keys -------------------------------------------------------------
    @staticmethod
    def user_tag(user_id: str) -> str:
        """The prefix of every key of one user: one hash tag, one cluster slot."""
        return f"{KEY_PREFIX}{{u{user_id}}}:"

    @classmethod
    def session_prefix(cls, user_id: str) -> str:
        return cls.user_tag(user_id) + "s:"

    @classmethod
    def session_key(cls, user_id: str, sid: str) -> str:
        return cls.session_prefix(user_id) + sid

    @classmethod
    def index_key(cls, user_id: str) -> str:
        return cls.user_tag(user_id) + "live"

    @classmethod
    def session_keys(cls, user_id: str, sid: str) -> tuple[str, str]:
        """The session's hash and the user's index of live sessions."""
        tag = cls.user_tag(user_id)
        return tag + "s:" + sid, tag + "live"

    # -- running scripts ----------------------------------------------------
    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script: AsyncScript = self._scripts[name]
        return _text(await script(keys=list(keys), args=list(args)))

    async def _run_lean(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script of a request's own path over the lean pipelined connection, if any.

        Requests that arrive together share that one connection instead of each
        opening one of the pool's: a burst of expired tokens, say, costs no
        connection storm (whose connects may time out on a busy machine).
        """
        if self.pipelined is None:
            return await self._run(name, keys, args)
        sha, source = self._lean[name]
        return _text(await self.pipelined.run(sha, source, keys, args))

    def _session_args(self, sid: str, now: float) -> list[Any]:
        p = self.policy
        return [sid, repr(now), p.idle_timeout, p.max_age]

    async def _members(self, user_id: str) -> list[str]:
        members = await self.redis.zrange(self.index_key(user_id), 1, -1)
        return [str(_text(m)) for m in members]

    # -- the session scripts ------------------------------------------------
    async def check(
        self, user_id: str, sid: str, *, now: float, client: RateCount | None = None,
        proof: ProofReplay | None = None,
    ) -> CheckResult:  # fmt: skip
        """The guard's one round trip: is the session alive? Slides last-seen.

        ``client``: a client's token under ``TOKENGATE_RATE_LIMIT``, counted in
        the same script (``Limited`` when over). ``proof``: a DPoP proof's
        replay key, set in the same script (``Replayed`` if it was there).
        """
        keys: tuple[str, ...] = self.session_keys(user_id, sid)
        args: tuple[Any, ...] = (sid, repr(now), *self._check_tail)
        if client is not None:
            keys = (*keys, rate_key(self.user_tag(user_id), client.ident))
            args = (*args, client.limit, client.window)
        if proof is not None:
            tag = self.user_tag(user_id)
            keys = (*keys, f"{tag}dp:{proof.digest}")
            args = (*args, *(() if client is not None else ("", "")), proof.ttl)
        pipelined = self.pipelined
        if pipelined is not None:
            sha, source = self._lean["check"]
            raw = await pipelined.run(sha, source, keys, args)
        else:
            raw = await self._scripts["check"](keys=list(keys), args=list(args))
        result = self.check_result(raw)
        assert result is not None  # both paths raise an error reply
        return result

    def check_nowait(self, user_id: str, sid: str, *, now: float) -> asyncio.Future[Any] | None:
        """:meth:`check` sent without waiting: the future of its raw reply for
        :meth:`check_result`, or ``None`` where it cannot be sent so (then await
        :meth:`check`)."""
        pipelined = self.pipelined
        if pipelined is None:
            return None
        keys = self.session_keys(user_id, sid)
        return pipelined.send_nowait(
            self._lean["check"][0], keys, (sid, repr(now), *self._check_tail)
        )

    @staticmethod
    def check_result(raw: Any) -> CheckResult | None:
        """What :meth:`check` returns for a raw reply; ``None`` for an error reply."""
        if isinstance(raw, hiredis.ReplyError):
            return None
        if raw[0] == b"ok":  # the hot path: nothing else to decode
            return Live(raw[1] == b"1", float(raw[2]))
        if raw[0] == b"limited":
            return Limited(int(raw[1]))
        if raw[0] == b"replay":
            return REPLAYED
        reply = _text(raw)
        return _ended(reply) if reply[0] == "ended" else MISS

    async def peek(self, user_id: str, sid: str, *, now: float) -> CheckResult:
        """Whether the session is over, without counting this as activity (expired tokens)."""
        keys = self.session_keys(user_id, sid)
        reply = await self._run_lean("peek", keys, self._session_args(sid, now))
        if reply[0] == "ok":
            return Live(sync_due=False)
        return _ended(reply) if reply[0] == "ended" else MISS

    async def implicit_refresh(
        self, user_id: str, sid: str, *, now: float, expired_jti: str, new_jti: str
    ) -> ReissueResult:
        """The access token that succeeds ``expired_jti``: the same for every caller."""
        keys = self.session_keys(user_id, sid)
        reply = await self._run_lean(
            "implicit_refresh", keys, [*self._session_args(sid, now), expired_jti, new_jti]
        )
        if reply[0] == "ok":
            return Reissue(access_jti=reply[1], iat=int(reply[2]), username=reply[3])
        return _ended(reply) if reply[0] == "ended" else MISS

    async def refresh(
        self, user_id: str, sid: str, *, now: float, presented_jti: str,
        new_access_jti: str, new_refresh_jti: str, note: str = "",
    ) -> RefreshResult:  # fmt: skip
        """Rotate on the current refresh jti, repeat within grace, else end the session.

        A session found over is announced with ``note`` (see :meth:`settle`).
        """
        keys = self.session_keys(user_id, sid)
        args = [
            *self._session_args(sid, now), self.policy.refresh_grace,
            presented_jti, new_access_jti, new_refresh_jti, note,
        ]  # fmt: skip
        reply = await self._run("refresh", keys, args)
        if reply[0] in ("rotated", "same"):
            aj, rj, iat, name, previous = reply[1:6]
            return Rotation(reply[0] == "rotated", aj, rj, previous, int(iat), name)
        return _ended(reply) if reply[0] == "ended" else MISS

    async def proof_once(self, digest: str, ttl: int) -> bool:
        """Note a token request's DPoP proof; whether it is new (else a replay)."""
        return bool(await self.redis.set(f"{KEY_PREFIX}dp:{digest}", "1", nx=True, ex=ttl))

    async def ping(self) -> None:
        await self.redis.ping()

    async def ended(self, user_id: str, sids: Sequence[str]) -> dict[str, EndReason]:
        """Those of ``sids`` that Redis holds as ended, with the reason (a read, nothing more)."""
        found: dict[str, EndReason] = {}
        for sid in sids:
            state, why = await self.redis.hmget(self.session_key(user_id, sid), ["st", "why"])
            if _text(state) == "ended":
                found[sid] = EndReason.parse(_text(why))
        return found

    async def confirm(self, user_id: str, sid: str, refresh_jti: str) -> None:
        """The rotation to ``refresh_jti`` is in SQL: the retired token's grace now runs out."""
        await self._run("confirm", (self.session_key(user_id, sid),), (refresh_jti,))

    @staticmethod
    def _fields(record: SessionRecord, now: float) -> list[Any]:
        fields = {
            "st": "ended" if record.ended else "live", "why": record.ended or "",
            "cr": repr(record.created), "ls": repr(record.last_seen), "sy": repr(now),
            "aj": record.access_jti, "rj": record.refresh_jti,
            "pj": record.previous_refresh_jti, "ia": record.iat, "nm": record.username,
        }  # fmt: skip
        return [part for item in fields.items() for part in item]

    async def load(self, user_id: str, sid: str, record: SessionRecord, *, now: float) -> None:
        """Put a session rebuilt from SQL back, unless someone already has."""
        expiry = self.policy.expiry(record.created, now)
        await self._run(
            "load", (self.session_key(user_id, sid),), [expiry, *self._fields(record, now)]
        )

    async def load_index(
        self, user_id: str, live: Sequence[tuple[str, float]], *, now: float
    ) -> None:
        """Load the user's set of live sessions (``(sid, created)``, oldest first) from SQL."""
        flat: list[Any] = [self.policy.expiry(now, now)]
        previous = 0
        for sid, created in live:  # ties keep their order
            score = max(int(created * 1_000_000), previous + 1)
            flat += [str(score), sid]
            previous = score
        await self._run("load_index", (self.index_key(user_id),), flat)

    async def login(
        self, user_id: str, sid: str, record: SessionRecord, *, now: float, limit: int,
        note: str = "",
    ) -> LoginResult:  # fmt: skip
        """Add a live session, enforcing the per-user limit atomically.

        ``MISS`` when the user's set must be loaded from SQL first; else the
        sessions pushed out over the limit (announced with ``note``) and those
        found expired on the way.
        """
        p = self.policy
        args = [
            *self._session_args(sid, now), limit, p.expiry(record.created, now), p.slack, note,
            *self._fields(record, now),
        ]  # fmt: skip
        keys = [self.index_key(user_id), self.session_key(user_id, sid)]
        for _ in range(MAX_STALE_RETRIES):
            members = [self.session_key(user_id, m) for m in await self._members(user_id)]
            reply = await self._run("login", [*keys, *members], args)
            if reply[0] == "miss":
                return MISS
            if reply[0] == "ok":
                return Opened(tuple(reply[1]), tuple(reply[2]))
        raise StaleSet("the user's sessions kept changing during a login")

    async def end(
        self, user_id: str, sids: Sequence[str], *, reason: EndReason, now: float,
        every: bool = False, keep: str = "", note: str = "",
    ) -> list[str]:  # fmt: skip
        """End ``sids`` except ``keep`` (``every``: and every other one Redis knows).

        Every one of them is announced with ``note``, ended now or before (see
        :meth:`settle`). Returns the sids this call ended.
        """
        for _ in range(MAX_STALE_RETRIES):
            targets = list(dict.fromkeys([*sids, *(await self._members(user_id) if every else ())]))
            keys = [self.index_key(user_id), *(self.session_key(user_id, t) for t in targets)]
            expiry = self.policy.expiry(now, now)
            args = [reason, expiry, keep, "1" if every else "0", note, *targets]
            reply = await self._run("end", keys, args)
            if reply[0] == "ok":
                return list(reply[1])
        raise StaleSet("the user's sessions kept changing while they were ended")

    async def settle(self, note: str) -> None:
        """Return once no instance can still let through a session that a call
        announced with ``note`` as over (``near.py``): each instance holding a
        near-check lease has acknowledged it, or has surely stopped answering near.

        The caller ends first, records what it must in SQL, then settles, and
        answers only after that. It never raises: when the holders cannot be
        read or the acknowledgements cannot be looked at, it waits out any lease
        (``LEASE`` seconds). The waits look without blocking a connection.
        """
        loop = asyncio.get_running_loop()
        try:
            holders = await self._run("holders", (LEASE_KEY,), (RECENT_MS, RESTART_S))
        except Exception as exc:
            log.warning("cannot read the near-check leases (%s); waiting them out", exc)
            await asyncio.sleep(LEASE + ACK_SLACK)
            return
        waiting = {str(name) for name in holders}
        # A lease holder's near answers stop LEASE after the last heartbeat it
        # sent before the end was announced, and the holders were read after it.
        deadline = loop.time() + LEASE + ACK_SLACK
        key, pause = ack_key(note), ACK_POLL_FIRST
        while waiting:
            try:
                acked = await self.redis.lpop(key, len(waiting))
            except Exception as exc:
                log.warning("cannot read near-check acknowledgements (%s); waiting", exc)
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                return
            waiting.difference_update(str(_text(name)) for name in acked or ())
            left = deadline - loop.time()
            if not waiting or left <= 0:
                return
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, ACK_POLL_MAX)

    async def last_seen(
        self, user_id: str, sessions: Sequence[tuple[str, float, float]], *, now: float
    ) -> dict[str, float]:
        """Of ``(sid, created, last seen in SQL)``, the live sessions and their last-seen time."""
        if not sessions:
            return {}
        p = self.policy
        keys = [self.session_key(user_id, sid) for sid, _, _ in sessions]
        args: list[Any] = [repr(now), p.idle_timeout, p.max_age]
        for _, created, seen in sessions:
            args += [repr(created), repr(seen)]
        reply = await self._run("last_seen", keys, args)
        return {
            sid: float(seen)
            for (sid, _, _), seen in zip(sessions, reply, strict=True)
            if seen is not None
        }
