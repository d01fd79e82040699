"""API keys' lifecycle: creating, checking (the guard), listing, revoking, leak reports.

SQL holds every key (its digest, never the key) and is the truth; Redis
holds each key's hot state and decides on every request in one script
(``store/api_keys.py``): revoked, expired, its user disabled, over its rate
limit. A key's state is built from SQL on first use and rebuilt after a
loss; revoking writes SQL first, then marks Redis, so a rebuild never
revives a revoked key. Key checks never answer from the near cache
(``TOKENGATE_NEAR_CACHE``): each one waits for Redis, so a revocation is
refused everywhere on the very next request without any announcement.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..background import Background, retry
from ..db.models import ApiKey
from ..db.repository import utc
from ..errors import (
    AuthUnavailable,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    NotFound,
    RateLimited,
    TokenExpired,
    TokenRevoked,
    describe,
)
from ..identity import Identity
from ..logs import security_event
from ..settings import Settings
from ..store.api_keys import UNKNOWN_TTL, RedisApiKeyStore
from ..store.results import KeyEnded, KeyLive, KeyMiss, KeyUnknown, Limited, RateCount
from ..users import UserStore
from . import apikeys
from .secret import api_key_secret

log = logging.getLogger("tokengate")

# Redis keeps a key's state this long past its expiry (a late request meets "expired").
STATE_SLACK = 60
# A check that keeps meeting a state moved under it (marks racing rebuilds) gives up.
MAX_REBUILDS = 3
MAX_LEAKED = 100
# Leak reports waiting for their background task, at most (a database outage
# holds them; past this many, a report is refused with 503, nothing queued).
LEAKED_BACKLOG = 256
DIGEST_CACHE_SIZE = 10_000
NAME_MAX = 100


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A key just made: the only time the key itself is known."""

    id: str
    key: str = field(repr=False)
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "key": self.key, "name": self.name, "scopes": list(self.scopes),
            "created_at": _iso(self.created_at), "expires_at": _iso(self.expires_at),
        }  # fmt: skip


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def key_info(row: ApiKey) -> dict[str, Any]:
    """One key as ``GET /auth/api-keys`` lists it (never the key, nor its digest)."""
    return {
        "id": row.id, "name": row.name, "scopes": row.scopes.split(),
        "created_at": _iso(row.created_at), "expires_at": _iso(row.expires_at),
        "last_used_at": _iso(row.last_used_at), "last_used_ip": row.last_used_ip,
        "revoked_at": _iso(row.revoked_at), "revoked_why": row.revoked_why,
    }  # fmt: skip


def _tag(digest: str) -> str:
    return digest[: apikeys.TAG_CHARS]


class ApiKeyManager:
    """API keys over one Redis store and one database."""

    def __init__(
        self,
        settings: Settings,
        store: RedisApiKeyStore,
        db: async_sessionmaker[AsyncSession],
        users: UserStore,
        background: Background,
        clock: Callable[[], float] = time.time,
        secret: bytes | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.db = db
        self.users = users
        self.background = background
        self.clock = clock
        limit = settings.rate_limit
        self.rate = RateCount("k", *limit) if limit is not None else None
        # The digest secret, when start-up read it already.
        self._secret = secret
        self._secret_lock = asyncio.Lock()
        # Digests of keys that passed the checksum, by key text (as the claims
        # cache keeps verified tokens): the hot path skips the parse and the HMAC.
        self._digests: dict[str, str] = {}
        self.leaked_backlog = LEAKED_BACKLOG
        self._leaked_pending = 0

    async def secret(self) -> bytes:
        """The digest secret, read (or made) once, on first use."""
        if self._secret is None:
            async with self._secret_lock:
                if self._secret is None:
                    self._secret = await api_key_secret(self.settings, self.db)
        return self._secret

    async def _digest(self, key: str) -> str:
        secret = self._secret if self._secret is not None else await self.secret()
        return apikeys.digest(secret, key)

    # -- the guard ------------------------------------------------------------
    async def authenticate(self, key: str, address: Callable[[], str | None]) -> Identity:
        """Check an API key: its checksum, then one round trip (two on a rebuild).

        ``address`` gives the client's address, asked only when last use is written.
        """
        digest = self._digests.get(key)
        if digest is None:
            apikeys.parse(key)  # a typo is refused before any lookup
            digest = await self._digest(key)
            if len(self._digests) >= DIGEST_CACHE_SIZE:
                del self._digests[next(iter(self._digests))]  # the oldest
            self._digests[key] = digest
        tag, now = _tag(digest), self.clock()
        for _ in range(MAX_REBUILDS + 1):
            result = await self.store.check(tag, now=now, rate=self.rate)
            if isinstance(result, KeyLive):
                if result.sync_due:
                    self.background.spawn(self._touch(result.key_id, now, address()))
                uid, scope = result.user_id, result.scopes
                claims = {"sub": uid, "name": result.username, "api_key_id": result.key_id}
                if scope:
                    claims["scope"] = scope
                return Identity(int(uid), result.username, "", claims, api_key_id=result.key_id)
            if isinstance(result, KeyMiss):
                await self._rebuild(digest, result.version, now)
                continue
            if isinstance(result, Limited):
                assert self.rate is not None
                raise RateLimited(result.retry_after, self.rate.limit, self.rate.window)
            if isinstance(result, KeyUnknown):
                raise InvalidToken("No such API key on this server.")
            if isinstance(result, KeyEnded) and result.why == "expired":
                raise TokenExpired("The API key has expired.", claims={})
            raise TokenRevoked("The API key was revoked, or its user disabled.")
        raise AuthUnavailable()  # marks kept racing the rebuild: try again

    async def _rebuild(self, digest: str, version: str, now: float) -> None:
        """Put a key's state back from SQL (or remember that SQL has no such key)."""
        async with self.db() as db:
            row = (await db.execute(select(ApiKey).where(ApiKey.digest == digest))).scalar()
        if row is None:
            await self.store.load(
                _tag(digest), version, {"st": "none"}, expire_at=int(now) + UNKNOWN_TTL
            )
            return
        user = await self.users.get_by_id(row.user_id)
        state, why = "live", ""
        if row.revoked_at is not None:
            state, why = "revoked", row.revoked_why or "revoked"
        elif user is None or user.disabled:
            state, why = "disabled", "disabled"
        # A key never carries a scope its user has lost: narrowed here, and
        # rebuilt whenever the user's scopes change (``user_changed``).
        owned = user.scopes if user is not None else frozenset()
        scopes = " ".join(s for s in row.scopes.split() if s in owned)
        last = row.last_used_at.timestamp() if row.last_used_at is not None else 0.0
        fields = {
            "st": state, "why": why, "ex": repr(row.expires_at.timestamp()), "lu": repr(last),
            "uid": row.user_id, "nm": user.username if user is not None else "", "id": row.id,
            "sc": scopes,
        }  # fmt: skip
        await self.store.load(_tag(digest), version, fields, expire_at=self._state_expiry(row, now))

    @staticmethod
    def _state_expiry(row: ApiKey, now: float) -> int:
        return int(max(row.expires_at.timestamp(), now)) + STATE_SLACK

    async def _touch(self, key_id: str, now: float, address: str | None) -> None:
        """Write a key's last use back to SQL (at most once a minute per key, off the request)."""
        try:
            async with self.db() as db:
                row = await db.get(ApiKey, key_id)
                if row is not None:
                    row.last_used_at, row.last_used_ip = utc(now), address
                    await db.commit()
        except Exception as exc:  # a lagging last use is harmless
            log.warning("could not write an API key's last use to SQL: %s", describe(exc))

    # -- managing keys ---------------------------------------------------------
    async def create(
        self, user_id: int, name: str, scopes: Iterable[str] = (), expires_in: int | None = None
    ) -> CreatedKey:
        """Make a key for ``user_id``: scopes among the user's, a bounded lifetime.

        Only SQL is written: the key's Redis state is built on its first use,
        so a key made while Redis is failing exists everywhere afterwards.
        """
        name = name.strip()
        if not name or len(name) > NAME_MAX or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise InvalidRequest(f"name: 1 to {NAME_MAX} characters, no control characters.")
        ttl = self.settings.api_key_ttl if expires_in is None else expires_in
        if not 1 <= ttl <= self.settings.api_key_max_ttl:
            raise InvalidRequest(
                f"expires_in: between 1 and {self.settings.api_key_max_ttl} seconds."
            )
        wanted = tuple(dict.fromkeys(scopes))
        user = await self.users.get_by_id(user_id)
        if user is None or user.disabled:
            raise TokenRevoked()
        missing = set(wanted) - user.scopes
        if missing:
            raise InsufficientScope(missing, "A key can carry only scopes the user has.")
        key, now = apikeys.new_key(), self.clock()
        row = ApiKey(
            id=apikeys.new_key_id(), user_id=user_id, name=name,
            digest=await self._digest(key), scopes=" ".join(wanted),
            created_at=utc(now), expires_at=utc(math.floor(now + ttl)),  # a whole second
        )  # fmt: skip
        async with self.db() as db:
            db.add(row)
            await db.commit()
        security_event("api_key_created", user_id=str(user_id), api_key_id=row.id)
        return CreatedKey(row.id, key, name, wanted, row.created_at, row.expires_at)

    async def list(self, user_id: int) -> list[ApiKey]:
        """Every key of ``user_id``, newest first, revoked and expired ones too."""
        query = select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc())
        async with self.db() as db:
            return list((await db.execute(query)).scalars())

    async def get(self, key_id: str) -> ApiKey | None:
        """One key by id (any user's), or ``None``."""
        if not apikeys.KEY_ID.match(key_id):
            return None
        async with self.db() as db:
            return await db.get(ApiKey, key_id)

    async def revoke(self, key_id: str, *, owner: int | None, why: str = "revoked") -> bool:
        """Revoke a key (``owner``: only if it is theirs, else ``not_found``); whether it was live.

        SQL first, then Redis; if Redis fails, SQL takes the revocation back
        and the caller gets a 503 with the key as it was.
        """
        row = await self.get(key_id)
        if row is None or (owner is not None and row.user_id != owner):
            raise NotFound("No such API key.")
        if row.revoked_at is not None:
            return False
        now = self.clock()
        async with self.db() as db:
            stored = await db.get(ApiKey, key_id)
            assert stored is not None
            if stored.revoked_at is not None:
                return False
            stored.revoked_at, stored.revoked_why = utc(now), why
            await db.commit()
        try:
            await self.store.mark(
                _tag(row.digest), revoked=True, why=why, expire_at=self._state_expiry(row, now)
            )
        except BaseException:
            await self._unrevoke(key_id)
            raise
        security_event(
            "api_key_revoked", level=logging.WARNING if why == "leaked" else logging.INFO,
            reason=why, user_id=str(row.user_id), api_key_id=key_id,
        )  # fmt: skip
        return True

    async def revoke_key(self, key: str) -> bool:
        """Revoke the key itself (RFC 7009 at ``/auth/revoke``: holding it is proof enough)."""
        try:
            apikeys.parse(key)
        except InvalidToken:
            return False
        digest = await self._digest(key)
        async with self.db() as db:
            query = select(ApiKey.id).where(ApiKey.digest == digest)
            key_id = (await db.execute(query)).scalar()
        return key_id is not None and await self.revoke(key_id, owner=None)

    async def _unrevoke(self, key_id: str) -> None:
        try:
            async with self.db() as db:
                stored = await db.get(ApiKey, key_id)
                if stored is not None:
                    stored.revoked_at = stored.revoked_why = None
                    await db.commit()
        except Exception as exc:
            log.warning("could not take back a revocation Redis missed: %s", describe(exc))

    def report_leaked(self, keys: Sequence[Any]) -> int:
        """Take up to 100 raw keys a scanner found; revoke each real one, off the request.

        Returns how many were well-formed keys (format and checksum, which
        anyone can check), never how many were real: the answer, and its
        time, are the same whether or not any key was valid. At most
        ``leaked_backlog`` reports wait at once (a database outage holds
        them); past that the report is ``503`` and nothing is queued.
        """
        if not isinstance(keys, list) or len(keys) > MAX_LEAKED:
            raise InvalidRequest(f"keys: a list of at most {MAX_LEAKED} keys.")
        found: list[str] = []
        for key in keys:
            if not isinstance(key, str):
                raise InvalidRequest("keys: each key is a string.")
            try:
                found.append(apikeys.parse(key.strip()))
            except InvalidToken:
                continue
        found = list(dict.fromkeys(found))
        if found:
            if self._leaked_pending >= self.leaked_backlog:
                raise AuthUnavailable("Too many leak reports are waiting; try again shortly.")
            self._leaked_pending += 1
            self.background.spawn(self._leaked_in_background(found))
        return len(found)

    async def _leaked_in_background(self, keys: Sequence[str]) -> None:
        try:
            await retry(lambda: self._revoke_leaked(keys))
        finally:
            self._leaked_pending -= 1

    async def _revoke_leaked(self, keys: Sequence[str]) -> None:
        digests = [await self._digest(key) for key in keys]
        async with self.db() as db:
            query = select(ApiKey.id).where(ApiKey.digest.in_(digests))
            ids = list((await db.execute(query)).scalars())
        for key_id in ids:
            await self.revoke(key_id, owner=None, why="leaked")

    async def user_changed(self, user_id: int) -> None:
        """The user was disabled or enabled, or their scopes changed: rebuild their keys' state."""
        now = self.clock()
        live = [row for row in await self.list(user_id) if row.revoked_at is None]
        for row in live:
            await self.store.mark(
                _tag(row.digest), revoked=False, why="", expire_at=self._state_expiry(row, now)
            )
