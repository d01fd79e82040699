"""One frozen settings object, read from the environment and ``.env``.

Every setting is a ``TOKENGATE_*`` variable (CONTRACT section 2). Reading is
explicit (``Settings.from_env()``), never at import, and every bad value is
reported on its own line naming the variable, so start-up fails once with the
whole list instead of one error at a time.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

from .sealing import decode_kek

PREFIX = "TOKENGATE_"
TOKEN_LOCATIONS = frozenset({"headers", "cookies"})
MIN_SECRET_BYTES = 32
ALGORITHMS = ("HS256", "EdDSA", "ES256", "RS256")
SAMESITE = ("Lax", "Strict", "None")
COOKIE_SECURE = ("auto", "true", "false")
DPOP_MODES = ("off", "allowed", "required")
# The DPoP proof algorithms one may allow: asymmetric only (dpop.SUPPORTED_ALGORITHMS, kept
# here too so that reading settings loads no crypto). A proof is signed by the client's own
# private key: ``none`` or an HMAC would let anyone who saw a proof make another.
DPOP_ALGORITHMS = ("ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256",
                   "PS384", "PS512")  # fmt: skip


class SettingsError(ValueError):
    """Raised with one line per bad variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Settings:
    """The service's configuration; durations are whole seconds."""

    secret_key: str | None = field(default=None, repr=False)
    # Wraps the signing keys stored in the database (sealing.py): 32 bytes, base64url.
    key_encryption_key: str | None = field(default=None, repr=False)
    # Earlier KEKs, which unwrap only: for moving to a new one (``keys rewrap``).
    old_key_encryption_key: tuple[str, ...] = field(default=(), repr=False)
    issuer: str = "tokengate"
    audience: str = "tokengate"
    access_ttl: int = 300
    refresh_ttl: int = 1_296_000
    idle_timeout: int = 1800
    session_max_age: int = 2_592_000
    refresh_grace: int = 10
    max_sessions: int = 0
    token_location: tuple[str, ...] = ("headers",)
    implicit_refresh: bool = False
    # How long after ``exp`` an expired access token may still be renewed (None: the grace).
    implicit_refresh_window: int | None = None
    leeway: int = 0
    allow_registration: bool = True
    password_min_length: int = 8
    login_max_failures: int = 10
    login_window: int = 900
    # Per client address (an IPv6 /64) in TOKENGATE_LOGIN_WINDOW, whatever the
    # username: failed logins, registrations and password-reset requests; 0 is no limit.
    address_max_failures: int = 20
    address_max_registrations: int = 10
    address_max_resets: int = 10
    # How long a device token (a device that logged in to the account) stays trusted.
    device_token_ttl: int = 15_552_000
    reset_ttl: int = 900
    # Device login (RFC 8628): how long a code waits for its confirmation, the polling interval.
    device_code_ttl: int = 600
    device_poll_interval: int = 5
    algorithm: str = "HS256"
    fresh_ttl: int = 900
    cookie_domain: str | None = None
    cookie_samesite: str = "Lax"
    # "auto": Secure unless the request came over plain http to localhost.
    cookie_secure: str = "auto"
    # The resource servers allowed to call /auth/introspect: (id, secret) pairs.
    introspection_clients: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    instance_dir: Path = Path("instance")
    # URLs may carry passwords: kept out of reprs like the key.
    database_url: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    redis_cluster: bool = False
    trusted_proxies: tuple[str, ...] = ()
    log_format: str = "text"
    # Let a session seen live a moment ago through without waiting for Redis
    # (store/near.py); every end then waits for each instance to drop it.
    # None (auto, the default): on where Redis is seen to keep what it holds
    # and lets this user use the tg:* channels; True: on, also where the
    # eviction settings cannot be read; False: off.
    near_cache: bool | None = None
    # API keys (docs/credentials.md): on or off, default and longest lifetime.
    api_keys: bool = True
    api_key_ttl: int = 7_776_000
    api_key_max_ttl: int = 31_536_000
    # Per API key and per service-account client: (requests, seconds), or None.
    rate_limit: tuple[int, int] | None = None
    # ``serve`` only (serving.py): how long a request's headers, then its body,
    # may take to arrive, and the open connections per worker.
    header_timeout: int = 10
    body_timeout: int = 30
    max_connections: int = 1000
    # DPoP (RFC 9449): off, allowed or required; the proof algorithms accepted; how far a
    # proof's iat may stand from the clock, either way; whether the server demands a nonce.
    dpop: str = "allowed"
    dpop_algorithms: tuple[str, ...] = ("ES256", "EdDSA")
    dpop_max_age: int = 60
    dpop_nonce: bool = False

    def __post_init__(self) -> None:
        problems = _check(self)
        if problems:
            raise SettingsError(problems)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) over a ``.env`` file.

        Real environment variables win over the file. Unknown ``TOKENGATE_*``
        names are refused, since a typo there would silently keep a default.
        """
        values: dict[str, str] = {}
        if dotenv is not None and dotenv.is_file():
            values.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        problems: list[str] = []
        for key, raw in values.items():
            if not key.startswith(PREFIX) or key.startswith(PREFIX + "TEST_"):
                continue
            name = key[len(PREFIX) :].lower()
            if name not in known:
                problems.append(f"{key}: unknown setting")
                continue
            try:
                kwargs[name] = _PARSERS.get(name, _text)(raw.strip())
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
        try:
            settings = cls(**kwargs)
        except SettingsError as exc:  # report these together with the parse errors
            problems += exc.problems
        if problems:
            raise SettingsError(problems)
        return settings

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, with the embedded SQLite default resolved."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.instance_dir / 'tokengate.db').resolve()}"

    @property
    def renewal_window(self) -> int:
        """Seconds after ``exp`` (and the leeway) during which implicit refresh renews a token."""
        if self.implicit_refresh_window is None:
            return self.refresh_grace
        return self.implicit_refresh_window

    @property
    def use_headers(self) -> bool:
        return "headers" in self.token_location

    @property
    def use_cookies(self) -> bool:
        return "cookies" in self.token_location


def _text(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _seconds(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"expected whole seconds, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _near_cache(raw: str) -> bool | None:
    """``auto`` (``None``), or a boolean."""
    if raw.lower() == "auto":
        return None
    try:
        return _bool(raw)
    except ValueError:
        raise ValueError(f"expected auto, true or false, got {raw!r}") from None


def _locations(raw: str) -> tuple[str, ...]:
    parts = tuple(sorted({p.strip().lower() for p in raw.split(",") if p.strip()}))
    if not parts or not set(parts) <= TOKEN_LOCATIONS:
        raise ValueError(f"expected headers, cookies or headers,cookies, got {raw!r}")
    return parts


def _algorithm(raw: str) -> str:
    for name in ALGORITHMS:
        if raw.lower() == name.lower():
            return name
    raise ValueError(f"expected one of {', '.join(ALGORITHMS)}, got {raw!r}")


def _samesite(raw: str) -> str:
    for name in SAMESITE:
        if raw.lower() == name.lower():
            return name
    raise ValueError(f"expected Lax, Strict or None, got {raw!r}")


def _cookie_secure(raw: str) -> str:
    lowered = raw.lower()
    if lowered == "auto":
        return "auto"
    return "true" if _bool(raw) else "false"


def _cookie_domain(raw: str) -> str:
    if not raw or any(ch in raw for ch in ' ;,=/\\"') or not raw.isascii():
        raise ValueError(f"expected a domain name such as example.com, got {raw!r}")
    return raw


def _clients(raw: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for part in raw.split(","):
        client_id, sep, secret = part.strip().partition(":")
        if not sep or not client_id or not secret:
            raise ValueError("expected id:secret pairs separated by commas")
        pairs.append((client_id, secret))
    return tuple(pairs)


def _keks(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 -- parsing the port is the check
    except ValueError:
        raise ValueError(
            "expected one URL (for a cluster: one node, with TOKENGATE_REDIS_CLUSTER=true)"
        ) from None
    return raw


def _networks(raw: str) -> tuple[str, ...]:
    """Addresses or CIDR ranges, comma-separated, each checked and kept in canonical form."""
    found: list[str] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            found.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ValueError(f"expected addresses or CIDR ranges, got {part!r}") from None
    return tuple(found)


def _log_format(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in {"text", "json"}:
        raise ValueError(f"expected text or json, got {raw!r}")
    return lowered


def _rate_limit(raw: str) -> tuple[int, int]:
    count, sep, window = raw.partition("/")
    try:
        parsed = int(count), int(window)
    except ValueError:
        parsed = (0, 0)
    if not sep or parsed[0] < 1 or parsed[1] < 1:
        raise ValueError(f"expected N/S (N requests in S seconds, both at least 1), got {raw!r}")
    return parsed


def _dpop(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in DPOP_MODES:
        raise ValueError(f"expected off, allowed or required, got {raw!r}")
    return lowered


def _dpop_algorithms(raw: str) -> tuple[str, ...]:
    """Names separated by spaces or commas, in any case, each kept once in canonical form."""
    canonical = {name.lower(): name for name in DPOP_ALGORITHMS}
    found: list[str] = []
    for part in raw.replace(",", " ").split():
        name = canonical.get(part.lower())
        if name is None:
            if part.lower() == "none" or part.upper().startswith("HS"):
                raise ValueError(
                    f"{part} is never accepted for DPoP proofs (never none nor an HMAC)"
                )
            raise ValueError(f"expected some of {', '.join(DPOP_ALGORITHMS)}, got {part!r}")
        if name not in found:
            found.append(name)
    if not found:
        raise ValueError("expected at least one algorithm, such as ES256 EdDSA")
    return tuple(found)


def _database_url(raw: str) -> str:
    if "://" not in raw:
        raise ValueError("expected an SQLAlchemy URL such as sqlite+aiosqlite:///path.db")
    return raw


_PARSERS: dict[str, Callable[[str], Any]] = {
    "access_ttl": _seconds,
    "refresh_ttl": _seconds,
    "idle_timeout": _seconds,
    "session_max_age": _seconds,
    "refresh_grace": _seconds,
    "implicit_refresh_window": _seconds,
    "max_sessions": _seconds,
    "leeway": _seconds,
    "password_min_length": _seconds,
    "login_max_failures": _seconds,
    "login_window": _seconds,
    "address_max_failures": _seconds,
    "address_max_registrations": _seconds,
    "address_max_resets": _seconds,
    "device_token_ttl": _seconds,
    "reset_ttl": _seconds,
    "device_code_ttl": _seconds,
    "device_poll_interval": _seconds,
    "fresh_ttl": _seconds,
    "header_timeout": _seconds,
    "body_timeout": _seconds,
    "max_connections": _seconds,
    "algorithm": _algorithm,
    "cookie_samesite": _samesite,
    "cookie_secure": _cookie_secure,
    "cookie_domain": _cookie_domain,
    "introspection_clients": _clients,
    "old_key_encryption_key": _keks,
    "implicit_refresh": _bool,
    "allow_registration": _bool,
    "redis_cluster": _bool,
    "near_cache": _near_cache,
    "trusted_proxies": _networks,
    "token_location": _locations,
    "instance_dir": Path,
    "redis_url": _redis_url,
    "database_url": _database_url,
    "log_format": _log_format,
    "api_keys": _bool,
    "api_key_ttl": _seconds,
    "api_key_max_ttl": _seconds,
    "rate_limit": _rate_limit,
    "dpop": _dpop,
    "dpop_algorithms": _dpop_algorithms,
    "dpop_max_age": _seconds,
    "dpop_nonce": _bool,
}


def _check(s: Settings) -> list[str]:
    problems: list[str] = []

    def bad(name: str, why: str) -> None:
        problems.append(f"{PREFIX}{name.upper()}: {why}")

    if s.secret_key is not None and len(s.secret_key.encode()) < MIN_SECRET_BYTES:
        bad("secret_key", f"must be at least {MIN_SECRET_BYTES} bytes")
    for name, keks in (
        ("key_encryption_key", () if s.key_encryption_key is None else (s.key_encryption_key,)),
        ("old_key_encryption_key", s.old_key_encryption_key),
    ):
        for kek in keks:
            try:
                decode_kek(kek)
            except ValueError as exc:  # the message never quotes the value: it is a secret
                bad(name, str(exc))
                break
    for name in (
        "access_ttl", "refresh_ttl", "session_max_age", "login_window", "reset_ttl",
        "header_timeout", "body_timeout", "device_token_ttl", "device_code_ttl",
        "api_key_ttl", "api_key_max_ttl",
    ):  # fmt: skip
        if getattr(s, name) < 1:
            bad(name, "must be at least 1 second")
    if s.max_connections < 1:
        bad("max_connections", "must be at least 1")
    if s.access_ttl > s.refresh_ttl:
        bad("access_ttl", "must not be longer than TOKENGATE_REFRESH_TTL")
    if s.api_key_ttl > s.api_key_max_ttl:
        bad("api_key_ttl", "must not be longer than TOKENGATE_API_KEY_MAX_TTL")
    if s.login_max_failures < 1:
        bad("login_max_failures", "must be at least 1")
    for name in ("address_max_failures", "address_max_registrations", "address_max_resets"):
        if getattr(s, name) < 0:
            bad(name, "must not be negative (0 is no limit)")
    if s.password_min_length < 1:
        bad("password_min_length", "must be at least 1")
    if s.redis_cluster and (
        s.redis_url is None
        or s.redis_url.startswith("unix://")
        or urlsplit(s.redis_url).path not in ("", "/", "/0")
    ):
        bad(
            "redis_cluster", "needs TOKENGATE_REDIS_URL naming one node (redis://, rediss://, db 0)"
        )
    if s.algorithm not in ALGORITHMS:
        bad("algorithm", f"expected one of {', '.join(ALGORITHMS)}")
    if s.secret_key is not None and s.algorithm != "HS256":
        bad("secret_key", f"is an HS256 key; unset it to use TOKENGATE_ALGORITHM={s.algorithm}")
    if s.cookie_samesite not in SAMESITE:
        bad("cookie_samesite", "expected Lax, Strict or None")
    if s.cookie_secure not in COOKIE_SECURE:
        bad("cookie_secure", "expected auto, true or false")
    if s.cookie_samesite == "None" and s.cookie_secure != "true":
        bad(
            "cookie_samesite",
            "None needs TOKENGATE_COOKIE_SECURE=true (browsers drop SameSite=None cookies "
            "that are not Secure)",
        )
    if not s.token_location or not set(s.token_location) <= TOKEN_LOCATIONS:
        bad("token_location", "expected headers, cookies or headers,cookies")
    if s.dpop not in DPOP_MODES:
        bad("dpop", "expected off, allowed or required")
    if not s.dpop_algorithms or not set(s.dpop_algorithms) <= set(DPOP_ALGORITHMS):
        bad("dpop_algorithms", f"expected some of {', '.join(DPOP_ALGORITHMS)}")
    if s.dpop_max_age < 1:
        bad("dpop_max_age", "must be at least 1 second")
    return problems
