"""What the session store keeps and what its scripts answer, as types.

``RedisSessionStore`` turns every script reply into one of these; nothing
else knows the reply layout or the Redis field names. Times on this side are
epoch seconds (``float``), as the clock gives them and as Lua compares them;
``*_at`` names stay for ``datetime`` values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# How long past its absolute age a session's Redis state is kept (so that a
# late request still meets "ended", not a miss rebuilt from SQL).
EXPIRY_SLACK = 60
# Last-seen is written back to SQL at most this often per session, off the
# request path; it bounds how stale a session rebuilt from SQL can be.
MAX_SYNC_INTERVAL = 60


class EndReason(enum.StrEnum):
    """Why a session ended; stored in SQL (``sessions.end_reason``) and in Redis."""

    REVOKED = "revoked"  # logout, logout-all, deleted, password changed or reset
    EXPIRED = "expired"  # idle too long, or past its absolute age
    REPLACED = "replaced"  # a newer login pushed it out (TOKENGATE_MAX_SESSIONS)
    REUSED = "reused"  # a retired refresh token came back after the grace window

    @classmethod
    def parse(cls, value: str | None) -> EndReason:
        """The reason named ``value``; anything unknown counts as revoked."""
        try:
            return cls(value or "")
        except ValueError:
            return cls.REVOKED


class Attempt(enum.StrEnum):
    """How a throttled password check ended."""

    FAILED = "failed"  # a wrong password, an unknown or disabled user: counted
    OK = "ok"  # the right password: the address's count is cleared
    UNDECIDED = "undecided"  # the database or Redis failed first: not counted


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """The session rules the scripts apply, from the settings, in seconds."""

    idle_timeout: int
    max_age: int
    refresh_grace: int
    slack: int = EXPIRY_SLACK

    @property
    def sync_interval(self) -> int:
        """How often last-seen goes back to SQL: a quarter of the idle timeout, a minute at most."""
        idle = self.idle_timeout
        return max(1, min(MAX_SYNC_INTERVAL, idle // 4 if idle else MAX_SYNC_INTERVAL))

    def expiry(self, created: float, now: float) -> int:
        """When Redis may forget a session created at ``created`` (epoch seconds, for EXPIREAT)."""
        return int(max(created + self.max_age, now)) + self.slack


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One session as Redis holds it (built at login, or rebuilt from SQL)."""

    username: str
    created: float
    last_seen: float
    access_jti: str = field(repr=False)
    refresh_jti: str = field(repr=False)
    previous_refresh_jti: str = field(repr=False)
    iat: int  # the current pair's JWT ``iat``
    ended: EndReason | None = None


# -- what the scripts answer --------------------------------------------------
@dataclass(frozen=True, slots=True)
class Miss:
    """Redis does not hold the session (or the user's set): rebuild it from SQL."""


MISS = Miss()


@dataclass(frozen=True, slots=True)
class Ended:
    """The session is over; ``just_now`` when this very call ended it (SQL must hear)."""

    reason: EndReason
    just_now: bool = False


@dataclass(frozen=True, slots=True)
class Live:
    """The guard's check passed; ``sync_due`` when last-seen should go back to SQL.

    ``created``: when the session began (the check says; 0 where unknown).
    """

    sync_due: bool = False
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class Reissue:
    """The access token that succeeds an expired one (the same for every asker)."""

    access_jti: str = field(repr=False)
    iat: int
    username: str


@dataclass(frozen=True, slots=True)
class Rotation:
    """A refresh's pair: new (``rotated``) or the same again within the grace window."""

    rotated: bool
    access_jti: str = field(repr=False)
    refresh_jti: str = field(repr=False)
    previous_refresh_jti: str = field(repr=False)
    iat: int
    username: str


@dataclass(frozen=True, slots=True)
class Opened:
    """A login's session is in Redis; these others ended on the way."""

    replaced: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Limited:
    """Over ``TOKENGATE_RATE_LIMIT``: refused, to be tried again in ``retry_after`` seconds."""

    retry_after: int


@dataclass(frozen=True, slots=True)
class Replayed:
    """The request's DPoP proof was seen before (its ``jti``): refused, nothing else done."""


REPLAYED = Replayed()


@dataclass(frozen=True, slots=True)
class ProofReplay:
    """A DPoP proof's replay key, noted in the check's own round trip for ``ttl`` seconds."""

    digest: str  # hex: the proof's key and jti hashed, never the client's own text
    ttl: int


@dataclass(frozen=True, slots=True)
class RateCount:
    """What a credential check counts: ``limit`` requests per ``window`` seconds, under ``ident``
    (``k`` for an API key, ``c:<client_id>`` for a service account's token)."""

    ident: str
    limit: int
    window: int


# -- what the API-key scripts answer (store/api_keys.py) -------------------------
@dataclass(frozen=True, slots=True)
class KeyLive:
    """The key is alive; ``sync_due`` when its last use should go back to SQL."""

    user_id: str
    username: str
    key_id: str
    scopes: str
    sync_due: bool = False


@dataclass(frozen=True, slots=True)
class KeyMiss:
    """Redis does not hold the key's state (or it is stale): rebuild it from SQL.

    ``version``: what the rebuild must find still there to write (see api_key_load.lua).
    """

    version: str = ""


@dataclass(frozen=True, slots=True)
class KeyUnknown:
    """No such key in SQL (remembered a while, so guesses cost no query each)."""


@dataclass(frozen=True, slots=True)
class KeyEnded:
    """Revoked (``revoked``, ``leaked``), its user disabled (``disabled``), or ``expired``."""

    why: str


CheckResult = Live | Ended | Miss | Limited | Replayed
KeyResult = KeyLive | KeyMiss | KeyUnknown | KeyEnded | Limited
ReissueResult = Reissue | Ended | Miss
RefreshResult = Rotation | Ended | Miss
LoginResult = Opened | Miss
