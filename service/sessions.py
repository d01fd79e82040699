"""Session lifecycle: opening a session, the guard's check, refresh rotation, ending, limits.

SQL holds the durable truth about every session; Redis holds its hot state
and makes every decision atomically (``store/redis_store.py``). Writes that
end a session go to SQL first and Redis second, so a Redis that loses its
data can always be rebuilt from SQL without reviving anything.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import tokens
from .db import repository as repo
from .db.models import AuthSession, User
from .db.repository import utc
from .errors import (
    END_REASON_ERRORS,
    InvalidCredentials,
    NotFound,
    RefreshReused,
    TokenExpired,
    TokenRevoked,
    Unauthorized,
    describe,
)
from .settings import Settings
from .store.redis_store import EXPIRY_SLACK, Outcome, RedisSessionStore
from .tokens import Grant, TokenPair

log = logging.getLogger("tokengate")

# Last-seen is written back to SQL at most this often per session, off the
# request path; it bounds how stale a session rebuilt from SQL can be.
MAX_SYNC_INTERVAL = 60
# Access tokens whose signature and claims were verified, by their exact text:
# the same token checked again costs a dict lookup plus the time checks.
VERIFIED_CACHE_SIZE = 10_000
# How long shutdown waits for background write-backs and retries.
DRAIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made the request: what ``current_identity()`` returns."""

    user_id: int
    username: str
    session_id: str
    claims: dict[str, Any] = field(repr=False)
    # Set when the guard accepted an expired token through implicit refresh.
    new_access_token: str | None = field(default=None, repr=False)
    new_access_expires_in: int = 0


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    device: str | None
    ip: str | None
    user_agent: str | None
    created_at: datetime
    last_seen_at: datetime
    current: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device": self.device,
            "ip": self.ip,
            "user_agent": self.user_agent,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "last_seen_at": self.last_seen_at.isoformat().replace("+00:00", "Z"),
            "current": self.current,
        }


@dataclass(frozen=True, slots=True)
class ClientInfo:
    device: str | None = None
    ip: str | None = None
    user_agent: str | None = None


class SessionManager:
    """Every session rule, over one Redis store and one database."""

    def __init__(
        self,
        settings: Settings,
        signing: tokens.SigningConfig,
        store: RedisSessionStore,
        db: async_sessionmaker[AsyncSession],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.signing = signing
        self.store = store
        self.db = db
        self.clock = clock
        idle = settings.idle_timeout
        self.sync_interval = max(
            1, min(MAX_SYNC_INTERVAL, idle // 4 if idle else MAX_SYNC_INTERVAL)
        )
        self._background: set[asyncio.Task[None]] = set()
        self._verified: dict[str, dict[str, Any]] = {}

    # -- tokens -----------------------------------------------------------
    def _pair(self, grant: Grant, now: float) -> TokenPair:
        s = self.settings
        return tokens.mint_pair(
            self.signing, grant, access_ttl=s.access_ttl, refresh_ttl=s.refresh_ttl, now=now
        )

    def _access(self, user_id: str, username: str, sid: str, jti: str, iat: int) -> str:
        return tokens.mint_access(
            self.signing, user_id=user_id, username=username, session_id=sid, jti=jti, iat=iat,
            ttl=self.settings.access_ttl,
        )  # fmt: skip

    # -- login ------------------------------------------------------------
    async def start_session(self, user: User, client: ClientInfo) -> TokenPair:
        """Open a new session for ``user`` and return its first token pair."""
        s = self.settings
        now = self.clock()
        ia = int(now)
        sid, aj, rj = secrets.token_urlsafe(16), tokens.new_jti(), tokens.new_jti()
        uid = str(user.id)
        row = AuthSession(
            id=sid, user_id=user.id, created_at=utc(now), last_seen_at=utc(now),
            device=client.device, ip=client.ip, user_agent=client.user_agent,
            access_jti=aj, refresh_jti=rj, issued_at=ia,
        )  # fmt: skip
        async with self.db() as db:
            db.add(row)
            await db.commit()
        fields = {
            "st": "live", "cr": repr(now), "ls": repr(now), "sy": repr(now),
            "aj": aj, "rj": rj, "pj": "", "ia": ia, "nm": user.username,
        }  # fmt: skip
        expire_at = int(now) + s.session_max_age + EXPIRY_SLACK
        try:
            result = await self.store.login(
                uid, sid, fields, now=now, idle=s.idle_timeout, max_age=s.session_max_age,
                limit=s.max_sessions, expire_at=expire_at,
            )  # fmt: skip
            if isinstance(result, Outcome):
                await self._load_index(user.id, now)
                result = await self.store.login(
                    uid, sid, fields, now=now, idle=s.idle_timeout, max_age=s.session_max_age,
                    limit=s.max_sessions, expire_at=expire_at,
                )  # fmt: skip
        except BaseException:
            async with self.db() as db:
                await repo.end_sessions(db, [sid], "revoked", utc(now))
                await db.commit()
            raise
        assert not isinstance(result, Outcome)
        replaced, expired = result
        if replaced or expired:
            async with self.db() as db:
                await repo.end_sessions(db, replaced, "replaced", utc(now))
                await repo.end_sessions(db, expired, "expired", utc(now))
                await db.commit()
        if sid in replaced:
            # Twenty logins at once with a limit of one: this one lost the race.
            raise END_REASON_ERRORS["replaced"]()
        async with self.db() as db:
            current = await repo.get_user(db, user.id)
        if current is None or current.password_hash != user.password_hash or current.disabled:
            # The password changed (or the user was disabled) while this login
            # was being checked, and the change may have ended the user's
            # sessions before this one existed.
            await self._end([sid], user.id, "revoked", now)
            raise InvalidCredentials()
        return self._pair(Grant(uid, user.username, sid, aj, rj, ia), now)

    async def _load_index(self, user_id: int, now: float) -> None:
        async with self.db() as db:
            live = await repo.live_sessions(db, user_id)
        await self.store.load_index(
            str(user_id),
            [(row.id, row.created_at.timestamp()) for row in live],
            int(now) + self.settings.session_max_age + EXPIRY_SLACK,
        )

    async def _rebuild(self, user_id: str, sid: str, now: float) -> None:
        """Put a session that Redis lost back from SQL."""
        async with self.db() as db:
            found = (
                await db.execute(
                    select(AuthSession, User.username)
                    .join(User, User.id == AuthSession.user_id)
                    .where(AuthSession.id == sid)
                )
            ).one_or_none()
        if found is None or str(found[0].user_id) != user_id:
            raise TokenRevoked()
        row, username = found
        created = row.created_at.timestamp()
        fields = {
            "st": "ended" if row.ended_at else "live",
            "why": row.end_reason or "",
            "cr": repr(created),
            "ls": repr(row.last_seen_at.timestamp()),
            "sy": repr(now),
            "aj": row.access_jti,
            "rj": row.refresh_jti,
            "pj": row.previous_refresh_jti or "",
            "ia": row.issued_at,
            "nm": username,
        }
        expire_at = int(max(created + self.settings.session_max_age, now)) + EXPIRY_SLACK
        await self.store.load(user_id, sid, fields, expire_at)

    async def _record_end(self, sids: Sequence[str], reason: str, now: float) -> None:
        """Record in SQL that ``sids`` ended (the first reason recorded stays)."""
        async with self.db() as db:
            await repo.end_sessions(db, sids, reason, utc(now))
            await db.commit()

    def _ended(self, outcome: Outcome) -> Unauthorized:
        why = outcome.values[0] if outcome.values else "revoked"
        return END_REASON_ERRORS.get(why, TokenRevoked)()

    # -- the guard --------------------------------------------------------
    def _verify_access(self, token: str, now: float) -> dict[str, Any]:
        """The claims of an access token, verified once per token text.

        A token is cached only once it passed every check; a failure is never
        cached. ``exp`` and ``nbf`` are checked against ``now`` on every call.
        """
        claims = self._verified.get(token)
        if claims is None:
            claims = tokens.verify(self.signing, tokens.AccessToken.kind, token, now=now)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = claims
        else:
            tokens.check_times(self.signing, claims, now=now)
        return claims

    async def authenticate(self, access_token: str) -> Identity:
        """Check an access token and its session: one JWT check, one round trip."""
        s = self.settings
        now = self.clock()
        try:
            claims = self._verify_access(access_token, now)
        except TokenExpired as exc:
            if not s.implicit_refresh:
                raise
            return await self._implicit_refresh(exc, now)
        uid, sid = claims["sub"], claims["sid"]
        check = functools.partial(
            self.store.check, uid, sid, now=now, idle=s.idle_timeout,
            max_age=s.session_max_age, sync=self.sync_interval,
        )  # fmt: skip
        outcome = await self._decide(uid, sid, now, check)
        await self._settle(outcome, sid, now)
        if outcome.values:
            self._spawn(self._touch(sid, now))
        # A copy: the cached claims stay as verified whatever a view does.
        return Identity(int(uid), claims["name"], sid, dict(claims))

    async def _decide(
        self, uid: str, sid: str, now: float, script: Callable[[], Awaitable[Outcome]]
    ) -> Outcome:
        """Run a session script; on a miss, rebuild the session from SQL and run it again."""
        outcome = await script()
        if outcome.status == "miss":
            await self._rebuild(uid, sid, now)
            outcome = await script()
        return outcome

    async def _settle(self, outcome: Outcome, sid: str, now: float) -> None:
        if outcome.status == "ended":
            if len(outcome.values) > 1:  # Redis just decided it; SQL must hear of it
                await self._record_end([sid], outcome.values[0], now)
            raise self._ended(outcome)
        if outcome.status == "miss":
            raise TokenRevoked()

    async def _implicit_refresh(self, expired: TokenExpired, now: float) -> Identity:
        s = self.settings
        claims = expired.claims
        uid, sid = claims["sub"], claims["sid"]
        args: dict[str, Any] = {
            "now": now, "idle": s.idle_timeout, "max_age": s.session_max_age,
            "expired_jti": claims["jti"], "new_jti": tokens.new_jti(),
        }  # fmt: skip
        implicit = functools.partial(self.store.implicit_refresh, uid, sid, **args)
        outcome = await self._decide(uid, sid, now, implicit)
        await self._settle(outcome, sid, now)
        aj, ia, name = outcome.values[0], int(outcome.values[1]), outcome.values[2]
        token = self._access(uid, name, sid, aj, ia)
        fresh = dict(claims, jti=aj, iat=ia, nbf=ia, exp=ia + s.access_ttl)
        return Identity(
            int(uid), name, sid, fresh, new_access_token=token,
            new_access_expires_in=tokens.seconds_left(ia, s.access_ttl, now),
        )  # fmt: skip

    async def reissue_if_near_expiry(self, identity: Identity) -> tuple[str, int] | None:
        """A fresh access token for a cookie nearing expiry, else ``None``.

        Concurrent requests carrying the same token get the same new one: the
        mint is keyed on the old token's ``jti`` in Redis.
        """
        s = self.settings
        now = self.clock()
        if identity.claims["exp"] - now > max(1, min(60, s.access_ttl // 2)):
            return None
        outcome = await self.store.implicit_refresh(
            str(identity.user_id), identity.session_id, now=now, idle=s.idle_timeout,
            max_age=s.session_max_age, expired_jti=identity.claims["jti"], new_jti=tokens.new_jti(),
        )  # fmt: skip
        if outcome.status != "ok":
            return None
        aj, ia, name = outcome.values[0], int(outcome.values[1]), outcome.values[2]
        token = self._access(str(identity.user_id), name, identity.session_id, aj, ia)
        return token, tokens.seconds_left(ia, s.access_ttl, now)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _touch(self, sid: str, now: float) -> None:
        try:
            async with self.db() as db:
                await repo.touch_session(db, sid, utc(now))
                await db.commit()
        except Exception as exc:  # a lagging last-seen is harmless; log and go on
            log.warning("could not write last-seen back to SQL: %s", describe(exc))

    async def drain(self) -> None:
        """Let background work finish at shutdown, for a few seconds at most."""
        if not self._background:
            return
        _, pending = await asyncio.wait(set(self._background), timeout=DRAIN_SECONDS)
        for task in pending:
            log.warning("shutting down with background work unfinished")
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- refresh ----------------------------------------------------------
    async def refresh(self, refresh_token: str) -> TokenPair:
        """Trade a refresh token for a new pair; reuse past the grace window ends the session."""
        s = self.settings
        now = self.clock()
        claims = tokens.verify(self.signing, tokens.RefreshToken.kind, refresh_token, now=now)
        uid, sid = claims["sub"], claims["sid"]
        args: dict[str, Any] = {
            "now": now, "idle": s.idle_timeout, "max_age": s.session_max_age,
            "grace": s.refresh_grace, "presented_jti": claims["jti"],
            "new_access_jti": tokens.new_jti(), "new_refresh_jti": tokens.new_jti(),
        }  # fmt: skip
        outcome = await self._decide(
            uid, sid, now, functools.partial(self.store.refresh, uid, sid, **args)
        )
        if outcome.status == "ended" and outcome.values[0] == "reused" and len(outcome.values) > 1:
            await self._record_end([sid], "reused", now)
            log.warning("refresh token reuse: session %s ended", sid)
            raise RefreshReused()
        await self._settle(outcome, sid, now)
        aj, rj, ia, name, previous = outcome.values[:5]
        # Recorded on the grace path too: if the first answer's SQL write
        # failed, the client's retry lands here and SQL must still catch up.
        # The write applies only while SQL is one step behind, so concurrent
        # or late writes never move it backwards.
        async with self.db() as db:
            await repo.record_rotation(
                db, sid, access_jti=aj, refresh_jti=rj, previous_refresh_jti=previous,
                issued_at=int(ia), at=utc(now),
            )  # fmt: skip
            await db.commit()
        return self._pair(Grant(uid, name, sid, aj, rj, int(ia)), now)

    # -- ending sessions --------------------------------------------------
    def _end_expiry(self, now: float) -> int:
        return int(now) + self.settings.session_max_age + EXPIRY_SLACK

    async def logout(self, identity: Identity) -> None:
        await self._end([identity.session_id], identity.user_id, "revoked", self.clock())

    async def end_all(self, user_id: int, *, keep: str = "", why: str = "revoked") -> None:
        """End every session of ``user_id`` except ``keep``."""
        now = self.clock()
        async with self.db() as db:
            live = [row.id for row in await repo.live_sessions(db, user_id) if row.id != keep]
        await self._end([*live, "*"], user_id, why, now, keep=keep)

    async def _end(
        self, sids: Sequence[str], user_id: int, why: str, now: float, keep: str = ""
    ) -> None:
        """End ``sids`` in SQL, then in Redis (``'*'``: every session Redis knows)."""
        await self._record_end([sid for sid in sids if sid != "*"], why, now)
        await self.store.end(
            str(user_id), sids, why=why, expire_at=self._end_expiry(now), keep=keep
        )

    async def end_all_again(self, user_id: int, keep: str = "") -> None:
        """A second sweep after a password change, for logins that raced it.

        The first sweep ran before the new password was stored, so a failure
        there left nothing changed and the caller could retry. This one runs
        after; if Redis fails now, it keeps trying in the background rather
        than leave a raced-in session alive.
        """
        try:
            await self.end_all(user_id, keep=keep)
        except Exception as exc:
            log.warning("ending sessions after a password change failed (%s); retrying",
                        describe(exc))  # fmt: skip
            self._spawn(self._retry_end_all(user_id, keep))

    async def _retry_end_all(self, user_id: int, keep: str) -> None:
        for attempt in range(60):
            await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
            try:
                await self.end_all(user_id, keep=keep)
                return
            except Exception as exc:  # still down: keep trying for a few minutes
                log.warning("retrying the end of sessions: %s", describe(exc))

    async def end_session(self, identity: Identity, sid: str) -> None:
        """End one of the caller's own sessions; another user's is ``not_found``."""
        async with self.db() as db:
            row = await repo.get_session(db, sid) if tokens.SESSION_ID.match(sid) else None
        if row is None or row.user_id != identity.user_id:
            raise NotFound("No such session.")
        await self._end([sid], identity.user_id, "revoked", self.clock())

    async def sessions(self, identity: Identity) -> list[SessionInfo]:
        """The caller's live sessions, with last-seen times from Redis where it has them."""
        s = self.settings
        now = self.clock()
        async with self.db() as db:
            rows = list(await repo.live_sessions(db, identity.user_id))
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.hmget(self.store.session_key(str(identity.user_id), row.id), "st", "ls")
            hot = await pipe.execute()
        out: list[SessionInfo] = []
        for row, (state, last) in zip(rows, hot, strict=True):
            if state == b"ended":
                continue
            last_seen = float(last) if last else row.last_seen_at.timestamp()
            created = row.created_at.timestamp()
            if now - created >= s.session_max_age or (
                s.idle_timeout and now - last_seen >= s.idle_timeout
            ):
                continue
            out.append(
                SessionInfo(
                    id=row.id,
                    device=row.device,
                    ip=row.ip,
                    user_agent=row.user_agent,
                    created_at=row.created_at,
                    last_seen_at=utc(last_seen),
                    current=row.id == identity.session_id,
                )
            )
        return out
