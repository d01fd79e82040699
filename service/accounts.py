"""Accounts: registration, credentials and their throttle, password change and reset.

Passwords are hashed with argon2id off the event loop (``passwords.py``);
every password check, registration and reset request is throttled in Redis
(``throttle.py``). Ending sessions is the session
manager's job: a password change or reset asks it to.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import usernames
from .background import retry
from .db import repository as repo
from .db.models import User
from .db.repository import utc
from .errors import (
    AuthUnavailable,
    Conflict,
    InvalidCredentials,
    InvalidRequest,
    InvalidToken,
    TokenRevoked,
    TooManyAttempts,
    describe,
)
from .identity import ClientInfo, Identity
from .outbox import Message, Sender
from .passwords import Passwords
from .purpose import UNUSABLE, PurposeTokens
from .sessions import SessionManager
from .settings import Settings
from .store.redis_store import RedisSessionStore
from .throttle import Device, LoginThrottle
from .tokens import TokenPair
from .users import SqlUserStore, UserRecord, UserStore

log = logging.getLogger("tokengate")

RESET_PURPOSE = "password_reset"
# Password resets waiting for their background task, at most (a database
# outage holds them; past this many, a request is refused with 503).
RESET_BACKLOG = 256


class Accounts:
    """Users and their passwords, over the session manager that ends their sessions."""

    def __init__(
        self,
        settings: Settings,
        store: RedisSessionStore,
        db: async_sessionmaker[AsyncSession],
        passwords: Passwords,
        sessions: SessionManager,
        purpose_tokens: PurposeTokens,
        clock: Callable[[], float] = time.time,
        users: UserStore | None = None,
    ) -> None:
        self.settings = settings
        # Where users are looked up and their passwords checked.
        self.users: UserStore = users if users is not None else SqlUserStore(db, passwords)
        self.store = store
        self.db = db
        self.passwords = passwords
        self.sessions = sessions
        self.purpose_tokens = purpose_tokens
        self.clock = clock
        self.throttle = LoginThrottle(settings, store, purpose_tokens.keyring, clock)
        self._resets_pending = 0

    async def register(self, username: str, password: str, address: str | None = None) -> User:
        """Create a user; from a client ``address``, counted per address first.

        The name is kept in its UsernameCaseMapped form, and refused as taken
        when it looks like a taken one (``usernames.py``; the skeleton's unique
        index settles a race). It is checked, valid and free, before the
        password is hashed, so a bad or taken name costs no argon2 work.
        ``address`` is ``None`` for the command line, which is not throttled.
        """
        if address is not None:
            await self.throttle.count_request(
                "register", address, self.settings.address_max_registrations
            )
        try:
            name = usernames.canonical(username)
        except usernames.InvalidUsername as exc:
            raise InvalidRequest(f"username: {exc}.") from None
        skeleton = usernames.skeleton(name)
        self._check_password(password)
        async with self.db() as db:
            if await repo.username_taken(db, skeleton):
                raise Conflict()
        password_hash = await self.passwords.hash(password)
        now = utc(self.clock())
        async with self.db() as db:
            user = User(
                username=name,
                username_skeleton=skeleton,
                password_hash=password_hash,
                created_at=now,
                password_changed_at=now,
            )
            db.add(user)
            try:
                await db.commit()
            except IntegrityError:
                raise Conflict() from None
        return user

    def _check_password(self, password: str) -> None:
        if len(password) < self.settings.password_min_length:
            raise InvalidRequest(
                f"The password must be at least {self.settings.password_min_length} characters."
            )

    async def check_credentials(
        self,
        username: str,
        password: str,
        address: str | None = None,
        device: Device | None = None,
        *,
        asked: str | None = None,
    ) -> UserRecord:
        """Verify a username and password against the user store, throttled (``throttle.py``).

        An unknown user costs a password check too (against a dummy hash), so
        that the answer takes about as long as for a wrong password. A disabled
        user's password is checked too, and refused like a wrong one.
        """
        async with self.throttle.password_attempt(username, address, device):
            user = await self.users.get_by_username(asked if asked is not None else username)
            if user is None:
                await self.passwords.verify(None, password)
                raise InvalidCredentials()
            if not await self.users.verify_password(user, password) or user.disabled:
                raise InvalidCredentials()
        return user

    async def login(
        self, username: str, password: str, client: ClientInfo, device_token: str | None = None,
        *, jkt: str | None = None,
    ) -> TokenPair:  # fmt: skip
        """Check the credentials and open a session: its first token pair, with a device token.

        A valid ``device_token`` of this account has the check throttled on
        the device's own count; the pair carries that device's token renewed,
        or a new device's. ``jkt`` binds the session to a DPoP key.
        """
        name = usernames.lookup_forms(username)[0]  # Alice and ALICE: one count
        device = self.throttle.trusted_device(device_token, name)
        user = await self.check_credentials(name, password, client.ip, device, asked=username)
        pair = await self.sessions.start_session(user, client, password, jkt=jkt)
        issued = self.throttle.device_token(user.id, name, device)
        return dataclasses.replace(pair, device_token=issued)

    async def change_password(
        self, identity: Identity, current: str, new: str, address: str | None = None
    ) -> None:
        """Set a new password after checking the current one; end every other session.

        The current password is throttled like a login. Other sessions end
        before the new password is stored, so a failure part-way leaves the old
        password in place and the request can simply be retried.
        """
        self._check_password(new)
        async with self.throttle.password_attempt(identity.username, address):
            async with self.db() as db:
                user = await repo.get_user(db, identity.user_id)
            if user is None:
                raise TokenRevoked()
            verdict = await self.passwords.verify(user.password_hash, current)
            if not verdict.ok:
                raise InvalidCredentials("The current password is wrong.")
        await self.sessions.end_all(identity.user_id, keep=identity.session_id)
        await self._set_password(identity.user_id, new)
        await self.sessions.end_all_again(identity.user_id, keep=identity.session_id)

    async def set_password(self, user_id: int, password: str) -> None:
        """Set a password without the current one (``tokengate users set-password``).

        Every session of the user ends, before and again after the change, as
        with a password reset.
        """
        self._check_password(password)
        await self.sessions.end_all(user_id)
        await self._set_password(user_id, password)
        await self.sessions.end_all_again(user_id)

    async def _set_password(self, user_id: int, password: str) -> None:
        password_hash = await self.passwords.hash(password)
        async with self.db() as db:
            user = await repo.get_user(db, user_id)
            if user is None:
                raise InvalidToken()
            user.password_hash = password_hash
            user.password_changed_at = utc(self.clock())
            await db.commit()

    async def request_password_reset(
        self, username: str, sender: Sender, address: str = ""
    ) -> None:
        """Count the request, then send ``username`` a reset token in the background.

        The answer takes the same time whether the user exists or not: only the
        throttle (the same Redis script for any name) runs on the request's
        path; the lookup, the token and the message run in a background task,
        retried through a database outage. At most ``RESET_BACKLOG`` of them
        wait at once; past that the request is ``503`` (nothing was queued).
        """
        s = self.settings
        await self.throttle.count_request("reset", address, s.address_max_resets)
        name = usernames.lookup_forms(username)[0]
        count, ttl = await self.store.record_failure(name, s.login_window, kind="reset")
        if count > s.login_max_failures:
            raise TooManyAttempts(ttl if ttl > 0 else s.login_window)
        if self._resets_pending >= RESET_BACKLOG:
            raise AuthUnavailable("Too many password resets are waiting; try again shortly.")
        self._resets_pending += 1
        self.sessions.background.spawn(self._reset_in_background(username, sender))

    async def _reset_in_background(self, username: str, sender: Sender) -> None:
        try:
            await retry(lambda: self._send_reset(username, sender))
        finally:
            self._resets_pending -= 1

    async def _send_reset(self, username: str, sender: Sender) -> None:
        """Look the user up and send a reset token; an unknown name mints one it drops."""
        s = self.settings
        async with self.db() as db:
            user = await repo.find_user_by_name(db, username)
        if user is None:
            # About the same work, so that a burst of unknown names does not
            # load the server differently from a burst of known ones.
            self.purpose_tokens.mint_unbound(RESET_PURPOSE, s.reset_ttl)
            return
        token = await self.purpose_tokens.issue(user.id, RESET_PURPOSE, s.reset_ttl)
        message = Message(
            to=user.username, purpose=RESET_PURPOSE, token=token, created_at=utc(self.clock())
        )
        try:
            await sender.send(message)
        except Exception as exc:  # a sender's failure is logged; the token is not resent
            log.error("could not send the password_reset message: %s", describe(exc))

    async def reset_password(self, token: str, new_password: str) -> None:
        """Set a new password with a reset token and end every session of the user.

        The sessions end first and the token is used up only with the new
        password, in one transaction: a failure part-way leaves the token
        usable for a retry.
        """
        self._check_password(new_password)
        claims = self.purpose_tokens.claims(token, RESET_PURPOSE)
        async with self.db() as db:
            usable = await repo.purpose_token_usable(
                db, claims["jti"], RESET_PURPOSE, utc(self.clock())
            )
        if usable is None or str(usable) != claims["sub"]:
            raise InvalidToken(UNUSABLE)
        user_id = int(claims["sub"])
        await self.sessions.end_all(user_id)
        password_hash = await self.passwords.hash(new_password)
        now = utc(self.clock())
        async with self.db() as db:
            if await repo.consume_purpose_token(db, claims["jti"], RESET_PURPOSE, now) is None:
                raise InvalidToken(UNUSABLE)
            user = await repo.get_user(db, user_id)
            if user is None:
                raise InvalidToken(UNUSABLE)
            user.password_hash = password_hash
            user.password_changed_at = now
            await db.commit()
        await self.sessions.end_all_again(user_id)
