"""The session manager's shared core: its state, minting, and running a script with rebuilds.

Every decision about a live session (alive? idle? too old? which pair now?)
is made by a script in Redis (``store/``); :meth:`SessionCore._decide` runs
one, rebuilds from SQL a session Redis lost, and turns an ended session
into its error. Opening, checking, rotating and closing build on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import tokens
from ..background import Background
from ..db import repository as repo
from ..db.models import AuthSession
from ..ending import SessionEnds
from ..errors import (
    RefreshReused,
    SessionExpired,
    SessionReplaced,
    TokenRevoked,
    Unauthorized,
)
from ..keys import KeyRing
from ..logs import security_event
from ..settings import Settings
from ..store.near import NearChecks
from ..store.redis_store import RedisSessionStore
from ..store.results import Ended, EndReason, Miss, SessionRecord
from ..tokens import Grant, TokenPair
from ..users import ClaimsHook, UserRecord, UserStore, hook_claims

log = logging.getLogger("tokengate")

R = TypeVar("R")
# What a request meets once its session ended, by the reason it ended.
END_REASON_ERRORS: dict[EndReason, type[Unauthorized]] = {
    EndReason.REVOKED: TokenRevoked,
    EndReason.EXPIRED: SessionExpired,
    EndReason.REPLACED: SessionReplaced,
    EndReason.REUSED: TokenRevoked,
}


def session_record(row: AuthSession, username: str) -> SessionRecord:
    """What Redis holds of a session, as its SQL row has it (to rebuild what Redis lost)."""
    return SessionRecord(
        username=username,
        created=row.created_at.timestamp(),
        last_seen=row.last_seen_at.timestamp(),
        access_jti=row.access_jti,
        refresh_jti=row.refresh_jti,
        previous_refresh_jti=row.previous_refresh_jti or "",
        iat=row.iat,
        ended=EndReason.parse(row.end_reason) if row.ended_at else None,
    )


class SessionCore:
    """What every session operation shares: the store, the database, the keys, the clock."""

    def __init__(
        self,
        settings: Settings,
        keyring: KeyRing,
        store: RedisSessionStore,
        db: async_sessionmaker[AsyncSession],
        users: UserStore,
        clock: Callable[[], float] = time.time,
        claims_hook: ClaimsHook | None = None,
    ) -> None:
        self.settings = settings
        self.keyring = keyring
        self.users = users
        self.claims_hook = claims_hook
        self.store = store
        self.db = db
        self.clock = clock
        self.background = Background()
        self.ends = SessionEnds(db, store, self.background, clock)
        # Access tokens whose signature and claims were verified, by their exact
        # text (failures never); exp and nbf are checked on every request.
        self._verified: dict[str, dict[str, Any]] = {}
        # TOKENGATE_NEAR_CACHE: sessions let through without waiting for Redis.
        self.near: NearChecks | None = None

    # -- tokens -----------------------------------------------------------
    @property
    def signing(self) -> tokens.SigningConfig:
        """The keys, issuer and audience in force now (keys rotate while running)."""
        return self.keyring.signing

    def _pair(self, grant: Grant, claims: Mapping[str, Any], now: float) -> TokenPair:
        s = self.settings
        return tokens.mint_pair(
            self.signing, grant, claims, access_ttl=s.access_ttl, refresh_ttl=s.refresh_ttl,
            now=now,
        )  # fmt: skip

    def _access(
        self, user_id: str, username: str, sid: str, jti: str, iat: int, claims: Mapping[str, Any]
    ) -> str:
        return tokens.mint_access(
            self.signing, user_id=user_id, username=username, session_id=sid, jti=jti, iat=iat,
            ttl=self.settings.access_ttl, claims=claims,
        )  # fmt: skip

    async def access_claims(self, user: UserRecord, auth_time: int) -> dict[str, Any]:
        """An access token's claims about ``user``: the application's, ``auth_time``, ``scope``."""
        own = await hook_claims(self.claims_hook, user)
        return {**own, **tokens.login_claims(auth_time, user.scopes)}

    async def _rebuild(self, user_id: str, sid: str, now: float) -> None:
        """Put a session that Redis lost back from SQL."""
        async with self.db() as db:
            row = await repo.get_session(db, sid)
        if row is None or str(row.user_id) != user_id:
            raise TokenRevoked()
        # The user may live in the application's own store: no join.
        user = await self.users.get_by_id(row.user_id)
        if user is None:
            raise TokenRevoked()
        await self.store.load(user_id, sid, session_record(row, user.username), now=now)

    async def _decide(
        self,
        uid: str,
        sid: str,
        now: float,
        script: Callable[[], Awaitable[R | Ended | Miss]],
        result: R | Ended | Miss | None = None,
    ) -> R:
        """Run a session script: rebuild a session Redis lost and run it again.

        ``result`` is the script's first answer when the caller has it already.
        A session that is over raises its error; one that this very call
        ended (idle, too old, refresh reuse) is recorded in SQL first.
        """
        if result is None:
            result = await script()
        if isinstance(result, Miss):
            await self._rebuild(uid, sid, now)
            result = await script()
        if isinstance(result, Ended):
            if result.just_now:
                await self.ends.record([sid], result.reason, now)
                if result.reason is not EndReason.REUSED:  # flows logs reuse, with the user
                    security_event(
                        "session_ended", reason=str(result.reason), user_id=uid, session_id=sid
                    )
                if result.reason is EndReason.REUSED:
                    log.warning("refresh token reuse: session %s ended", sid)
                    raise RefreshReused()
            raise END_REASON_ERRORS.get(result.reason, TokenRevoked)()
        if isinstance(result, Miss):
            raise TokenRevoked()
        return result
