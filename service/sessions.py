"""Session lifecycle: opening a session, the guard's check, refresh rotation, ending, limits.

SQL holds the durable truth about every session; Redis holds its hot state
and makes every decision atomically (``store/redis_store.py``). Writes that
end a session go to SQL first and Redis second, so a Redis that loses its
data can always be rebuilt from SQL without reviving anything.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import tokens
from .background import Background
from .db import repository as repo
from .db.models import AuthSession
from .db.repository import utc
from .ending import SessionEnds
from .errors import (
    AuthUnavailable,
    InvalidCredentials,
    NotFound,
    RefreshReused,
    SessionExpired,
    SessionReplaced,
    TokenExpired,
    TokenRevoked,
    Unauthorized,
    describe,
)
from .identity import ClientInfo, Identity, SessionInfo
from .keys import KeyRing
from .logs import security_event
from .settings import Settings
from .store.near import NearChecks, new_note
from .store.redis_store import RedisSessionStore
from .store.results import (
    Ended,
    EndReason,
    Live,
    Miss,
    RefreshResult,
    Rotation,
    SessionRecord,
)
from .tokens import Grant, TokenPair
from .users import ClaimsHook, UserRecord, UserStore, hook_claims

log = logging.getLogger("tokengate")

R = TypeVar("R")
# What a request meets once its session ended, by the reason it ended.
END_REASON_ERRORS: dict[EndReason, type[Unauthorized]] = {
    EndReason.REVOKED: TokenRevoked,
    EndReason.EXPIRED: SessionExpired,
    EndReason.REPLACED: SessionReplaced,
    EndReason.REUSED: TokenRevoked,
}
VERIFIED_CACHE_SIZE = 10_000
# How long the request that rotated keeps asking to write a session row that
# another transaction holds (about half a second in all).
ROTATION_WRITE_WAITS = (0.01, 0.02, 0.05, 0.1, 0.1, 0.1, 0.1)


class SessionManager:
    """The session lifecycle, over one Redis store and one database.

    Every decision about a live session (alive? idle? too old? which pair
    now?) is made by a script in Redis (``store/``); this class mints the
    tokens, keeps SQL in step, and rebuilds what Redis lost.
    """

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

    # -- opening a session ----------------------------------------------------
    async def start_session(
        self, user: UserRecord, client: ClientInfo, password: str | None = None
    ) -> TokenPair:
        """Open a new session for ``user`` and return its first token pair.

        ``password`` is the one just checked: if the user's password stamp moved
        meanwhile (a rehash, or a change), the login stands only if it still matches.
        """
        now = self.clock()
        iat = int(now)
        sid, aj, rj = secrets.token_urlsafe(16), tokens.new_jti(), tokens.new_jti()
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
                await self._load_index(user.id, now)
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
        return self._pair(Grant(uid, current.username, sid, aj, rj, iat), claims, now)

    async def _load_index(self, user_id: int, now: float) -> None:
        async with self.db() as db:
            live = await repo.live_sessions(db, user_id)
        created = [(row.id, row.created_at.timestamp()) for row in live]
        await self.store.load_index(str(user_id), created, now=now)

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
        username = user.username
        record = SessionRecord(
            username=username,
            created=row.created_at.timestamp(),
            last_seen=row.last_seen_at.timestamp(),
            access_jti=row.access_jti,
            refresh_jti=row.refresh_jti,
            previous_refresh_jti=row.previous_refresh_jti or "",
            iat=row.iat,
            ended=EndReason.parse(row.end_reason) if row.ended_at else None,
        )
        await self.store.load(user_id, sid, record, now=now)

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

    # -- the guard --------------------------------------------------------
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

    async def authenticate(self, access_token: str, *, implicit: bool = True) -> Identity:
        """Check an access token and its session: one JWT check, one round trip.

        ``implicit=False`` never renews an expired token (introspection).
        """
        now = self.clock()
        try:
            claims = self._verify_access(access_token, now)
        except TokenExpired as exc:
            s = self.settings
            # Only just expired: a token copied from an old log is not made new again.
            renewable = now <= exc.claims["exp"] + s.leeway + s.renewal_window
            if s.implicit_refresh and implicit and renewable:
                return await self._implicit_refresh(exc.claims, now)
            # Off the hot path: an expired token of a session that is over says
            # why (session_expired, token_revoked...), so that the client logs
            # in at once instead of trying a refresh that cannot succeed.
            uid, sid = exc.claims["sub"], exc.claims["sid"]
            await self._decide(uid, sid, now, lambda: self.store.peek(uid, sid, now=now))
            raise
        uid, sid = claims["sub"], claims["sid"]
        near = self.near
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
        checked = await self.store.check(uid, sid, now=now)
        live = (
            checked
            if isinstance(checked, Live)
            else await self._decide(
                uid, sid, now, lambda: self.store.check(uid, sid, now=now), checked
            )
        )
        if live.sync_due:
            self.background.spawn(self._touch(sid, now))
        if near is not None and live.created:
            near.keep(sid, now, live.created, epoch)
        # A copy: the cached claims stay as verified whatever a view does.
        return Identity(int(uid), claims["name"], sid, dict(claims))

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

    async def _settle_behind(self, uid: str, sid: str, now: float, result: Ended | Miss) -> None:
        """A session found over, or lost from Redis, behind a near answer."""
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

    # -- refresh ----------------------------------------------------------
    async def refresh(self, refresh_token: str) -> TokenPair:
        """Trade a refresh token for a new pair; reuse past the grace window ends the session."""
        now = self.clock()
        claims = tokens.verify(self.signing, tokens.RefreshToken.kind, refresh_token, now=now)
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
            uid, user.username, sid, rotation.access_jti, rotation.refresh_jti, rotation.iat
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

    # -- ending sessions --------------------------------------------------
    async def revoke(self, token: str) -> bool:
        """End the session of an access or refresh token (RFC 7009); whether one was.

        The token must be genuine (signature, issuer, audience) and may have
        expired: holding it is proof enough to end its own session.
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
