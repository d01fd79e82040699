"""The password throttle: per account and address, per address, per trusted device.

An untrusted client's password check counts against three limits:
``TOKENGATE_LOGIN_MAX_FAILURES`` failures of its address on the account,
``ACCOUNT_CEILING`` times as many on the account from every address, and
``TOKENGATE_ADDRESS_MAX_FAILURES`` of its address across every username (so
one address cannot spray a password over many accounts). A client that
presents a valid device token of the account (OWASP's "device cookies": a
signed token the service gave it after a successful login to that account)
is throttled on its own count alone, so an attack from elsewhere never
locks out a device the owner has used; a device that fails
``TOKENGATE_LOGIN_MAX_FAILURES`` times is locked out alone. Registrations and
password-reset requests are counted per address too.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from . import tokens
from .errors import ApiError, InvalidCredentials, TooManyAttempts
from .keys import KeyRing
from .proxies import throttle_address
from .settings import Settings
from .store.redis_store import RedisSessionStore
from .store.results import Attempt

# How long a password check waits for its turn, attempt by attempt (~10 s in all).
_ATTEMPT_WAITS = (0.01, 0.02, 0.05, *([0.1] * 99))
# Failures from all addresses together that lock an account, as a multiple of
# TOKENGATE_LOGIN_MAX_FAILURES (the limit per address): high enough that one
# address, or a handful, cannot lock the owner out from another.
ACCOUNT_CEILING = 10

# One limit of a check: ask for a slot at ``now`` (1 go, 0 wait, -seconds over),
# and settle it.
_Scope = tuple[Callable[[float], Awaitable[int]], Callable[[Attempt], Awaitable[None]]]


@dataclass(frozen=True, slots=True)
class Device:
    """A trusted device of one account: its id (the token's ``jti``) and the user's id."""

    id: str
    user_id: str


class LoginThrottle:
    """Counts password checks, registrations and reset requests; mints device tokens."""

    def __init__(
        self,
        settings: Settings,
        store: RedisSessionStore,
        keyring: KeyRing,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.clock = clock

    # -- device tokens ------------------------------------------------------
    def trusted_device(self, token: str | None, name: str) -> Device | None:
        """The device ``token`` names, if it is a valid device token of the account ``name``.

        A forged, expired or malformed token, or one of another account, is no
        device at all: the check is throttled as an untrusted client's.
        """
        if not token:
            return None
        try:
            claims = tokens.verify(
                self.keyring.signing, tokens.DeviceToken.kind, token, now=self.clock()
            )
        except ApiError:  # any fault of the token (invalid, expired): untrusted, never an error
            return None
        if claims.get("name") != name:
            return None
        return Device(id=str(claims["jti"]), user_id=str(claims["sub"]))

    def device_token(self, user_id: int, name: str, device: Device | None) -> str:
        """A device token for a successful login: the same device renewed, or a new one."""
        keep = device is not None and device.user_id == str(user_id)
        return tokens.mint(
            self.keyring.signing, tokens.DeviceToken.kind, sub=str(user_id),
            jti=device.id if keep and device is not None else tokens.new_jti(),
            iat=int(self.clock()), ttl=self.settings.device_token_ttl, extra={"name": name},
        )  # fmt: skip

    # -- password checks ----------------------------------------------------
    def _scopes(self, name: str, where: str, attempt: str, device: Device | None) -> list[_Scope]:
        s, store, window = self.settings, self.store, self.settings.login_window
        if device is not None:
            return [
                (
                    lambda now: store.begin_device_attempt(
                        name, device.id, attempt, now=now, limit=s.login_max_failures
                    ),
                    lambda outcome: store.end_device_attempt(
                        name, device.id, attempt, outcome=outcome, window=window
                    ),
                )
            ]
        scopes: list[_Scope] = []
        if s.address_max_failures:
            scopes.append(
                (
                    lambda now: store.begin_address_attempt(
                        where, attempt, now=now, limit=s.address_max_failures
                    ),
                    lambda outcome: store.end_address_attempt(
                        where, attempt, outcome=outcome, window=window
                    ),
                )
            )
        limit = s.login_max_failures
        scopes.append(
            (
                lambda now: store.begin_attempt(
                    name, where, attempt, now=now, limit=limit, ceiling=limit * ACCOUNT_CEILING
                ),
                lambda outcome: store.end_attempt(
                    name, where, attempt, outcome=outcome, window=window
                ),
            )
        )
        return scopes

    @contextlib.asynccontextmanager
    async def password_attempt(
        self, name: str, address: str | None, device: Device | None = None
    ) -> AsyncIterator[None]:
        """Run one throttled password check of ``name`` from ``address`` (or ``device``).

        A check starts only while failures plus the checks still running stay
        under every limit (a burst of guesses cannot outrun the count; correct
        passwords sent at once take turns), else it waits its turn, or answers
        429 once a count is reached. ``InvalidCredentials`` from the body is a
        failure; a body that returns is a success, which clears the address's
        (or the device's) count on the account; any other error (an outage) is
        not counted at all.
        """
        where = throttle_address(address or "")
        attempt = secrets.token_hex(8)
        scopes = self._scopes(name, where, attempt, device)
        held: list[Callable[[Attempt], Awaitable[None]]] = []
        for delay in _ATTEMPT_WAITS:
            verdict = 1
            for begin, end in scopes:
                verdict = await begin(self.clock())
                if verdict != 1:
                    break
                held.append(end)
            if verdict == 1:
                break
            # Not every limit let it in: give back the slots it got, then wait or refuse.
            for end in held:
                await end(Attempt.UNDECIDED)
            held.clear()
            if verdict < 0:
                raise TooManyAttempts(-verdict)
            await asyncio.sleep(delay)
        else:
            raise TooManyAttempts(1, "Too many password checks at once for this account.")
        outcome = Attempt.UNDECIDED
        try:
            yield
            outcome = Attempt.OK
        except InvalidCredentials:
            outcome = Attempt.FAILED
            raise
        finally:
            for end in reversed(held):
                await end(outcome)

    # -- requests per address -------------------------------------------------
    async def count_request(self, kind: str, address: str, limit: int) -> None:
        """Count one request of ``kind`` from ``address``; ``429`` past ``limit`` in the window."""
        if not limit:
            return
        window = self.settings.login_window
        count, ttl = await self.store.count_address(kind, throttle_address(address), window)
        if count > limit:
            raise TooManyAttempts(ttl if ttl > 0 else window)
