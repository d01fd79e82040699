"""Refresh rotation: a new pair for a refresh token, its grace window, reuse ends the session."""

from __future__ import annotations

import asyncio

from .. import dpop, tokens
from ..db import repository as repo
from ..db.repository import utc
from ..dpop import VerifiedProof
from ..errors import (
    AuthUnavailable,
    InvalidToken,
    TokenRequestProofRefused,
    TokenRevoked,
    Unauthorized,
)
from ..store.near import new_note
from ..store.results import Ended, EndReason, RefreshResult, Rotation
from ..tokens import Grant, TokenPair
from .core import SessionCore

# How long the request that rotated keeps asking to write a session row that
# another transaction holds (about half a second in all).
ROTATION_WRITE_WAITS = (0.01, 0.02, 0.05, 0.1, 0.1, 0.1, 0.1)


class Rotating(SessionCore):
    """``POST /auth/refresh``: one rotation, agreed by every instance, recorded in SQL."""

    async def refresh(
        self, refresh_token: str, *, proof: VerifiedProof | None = None, required: bool = False
    ) -> TokenPair:
        """Trade a refresh token for a new pair; reuse past the grace window ends the session.

        A bound session (its refresh token carries ``cnf.jkt``) refreshes only with
        a ``proof`` by its key, and stays bound; one that is not stays a bearer
        session, and with ``required`` (``TOKENGATE_DPOP=required``) is refused.
        Both are checked before the rotation: a stolen token sent without its key
        costs its session nothing.
        """
        now = self.clock()
        claims = tokens.verify(self.signing, tokens.RefreshToken.kind, refresh_token, now=now)
        jkt = dpop.token_jkt(claims)
        if jkt is not None:
            if proof is None:
                raise TokenRequestProofRefused("This session is bound to a key: send a DPoP proof.")
            try:
                dpop.check_binding(proof, jkt)
            except dpop.DPoPError as exc:
                raise TokenRequestProofRefused(exc.reason) from None
        elif required:
            raise InvalidToken("This session is not bound to a key: log in again with a proof.")
        uid, sid, presented = claims["sub"], claims["sid"], claims["jti"]
        aj, rj, note = tokens.new_jti(), tokens.new_jti(), new_note()
        over = False

        async def rotate() -> RefreshResult:
            nonlocal over
            result = await self.store.refresh(
                uid, sid, now=now, presented_jti=presented, new_access_jti=aj,
                new_refresh_jti=rj, note=note,
            )  # fmt: skip
            over = isinstance(result, Ended)
            return result

        try:
            rotation = await self._decide(uid, sid, now, rotate)
        except Unauthorized:
            if over:  # announced with the note (a reuse recorded first): all drop it
                await self.store.settle(note)
            raise
        user = await self.users.get_by_id(int(uid))
        async with self.db() as db:
            row = await repo.get_session(db, sid)
        recorded = await self._record_rotation(sid, rotation, now)
        if row is None or user is None or user.disabled:
            # Gone or disabled since the login: this session is over.
            await self.ends.end([sid], int(uid), EndReason.REVOKED, now)
            raise TokenRevoked()
        # auth_time stays the session's password login: a refresh is not a login.
        claims = await self.access_claims(user, int(row.created_at.timestamp()))
        grant = Grant(
            uid, user.username, sid, rotation.access_jti, rotation.refresh_jti, rotation.iat, jkt
        )
        pair = self._pair(grant, claims, now)
        # Only now may the retired token's grace run out: until here, any
        # failure (a 503, a lost reply) leaves the rotation unconfirmed, and
        # the same refresh sent again gets this same pair, however late.
        if recorded:
            await self.store.confirm(uid, sid, rotation.refresh_jti)
        return pair

    async def _record_rotation(self, sid: str, rotation: Rotation, now: float) -> bool:
        """Write the rotation to SQL; whether SQL holds it now.

        Recorded on the grace path too: if the first answer's SQL write failed,
        the client's retry lands here and SQL must still catch up. The write
        applies only while SQL is one step behind, so concurrent or late writes
        never move it backwards. A row another request is writing this moment
        is skipped: a repeat leaves the write (and the confirmation) to that
        request; the request that rotated asks again for a moment, since the
        other writer may be an unrelated one (a last-seen write-back).
        """
        waits = ROTATION_WRITE_WAITS if rotation.rotated else ()
        for delay in (*waits, None):
            async with self.db() as db:
                recorded = await repo.record_rotation(
                    db, sid, access_jti=rotation.access_jti, refresh_jti=rotation.refresh_jti,
                    previous_refresh_jti=rotation.previous_refresh_jti, iat=rotation.iat,
                    at=utc(now),
                )  # fmt: skip
                await db.commit()
            if recorded or delay is None:
                break
            await asyncio.sleep(delay)
        if rotation.rotated and not recorded:
            # The row stayed locked (a stuck transaction): answer 503. The
            # rotation stays unconfirmed, so the same refresh sent again gets
            # this pair and writes it then.
            raise AuthUnavailable()
        return recorded
