"""Checking a session on every guarded request: one JWT check, one Redis round trip.

Also the near answers (``TOKENGATE_NEAR_CACHE``) and the checks that run
behind them, implicit refresh, and the last-seen write-back.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from .. import tokens
from ..credentials.proofs import SenderCheck, refuse_bound
from ..db import repository as repo
from ..db.repository import utc
from ..errors import DPoPProofRefused, RateLimited, TokenExpired, describe
from ..identity import Identity
from ..store.results import CheckResult, Ended, Limited, Live, Miss, RateCount, Replayed
from .core import SessionCore

log = logging.getLogger("tokengate")

VERIFIED_CACHE_SIZE = 10_000


class Checking(SessionCore):
    """The guard's side of the session: is this access token's session alive now?"""

    def _verify_access(self, token: str, now: float) -> dict[str, Any]:
        """The claims of an access token, verified once per token text."""
        claims = self._verified.get(token)
        if claims is None:
            claims = tokens.verify(self.signing, tokens.AccessToken.kind, token, now=now)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = claims
        else:
            tokens.check_times(self.signing, claims, now=now)
        return claims

    async def authenticate(
        self, access_token: str, *, implicit: bool = True,
        sender: SenderCheck | None = refuse_bound,
    ) -> Identity:  # fmt: skip
        """Check an access token and its session: one JWT check, one round trip.

        ``implicit=False`` never renews an expired token (introspection).
        ``sender`` checks who sent it (``credentials/proofs.py``): given the
        verified claims, it refuses, or names the DPoP proof's replay key,
        which the same round trip notes. By default a token sent without a proof:
        a bound one is refused. ``None`` checks no sender (introspection, which
        describes any token to a resource server, its binding included).
        """
        now = self.clock()
        try:
            claims = self._verify_access(access_token, now)
        except TokenExpired as exc:
            s = self.settings
            # Only just expired: a token copied from an old log is not made new again.
            renewable = now <= exc.claims["exp"] + s.leeway + s.renewal_window
            # A bound token is renewed by a refresh with a proof, never implicitly.
            bound = "cnf" in exc.claims
            if s.implicit_refresh and implicit and renewable and not bound:
                if sender is not None:  # the way it was sent must be allowed first
                    sender(exc.claims, now)
                return await self._implicit_refresh(exc.claims, now)
            # Off the hot path: an expired token of a session that is over says
            # why (session_expired, token_revoked...), so that the client logs
            # in at once instead of trying a refresh that cannot succeed.
            uid, sid = exc.claims["sub"], exc.claims["sid"]
            await self._decide(uid, sid, now, lambda: self.store.peek(uid, sid, now=now))
            raise
        uid, sid = claims["sub"], claims["sid"]
        proof = sender(claims, now) if sender is not None else None
        client = self._rate_count(claims)
        # A client's counted request always waits for Redis, so the count is exact;
        # a proof does too, so that a replay is refused on the very request.
        near = self.near if client is None and proof is None else None
        if near is not None:
            epoch = near.epoch
            if near.fresh(sid, now):
                # The check still runs, to slide last-seen and renew the entry;
                # this request does not wait for it.
                sent = self.store.check_nowait(uid, sid, now=now)
                if sent is None:
                    self.background.spawn(self._check_behind(uid, sid, now, epoch))
                else:
                    sent.add_done_callback(partial(self._checked_behind, uid, sid, now, epoch))
                return Identity(int(uid), claims["name"], sid, dict(claims))
        store = self.store
        checked: CheckResult = await store.check(uid, sid, now=now, client=client, proof=proof)
        live: Live | Limited | Replayed
        if isinstance(checked, Live):
            live = checked
        else:
            live = await self._decide(
                uid, sid, now, lambda: store.check(uid, sid, now=now, client=client, proof=proof),
                result=checked,
            )  # fmt: skip
        if isinstance(live, Replayed):
            raise DPoPProofRefused("This proof was used before.")
        if isinstance(live, Limited):
            assert client is not None
            raise RateLimited(live.retry_after, client.limit, client.window)
        if live.sync_due:
            self.background.spawn(self._touch(sid, now))
        if near is not None and live.created:
            near.keep(sid, now, live.created, epoch)
        # A copy: the cached claims stay as verified whatever a view does.
        return Identity(int(uid), claims["name"], sid, dict(claims))

    def _rate_count(self, claims: dict[str, Any]) -> RateCount | None:
        """What a service account's token counts under ``TOKENGATE_RATE_LIMIT`` (``client_id``)."""
        limit = self.settings.rate_limit
        client_id = claims.get("client_id")
        if limit is None or not isinstance(client_id, str):
            return None
        return RateCount(f"c:{client_id}", *limit)

    def _checked_behind(
        self, uid: str, sid: str, now: float, epoch: int, sent: asyncio.Future[Any]
    ) -> None:
        """The answer to the check of a request let through near: it renews or drops the entry."""
        near = self.near
        if near is None:
            return
        failed = sent.cancelled() or sent.exception() is not None
        result = None if failed else self.store.check_result(sent.result())
        if result is None:
            near.drop(sid)  # failed (the lease runs out if Redis is gone), or NOSCRIPT
            if not failed:
                self.background.spawn(self._check_behind(uid, sid, now, epoch))
        elif isinstance(result, Live):
            near.keep(sid, now, result.created, epoch)
            if result.sync_due:
                self.background.spawn(self._touch(sid, now))
        else:
            near.drop(sid)
            self.background.spawn(self._settle_behind(uid, sid, now, result))

    async def _check_behind(self, uid: str, sid: str, now: float, epoch: int) -> None:
        """:meth:`_checked_behind`, awaited (no lean connection open, or NOSCRIPT)."""
        near = self.near
        if near is None:  # shutting down
            return
        try:
            result = await self.store.check(uid, sid, now=now)
        except Exception as exc:
            near.drop(sid)
            log.debug("near check of %s failed: %s", sid, describe(exc))
            return
        if isinstance(result, Live):
            near.keep(sid, now, result.created, epoch)
            if result.sync_due:
                await self._touch(sid, now)
            return
        near.drop(sid)
        await self._settle_behind(uid, sid, now, result)

    async def _settle_behind(
        self, uid: str, sid: str, now: float, result: Ended | Miss | Limited | Replayed
    ) -> None:
        """A session found over, or lost from Redis, behind a near answer."""
        if isinstance(result, Limited | Replayed):  # never: checks behind near answers
            # count nothing and note no proof
            return
        # Over (its end recorded, if this check ended it) or lost from Redis
        # (rebuilt): as the guard would have, for the next request.
        try:
            await self._decide(uid, sid, now, lambda: self.store.check(uid, sid, now=now), result)
        except Exception as exc:
            log.debug("near check of %s: %s", sid, describe(exc))

    async def _implicit_refresh(self, claims: dict[str, Any], now: float) -> Identity:
        ttl = self.settings.access_ttl
        uid, sid, expired, new = claims["sub"], claims["sid"], claims["jti"], tokens.new_jti()
        store = self.store
        reissue = await self._decide(
            uid, sid, now,
            lambda: store.implicit_refresh(uid, sid, now=now, expired_jti=expired, new_jti=new),
        )  # fmt: skip
        aj, iat, name = reissue.access_jti, reissue.iat, reissue.username
        fresh = dict(claims, jti=aj, iat=iat, nbf=iat, exp=iat + ttl)
        return Identity(
            int(uid), name, sid, fresh,
            new_access_token=self._access(uid, name, sid, aj, iat, tokens.carried_claims(claims)),
            new_access_expires_in=tokens.seconds_left(iat, ttl, now),
        )  # fmt: skip

    async def reissue_if_near_expiry(self, identity: Identity) -> tuple[str, int] | None:
        """A fresh access token for a cookie nearing expiry, else ``None``.

        Concurrent requests carrying the same token get the same new one: the
        mint is keyed on the old token's ``jti`` in Redis.
        """
        ttl = self.settings.access_ttl
        now = self.clock()
        if identity.claims["exp"] - now > max(1, min(60, ttl // 2)):
            return None
        uid, sid = str(identity.user_id), identity.session_id
        reissue = await self.store.implicit_refresh(
            uid, sid, now=now, expired_jti=identity.claims["jti"], new_jti=tokens.new_jti()
        )
        if isinstance(reissue, Ended | Miss):
            return None
        token = self._access(
            uid, reissue.username, sid, reissue.access_jti, reissue.iat,
            tokens.carried_claims(identity.claims),
        )  # fmt: skip
        return token, tokens.seconds_left(reissue.iat, ttl, now)

    async def _touch(self, sid: str, now: float) -> None:
        try:
            async with self.db() as db:
                await repo.touch_session(db, sid, utc(now))
                await db.commit()
        except Exception as exc:  # a lagging last-seen is harmless; log and go on
            log.warning("could not write last-seen back to SQL: %s", describe(exc))
