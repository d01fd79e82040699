"""Closing sessions on request (revoke, logout, logout-all, one session) and listing them."""

from __future__ import annotations

import logging
from typing import Any

from .. import dpop, tokens
from ..db import repository as repo
from ..db.repository import utc
from ..dpop import VerifiedProof
from ..errors import NotFound, TokenExpired, Unauthorized, describe
from ..identity import Identity, SessionInfo
from ..store.results import EndReason
from .core import SessionCore

log = logging.getLogger("tokengate")


class Closing(SessionCore):
    """What a user (or a token's holder) does to sessions: end them, list them."""

    async def revoke(self, token: str, proof: VerifiedProof | None = None) -> bool:
        """End the session of an access or refresh token (RFC 7009); whether one was.

        The token must be genuine (signature, issuer, audience) and may have
        expired: holding it is proof enough to end its own session, unless it is
        DPoP-bound: then only with a ``proof`` by its key (a stolen bound token
        cannot even end its session).
        """
        now = self.clock()
        claims: dict[str, Any] | None = None
        for kind in (tokens.AccessToken.kind, tokens.RefreshToken.kind):
            try:
                claims = tokens.verify(self.signing, kind, token, now=now)
            except TokenExpired as exc:
                claims = exc.claims
            except Unauthorized:
                continue
            break
        if claims is None or "sid" not in claims:
            return False
        jkt = dpop.token_jkt(claims)
        if jkt is not None:
            if proof is None:
                return False
            try:
                dpop.check_binding(proof, jkt)
            except dpop.DPoPError:
                return False
        await self.ends.end([claims["sid"]], int(claims["sub"]), EndReason.REVOKED, now)
        return True

    async def logout(self, identity: Identity) -> None:
        await self.ends.end(
            [identity.session_id], identity.user_id, EndReason.REVOKED, self.clock()
        )

    async def end_all(
        self, user_id: int, *, keep: str = "", reason: EndReason = EndReason.REVOKED
    ) -> None:
        """End every session of ``user_id`` except ``keep``."""
        now = self.clock()
        async with self.db() as db:
            live = [row.id for row in await repo.live_sessions(db, user_id) if row.id != keep]
        await self.ends.end(live, user_id, reason, now, keep=keep, every=True)

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
            self.background.retry(lambda: self.end_all(user_id, keep=keep))

    async def end_session(self, identity: Identity, sid: str) -> None:
        """End one of the caller's own sessions; another user's is ``not_found``."""
        async with self.db() as db:
            row = await repo.get_session(db, sid) if tokens.SESSION_ID.match(sid) else None
        if row is None or row.user_id != identity.user_id:
            raise NotFound("No such session.")
        await self.ends.end([sid], identity.user_id, EndReason.REVOKED, self.clock())

    async def sessions(self, identity: Identity) -> list[SessionInfo]:
        """The caller's live sessions, with last-seen times from Redis where it has them."""
        async with self.db() as db:
            rows = list(await repo.live_sessions(db, identity.user_id))
        times = [(r.id, r.created_at.timestamp(), r.last_seen_at.timestamp()) for r in rows]
        alive = await self.store.last_seen(str(identity.user_id), times, now=self.clock())
        return [
            SessionInfo(
                id=row.id,
                device=row.device,
                ip=row.ip,
                user_agent=row.user_agent,
                created_at=row.created_at,
                last_seen_at=utc(alive[row.id]),
                current=row.id == identity.session_id,
            )
            for row in rows
            if row.id in alive
        ]
