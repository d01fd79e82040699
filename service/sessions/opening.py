"""Opening a session: the login's SQL row, its Redis state, the session limit, the first pair."""

from __future__ import annotations

from .. import tokens
from ..db import repository as repo
from ..db.models import AuthSession
from ..db.repository import utc
from ..errors import InvalidCredentials, TokenRevoked
from ..identity import ClientInfo
from ..logs import security_event
from ..store.near import new_note
from ..store.results import EndReason, Miss, SessionRecord
from ..tokens import Grant, TokenPair
from ..users import UserRecord
from .core import END_REASON_ERRORS, SessionCore


class Opening(SessionCore):
    """Logins: a new session, within ``TOKENGATE_MAX_SESSIONS``."""

    async def start_session(
        self, user: UserRecord, client: ClientInfo, password: str | None = None, *,
        jkt: str | None = None,
    ) -> TokenPair:  # fmt: skip
        """Open a new session for ``user`` and return its first token pair.

        ``password`` is the one just checked: if the user's password stamp moved
        meanwhile (a rehash, or a change), the login stands only if it still matches.
        ``jkt``: the thumbprint of the DPoP key the session is bound to (its
        refresh token then refreshes only with a proof by that key).
        """
        now = self.clock()
        iat = int(now)
        sid, aj, rj = tokens.new_session_id(), tokens.new_jti(), tokens.new_jti()
        uid = str(user.id)
        row = AuthSession(
            id=sid, user_id=user.id, created_at=utc(now), last_seen_at=utc(now),
            device=client.device, ip=client.ip, user_agent=client.user_agent,
            access_jti=aj, refresh_jti=rj, iat=iat,
        )  # fmt: skip
        async with self.db() as db:
            db.add(row)
            await db.commit()
        record = SessionRecord(user.username, now, now, aj, rj, "", iat)
        limit, note = self.settings.max_sessions, new_note()
        try:
            opened = await self.store.login(uid, sid, record, now=now, limit=limit, note=note)
            if isinstance(opened, Miss):
                await self.load_index(user.id, now)
                opened = await self.store.login(uid, sid, record, now=now, limit=limit, note=note)
        except BaseException:
            await self.ends.record([sid], EndReason.REVOKED, now)
            raise
        if isinstance(opened, Miss):  # the set vanished again at once: Redis is failing
            await self.ends.record([sid], EndReason.REVOKED, now)
            raise TokenRevoked()
        if opened.replaced or opened.expired:
            async with self.db() as db:
                await repo.end_sessions(db, opened.replaced, EndReason.REPLACED, utc(now))
                await repo.end_sessions(db, opened.expired, EndReason.EXPIRED, utc(now))
                await db.commit()
            for why, ended in (
                (EndReason.REPLACED, opened.replaced),
                (EndReason.EXPIRED, opened.expired),
            ):
                for ended_sid in ended:
                    security_event(
                        "session_ended", reason=str(why), user_id=uid, session_id=ended_sid
                    )
        if opened.replaced:
            # Recorded; now every instance drops them before this login answers.
            await self.store.settle(note)
        if sid in opened.replaced:
            # Twenty logins at once with a limit of one: this one lost the race.
            raise END_REASON_ERRORS[EndReason.REPLACED]()
        current = await self.users.get_by_id(user.id)
        if (
            current is None
            or current.disabled
            or (
                current.password_stamp != user.password_stamp
                and (password is None or not await self.users.verify_password(current, password))
            )
        ):
            # The password changed (or the user was disabled) while this login
            # was being checked, and the change may have ended the user's
            # sessions before this one existed.
            await self.ends.end([sid], user.id, EndReason.REVOKED, now)
            raise InvalidCredentials()
        claims = await self.access_claims(current, iat)
        return self._pair(Grant(uid, current.username, sid, aj, rj, iat, jkt), claims, now)

    async def load_index(self, user_id: int, now: float) -> None:
        """Put the user's live-session set back from SQL (Redis lost it)."""
        async with self.db() as db:
            live = await repo.live_sessions(db, user_id)
        created = [(row.id, row.created_at.timestamp()) for row in live]
        await self.store.load_index(str(user_id), created, now=now)
