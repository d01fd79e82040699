"""Who made a request, which sessions a user has, and where a login came from.

Plain values: the guard puts an :class:`Identity` on each authenticated
request (``current_identity()``); the sessions list is made of
:class:`SessionInfo`; a login records its :class:`ClientInfo`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made the request: what ``current_identity()`` returns."""

    user_id: int
    username: str
    session_id: str
    claims: dict[str, Any] = field(repr=False)
    # Set when the guard accepted an expired token through implicit refresh.
    new_access_token: str | None = field(default=None, repr=False)
    new_access_expires_in: int = 0
    # Set when the credential was an API key (``session_id`` is then ""):
    # the key's id; ``scopes`` are the key's, narrowed to the user's.
    api_key_id: str | None = None

    @property
    def credential(self) -> str:
        """Which kind of credential the request carried: ``session`` or ``api_key``."""
        return "api_key" if self.api_key_id is not None else "session"

    @property
    def scopes(self) -> frozenset[str]:
        """The scopes the access token carries (its ``scope`` claim)."""
        scope = self.claims.get("scope", "")
        return frozenset(scope.split()) if isinstance(scope, str) else frozenset()

    @property
    def auth_time(self) -> int:
        """When the password login behind this session happened (epoch seconds)."""
        return int(self.claims.get("auth_time", 0))

    def login_is_fresh(self, now: float, fresh_ttl: int) -> bool:
        """Was the password login at most ``fresh_ttl`` whole seconds before ``now``?

        ``auth_time`` is the login's second rounded down, so ``now`` is rounded
        down too: a login ``fresh_ttl`` seconds ago, to the fraction, is still
        fresh, and one a second more ago is not, whatever fraction the clock
        had at the login. A service account's token (it carries ``client_id``)
        stands for no password login, so it is never fresh.
        """
        if "client_id" in self.claims:
            return False
        return math.floor(now) - self.auth_time <= fresh_ttl


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    device: str | None
    ip: str | None
    user_agent: str | None
    created_at: datetime
    last_seen_at: datetime
    current: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device": self.device,
            "ip": self.ip,
            "user_agent": self.user_agent,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "last_seen_at": self.last_seen_at.isoformat().replace("+00:00", "Z"),
            "current": self.current,
        }


@dataclass(frozen=True, slots=True)
class ClientInfo:
    device: str | None = None
    ip: str | None = None
    user_agent: str | None = None
