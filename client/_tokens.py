"""The token pair a client holds, and the protocol of the stores that keep it.

``Tokens`` is the pair with what the client reads from the access token's
claims (never verified: the service checks every token; the client only wants
to know when to refresh). ``TokenStore`` is the base class of the stores in
``_store.py`` and of any store of one's own: ``load``, an atomic ``update``
and, for the refresh, ``begin_refresh``/``end_refresh`` with a ``Lease``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# ``iat`` is whole seconds: a token may have been issued up to this much after it.
IAT_ROUNDING = 1.0
DPOP = "DPoP"
# The base class keeps a DPoP key in memory; this makes its creation once only.
_memory_key_lock = threading.Lock()


def unverified_claims(token: str) -> dict[str, Any]:
    """The JWT payload, *not verified*: only ever used to read ``exp`` and ``iat``.

    The client cannot verify the signature (it does not hold the key) and does
    not need to: the service checks every token; the client only wants to know
    when to refresh.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number (not a bool), else ``None``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass(frozen=True, slots=True)
class Tokens:
    """An access and refresh token pair; the repr never shows either token."""

    access_token: str
    refresh_token: str
    session_id: str | None = None
    token_type: str = "Bearer"  # noqa: S105 - the scheme name, not a secret
    # When the access token arrived, by the local clock (None: not known).
    received_at: float | None = field(default=None, compare=False)
    # Read from the access token's own claims, so a pair loaded from a file or
    # pushed by the service (X-Access-Token) knows its expiry as well.
    expires_at: float | None = field(init=False, compare=False)
    issued_at: float | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        claims = unverified_claims(self.access_token)
        object.__setattr__(self, "expires_at", as_number(claims.get("exp")))
        object.__setattr__(self, "issued_at", as_number(claims.get("iat")))

    def __repr__(self) -> str:
        return f"Tokens(session_id={self.session_id!r}, expires_at={self.expires_at!r})"

    @property
    def bound(self) -> bool:
        """Is this a DPoP-bound pair (``token_type`` DPoP, RFC 9449 section 5)?

        A bound access token is sent as ``Authorization: DPoP <token>`` with a
        proof, and the session refreshes only with a proof by the same key.
        """
        return self.token_type.lower() == DPOP.lower()

    @property
    def local_expiry(self) -> float | None:
        """When the access token expires by the local clock.

        ``exp`` is the service's clock; the local one may run ahead or behind.
        Once the pair's arrival is known, the expiry is that arrival plus the
        token's lifetime (``exp - iat``), whatever the skew, less the second
        ``iat`` may have been rounded down by; before, ``exp``.
        """
        exp, iat = self.expires_at, self.issued_at
        if self.received_at is None or exp is None or iat is None:
            return exp
        return self.received_at + (exp - iat) - IAT_ROUNDING

    def received(self, at: float) -> Tokens:
        """The same pair, noted as arrived at ``at`` (local clock)."""
        return Tokens(self.access_token, self.refresh_token, self.session_id, self.token_type, at)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tokens:
        """Build from a token pair response (or a stored copy); ``ValueError`` if malformed."""
        access, refresh = data.get("access_token"), data.get("refresh_token")
        # An empty refresh token is a token without one (the client-credentials grant).
        if not isinstance(access, str) or not access or not isinstance(refresh, str):
            raise ValueError("a token pair needs a non-empty access_token and a refresh_token")
        session_id = data.get("session_id")
        token_type = data.get("token_type") or "Bearer"
        return cls(
            access_token=access,
            refresh_token=refresh,
            session_id=session_id if isinstance(session_id, str) else None,
            token_type=token_type if isinstance(token_type, str) else "Bearer",
            received_at=as_number(data.get("received_at")),
        )

    def to_json(self) -> dict[str, Any]:
        """The pair as JSON-ready data (contains the tokens: keep it private)."""
        data: dict[str, Any] = {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": self.token_type,
            "session_id": self.session_id,
        }
        if self.received_at is not None:
            data["received_at"] = self.received_at
        return data

    def with_access_token(self, access_token: str, received_at: float | None = None) -> Tokens:
        """The same pair with a new access token (one the service pushed at ``received_at``)."""
        return Tokens(
            access_token, self.refresh_token, self.session_id, self.token_type, received_at
        )


def same_refresh_token(a: Tokens | None, b: Tokens | None) -> bool:
    """Do ``a`` and ``b`` hold the same refresh token (or are both empty)?

    A refresh's result replaces the pair it was begun for: that pair's access
    token may have been replaced meanwhile (``X-Access-Token``), its refresh
    token only by a refresh or a login.
    """
    if a is None or b is None:
        return a is b
    return a.refresh_token == b.refresh_token


class Keep(enum.Enum):
    """``end_refresh`` argument: leave the stored tokens as they are."""

    KEEP = "keep"


KEEP = Keep.KEEP
Change = Tokens | None | Literal[Keep.KEEP]


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to refresh, handed to one refresher; ``tokens`` are the ones to refresh."""

    id: str
    tokens: Tokens | None = field(repr=False)


class TokenStore:
    """Base class of token stores; subclass it to keep tokens somewhere else.

    A subclass implements ``load`` and ``update``; the refresh protocol below
    then works within one process. ``FileTokenStore`` overrides it to work
    across processes too.
    """

    def load(self) -> Tokens | None:
        """The stored tokens, or ``None``. Called for every request: keep it cheap."""
        raise NotImplementedError

    def update(self, change: Callable[[Tokens | None], Tokens | None]) -> Tokens | None:
        """Atomically replace the tokens with ``change(current)``; return the result."""
        raise NotImplementedError

    def save(self, tokens: Tokens | None) -> None:
        """Store ``tokens`` (``None`` clears the store)."""
        self.update(lambda _: tokens)

    def begin_refresh(
        self, stale: Tokens | None, usable: Callable[[Tokens], bool]
    ) -> Tokens | Lease | float:
        """Ask to refresh ``stale``.

        Returns tokens that are already newer than ``stale`` and ``usable``
        (use them: someone else refreshed), a ``Lease`` (refresh its tokens,
        then call ``end_refresh``), or a number of seconds to wait before
        asking again (someone else is refreshing right now).
        """
        current = self.load()
        if current is not None and current != stale and usable(current):
            return current
        return Lease(secrets.token_hex(8), current)

    def device_token(self, username: str) -> str | None:
        """The device token kept for ``username``'s account, or ``None``.

        The service gives one with each password login; sent with the next
        login to the same account, it has that login throttled on this
        device's own count. It outlives logouts (it marks the device, not a
        session). This base class keeps them in memory; ``FileTokenStore`` in
        its file.
        """
        kept: dict[str, str] = self.__dict__.get("_device_tokens", {})
        return kept.get(username)

    def keep_device_token(self, username: str, token: str) -> None:
        """Keep ``token`` as ``username``'s device token from now on."""
        self.__dict__.setdefault("_device_tokens", {})[username] = token

    def dpop_key(self, create: Callable[[], dict[str, str]] | None = None) -> dict[str, str] | None:
        """The DPoP key kept beside the tokens (a private JWK), or ``None``.

        With ``create``, a store that keeps no key yet keeps ``create()``'s and
        returns it, so a key is made once however many requests ask at the
        same time (``FileTokenStore``: once for every process sharing the
        file). The key outlives logouts, as a device token does. This base
        class keeps it in memory, so a store of one's own written before DPoP
        works unchanged; ``FileTokenStore`` keeps it in its file.
        """
        kept: dict[str, str] | None = self.__dict__.get("_dpop_key")
        if kept is None and create is not None:
            with _memory_key_lock:
                kept = self.__dict__.get("_dpop_key")
                if kept is None:
                    kept = self.__dict__["_dpop_key"] = create()
        return kept

    def end_refresh(self, lease: Lease, change: Change) -> None:
        """Store the refresh's result, unless a refresh or login replaced the tokens meanwhile."""
        if change is not KEEP:
            self.update(
                lambda current: change if same_refresh_token(current, lease.tokens) else current
            )
