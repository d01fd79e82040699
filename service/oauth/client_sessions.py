"""The session behind a client's tokens: one per credential generation, opened once, reused.

Every access token fetched with one generation (a secret, or the registered
keys) names the same session in its ``sid``, so that ending that session
refuses all of them in the guard's one round trip, with nothing new on the
hot path. The first fetch opens it (an SQL row and the Redis state, as a
login does, through the session store); later fetches check it in Redis (one
round trip, which also slides its idle time) and reuse it, so a busy client
writes no SQL row per fetch. A session that idled out, aged out or was ended
is simply replaced by a new one on the next fetch.

A generation being retired (``clients rotate-secret --keep-old``) gets a
session whose absolute age runs out at the retire time: the guard's existing
rule (``session_lib.lua``, ``expired``) ends it then, on every instance.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import update

from .. import tokens
from ..db import repository as repo
from ..db.models import AuthSession, OAuthClientCredential
from ..db.repository import utc
from ..errors import AuthUnavailable, InvalidClient, describe
from ..identity import ClientInfo
from ..sessions import SessionManager
from ..sessions.core import session_record
from ..store.near import new_note
from ..store.results import Ended, EndReason, Live, Miss, SessionRecord
from .clients import ClientRegistry, Credential, RegisteredClient

log = logging.getLogger("tokengate")


@dataclass(frozen=True, slots=True)
class ClientSession:
    """The session a fetch's token names, and when that session's absolute age runs out."""

    session_id: str
    ends_at: float


class ClientSessions:
    """Open or reuse the session of a client's credential generation."""

    def __init__(self, manager: SessionManager, registry: ClientRegistry) -> None:
        self.manager = manager
        self.registry = registry
        # One opening at a time per generation in this process (the lock, and how
        # many fetches hold or wait for it); across processes, at most one each (a
        # spare session is harmless: it ends with the generation, as every session
        # of the client does).
        self._opening: dict[int, tuple[asyncio.Lock, list[int]]] = {}

    @property
    def max_age(self) -> int:
        return self.manager.settings.session_max_age

    async def session_for(
        self, client: RegisteredClient, credential: Credential, info: ClientInfo
    ) -> ClientSession:
        """The live session for a fetch with ``credential``: reused, or opened now."""
        uid = str(client.user_id)
        if credential.session_id is not None:
            live = await self._alive(uid, credential.session_id)
            if live is not None:
                return live
        lock, users = self._opening.setdefault(credential.id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                current = await self._current(credential.id)
                if current is not None and current != credential.session_id:
                    live = await self._alive(uid, current)  # another fetch opened it meanwhile
                    if live is not None:
                        return live
                return await self._open(client, credential, info)
        finally:
            users[0] -= 1
            if not users[0]:
                del self._opening[credential.id]

    async def _current(self, credential_id: int) -> str | None:
        async with self.manager.db() as db:
            row = await db.get(OAuthClientCredential, credential_id)
        return row.session_id if row is not None else None

    async def _alive(self, uid: str, sid: str, rebuilt: bool = False) -> ClientSession | None:
        """The session if it is alive (its last-seen slides, as on a request), else ``None``."""
        m = self.manager
        now = m.clock()
        result = await m.store.check(uid, sid, now=now)
        if isinstance(result, Live):
            if result.sync_due:
                m.background.spawn(self._touch(sid, now))
            created = result.created or now
            return ClientSession(sid, created + self.max_age)
        if isinstance(result, Ended):
            if result.just_now:  # idle or too old, found by this check: SQL hears it too
                await m.ends.record([sid], result.reason, now)
            return None
        if isinstance(result, Miss) and not rebuilt and await self._rebuild(uid, sid, now):
            return await self._alive(uid, sid, rebuilt=True)
        return None

    async def _rebuild(self, uid: str, sid: str, now: float) -> bool:
        """Put back a session Redis lost, from SQL; whether there was one to put back."""
        async with self.manager.db() as db:
            row = await repo.get_session(db, sid)
        if row is None or str(row.user_id) != uid or row.ended_at is not None:
            return False
        record = session_record(row, await self._username(row.user_id))
        await self.manager.store.load(uid, sid, record, now=now)
        return True

    async def _username(self, user_id: int) -> str:
        user = await self.manager.users.get_by_id(user_id)
        return user.username if user is not None else ""

    async def _touch(self, sid: str, now: float) -> None:
        try:
            async with self.manager.db() as db:
                await repo.touch_session(db, sid, utc(now))
                await db.commit()
        except Exception as exc:  # a lagging last-seen is harmless; log and go on
            log.warning("could not write last-seen back to SQL: %s", describe(exc))

    async def _open(
        self, client: RegisteredClient, credential: Credential, info: ClientInfo
    ) -> ClientSession:
        """Open the generation's session: SQL first (the row, and the generation naming
        it), then Redis, as a login opens one; then read the client again."""
        m = self.manager
        now = m.clock()
        iat = int(now)
        # A retiring generation's session is over at the retire time, by its age.
        created = now
        if credential.retire_at is not None:
            created = min(now, credential.retire_at - self.max_age)
        sid, aj, rj = tokens.new_session_id(), tokens.new_jti(), tokens.new_jti()
        uid = str(client.user_id)
        row = AuthSession(
            id=sid, user_id=client.user_id, created_at=utc(created), last_seen_at=utc(now),
            device=f"client {client.name}"[:200], ip=info.ip, user_agent=info.user_agent,
            access_jti=aj, refresh_jti=rj, iat=iat,
        )  # fmt: skip
        async with m.db() as db:
            db.add(row)
            await db.execute(
                update(OAuthClientCredential)
                .where(OAuthClientCredential.id == credential.id)
                .values(session_id=sid)
            )
            await db.commit()
        record = SessionRecord(client.client_id, created, now, aj, rj, "", iat)
        try:
            opened = await m.store.login(uid, sid, record, now=now, limit=0, note=new_note())
            if isinstance(opened, Miss):
                await m.load_index(client.user_id, now)
                opened = await m.store.login(uid, sid, record, now=now, limit=0, note=new_note())
        except BaseException:
            await m.ends.record([sid], EndReason.REVOKED, now)
            raise
        if isinstance(opened, Miss):  # the set vanished again at once: Redis is failing
            await m.ends.record([sid], EndReason.REVOKED, now)
            raise AuthUnavailable()
        if opened.expired:
            await m.ends.record(opened.expired, EndReason.EXPIRED, now)
        # A disable or a rotation that ran while this opened: either it ended this
        # session (it was in Redis before the disable read the sessions), or the
        # client read now shows it. Then this session goes, and so does the fetch.
        fresh = await self.registry.find(client.client_id)
        same = (
            None
            if fresh is None
            else next((c for c in fresh.credentials if c.id == credential.id), None)
        )
        if (
            fresh is None
            or fresh.disabled
            or same is None
            or same.retire_at != credential.retire_at
        ):
            await m.ends.end([sid], client.user_id, EndReason.REVOKED, now)
            raise InvalidClient("The client was disabled or its secret retired.")
        return ClientSession(sid, created + self.max_age)
