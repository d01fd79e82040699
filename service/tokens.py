"""Pure minting and verification of tokengate's JWTs.

Nothing here does I/O or reads a clock: the keys, the issuer, the audience and
``now`` are passed in, so every rule is testable without an app. Minting is
deterministic for HS256, EdDSA and RS256: the same claims give the same token
bytes, which is what lets the session store hand out the *same* successor pair
again (refresh grace, implicit refresh) from a few stored ids instead of
storing tokens. (ES256 signatures are randomised: the pair minted again has
the same claims and verifies alike, in other bytes.)

Every token names its key in the JOSE ``kid`` header; the key set maps kids to
keys, all of one pinned algorithm.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jwt
from jwt.algorithms import Algorithm, get_default_algorithms

from .errors import InvalidToken, TokenExpired

ALGORITHMS = ("HS256", "EdDSA", "ES256", "RS256")
# A real token is a few hundred bytes; refuse anything absurd before parsing it.
MAX_TOKEN_LENGTH = 8192
REQUIRED_CLAIMS = ("iss", "aud", "sub", "jti", "iat", "nbf", "exp")
# Claims a token's own fields fill in; an application's claims hook cannot set them.
REGISTERED_CLAIMS = frozenset(
    {*REQUIRED_CLAIMS, "sid", "name", "auth_time", "scope", "purpose", "typ",
     "client_id", "azp", "acr", "amr", "cnf", "act", "may_act"}
)  # fmt: skip
TIME_CLAIMS = ("iat", "nbf", "exp", "auth_time")
# Times are whole epoch seconds that every JSON parser reads exactly (2**53).
# NaN, infinities, floats such as 1e300 and booleans all compare in ways that
# would let a signed token slip past the exp/nbf checks, so they are refused.
MAX_TIME = 2**53


def is_time(value: Any) -> bool:
    """Whether ``value`` is a valid JWT time: a non-negative integer below 2**53."""
    return type(value) is int and 0 <= value < MAX_TIME


# The shape of the ids tokengate puts in its tokens: ``sub`` a user id, ``sid`` a session id.
USER_ID = re.compile(r"^[1-9][0-9]{0,18}$")
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass(frozen=True, slots=True)
class TokenKind:
    """A kind of token: its JOSE ``typ`` and its extra required claims."""

    typ: str
    extra_claims: tuple[str, ...] = ()


class AccessToken:
    kind: ClassVar[TokenKind] = TokenKind("at+jwt", ("sid", "name", "auth_time"))


class RefreshToken:
    kind: ClassVar[TokenKind] = TokenKind("rt+jwt", ("sid",))


class PurposeToken:
    kind: ClassVar[TokenKind] = TokenKind("pt+jwt", ("purpose",))


class DeviceToken:  # a device that logged in to the account sub/name; jti names the device
    kind: ClassVar[TokenKind] = TokenKind("dt+jwt", ("name",))


@dataclass(frozen=True, slots=True)
class PreparedKey:
    """A key as PyJWT's ``algorithm`` prepares it (checked and converted), done once."""

    algorithm: str
    value: Any = field(repr=False)


class _OncePrepared(Algorithm):
    """One of PyJWT's algorithms that takes a ``PreparedKey`` as it is.

    PyJWT runs ``prepare_key`` on every token it signs or checks (for HMAC: the
    PEM, SSH and DER checks, a third of an HS256 encode); each ``SigningKey``
    prepares its keys once instead. Anything else is prepared as PyJWT does.
    """

    def __init__(self, name: str, inner: Algorithm) -> None:
        self.name = name
        self.inner = inner

    def prepare_key(self, key: Any) -> Any:
        if isinstance(key, PreparedKey):
            if key.algorithm != self.name:
                raise jwt.InvalidKeyError("The key was prepared for another algorithm.")
            return key.value
        return self.inner.prepare_key(key)

    def sign(self, msg: bytes, key: Any) -> bytes:
        return self.inner.sign(msg, key)

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        return self.inner.verify(msg, key, sig)

    def check_key_length(self, key: Any) -> str | None:
        return self.inner.check_key_length(key)

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise NotImplementedError


def _codec() -> jwt.PyJWT:
    """PyJWT with its algorithms wrapped to take prepared keys; rules and checks unchanged."""
    codec = jwt.PyJWT()
    for name, algorithm in get_default_algorithms().items():
        if name != "none":
            codec._jws.unregister_algorithm(name)
            codec._jws.register_algorithm(name, _OncePrepared(name, algorithm))
    return codec


# Every token is signed and checked through this codec.
_CODEC = _codec()


def prepare(algorithm: str, key: Any) -> Any:
    """``key`` prepared once for ``algorithm``; the key as given if PyJWT refuses it
    (it then fails when used, as it always did)."""
    try:
        return PreparedKey(algorithm, get_default_algorithms()[algorithm].prepare_key(key))
    except (KeyError, jwt.PyJWTError, TypeError, ValueError):
        return key


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One key: its ``kid``, and the objects PyJWT signs and verifies with.

    For HS256 both are the secret's bytes; otherwise the private and the
    public key (``cryptography`` objects, parsed once, not per token).
    ``active_at`` (epoch seconds) is when the key starts signing. Both are
    prepared for PyJWT once, here (``prepared_signing``, ``prepared_verifying``).
    """

    kid: str
    algorithm: str
    signing: Any = field(repr=False)
    verifying: Any = field(repr=False)
    active_at: float = 0.0
    prepared_signing: Any = field(init=False, repr=False, compare=False)
    prepared_verifying: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prepared_signing", prepare(self.algorithm, self.signing))
        verifying = (
            self.prepared_signing
            if self.verifying is self.signing
            else prepare(self.algorithm, self.verifying)
        )
        object.__setattr__(self, "prepared_verifying", verifying)


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys of one algorithm: the newest active one signs, every one verifies."""

    algorithm: str
    keys: tuple[SigningKey, ...]
    by_kid: dict[str, SigningKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a key set needs at least one key")
        if any(k.algorithm != self.algorithm for k in self.keys):
            raise ValueError("every key of a key set has its algorithm")
        ordered = tuple(sorted(self.keys, key=lambda k: (k.active_at, k.kid)))
        object.__setattr__(self, "keys", ordered)
        object.__setattr__(self, "by_kid", {k.kid: k for k in ordered})

    def signing_key(self, at: float) -> SigningKey:
        """The key that signs at ``at``: the newest already active (else the oldest)."""
        chosen = self.keys[0]
        for key in self.keys:
            if key.active_at <= at:
                chosen = key
        return chosen


def hmac_kid(secret: bytes) -> str:
    """A ``kid`` for a configured HMAC secret that reveals nothing about it."""
    digest = hmac.new(secret, b"tokengate key id", hashlib.sha256).digest()
    return "hs-" + base64.urlsafe_b64encode(digest[:12]).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class SigningConfig:
    """Everything minting and checking need besides the claims."""

    keys: KeySet
    issuer: str
    audience: str
    leeway: int = 0

    @classmethod
    def from_secret(
        cls, secret: str | bytes, issuer: str, audience: str, leeway: int = 0
    ) -> SigningConfig:
        """HS256 with one configured secret, its ``kid`` derived from it."""
        raw = secret.encode() if isinstance(secret, str) else secret
        key = SigningKey(hmac_kid(raw), "HS256", raw, raw)
        return cls(KeySet("HS256", (key,)), issuer, audience, leeway)


def new_jti() -> str:
    """A fresh unguessable token id."""
    return secrets.token_urlsafe(16)


def new_session_id() -> str:
    """A fresh unguessable session id that never starts with ``-``.

    People type session ids on command lines (``tokengate sessions end ID``),
    where one starting with ``-`` would read as an option.
    """
    while (sid := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return sid


def mint(
    cfg: SigningConfig,
    kind: TokenKind,
    *,
    sub: str,
    jti: str,
    iat: int,
    ttl: int,
    extra: dict[str, Any] | None = None,
) -> str:
    """Sign a token of ``kind`` issued at ``iat`` (epoch seconds) living ``ttl`` seconds.

    ``extra`` carries the kind's own claims (``sid``, ``name``, ``purpose``...).
    The key is the one of ``cfg.keys`` that signs at ``iat``, so minting the
    same claims again picks the same key.
    """
    claims: dict[str, Any] = {
        "iss": cfg.issuer,
        "aud": cfg.audience,
        "sub": sub,
        "jti": jti,
        "iat": iat,
        "nbf": iat,
        "exp": iat + ttl,
    }
    if extra:
        claims.update(extra)
    key = cfg.keys.signing_key(iat)
    headers = {"typ": kind.typ, "kid": key.kid}
    return _CODEC.encode(claims, key.prepared_signing, algorithm=key.algorithm, headers=headers)


def _header_kid(token: str) -> str | None:
    """The ``kid`` of the token's JOSE header, read without trusting it yet."""
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def verify(cfg: SigningConfig, kind: TokenKind, token: str, *, now: float) -> dict[str, Any]:
    """Check ``token`` fully and return its claims.

    Raises :class:`TokenExpired` (carrying the otherwise valid claims) when the
    only fault is ``exp``, and :class:`InvalidToken` for anything else: bad
    shape or signature, an unknown ``kid``, another algorithm, wrong ``typ``,
    ``iss`` or ``aud``, a missing claim, a time claim that is not an integer,
    ``nbf`` in the future.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("The token is malformed.")
    kid = _header_kid(token)
    key = cfg.keys.by_kid.get(kid) if kid is not None else None
    if key is None:
        raise InvalidToken("The token is not signed by a key of this service.")
    algorithm = cfg.keys.algorithm
    try:
        # One full parse: the signature is checked with the pinned algorithm
        # only (PyJWT refuses any other, "none" included, so an HS256 token
        # keyed with a public key never meets an HMAC check), then the header
        # is read. PyJWT checks exp/nbf against its own clock; we check them
        # against ``now`` below, so the clock stays injectable.
        decoded = _CODEC.decode_complete(
            token,
            key.prepared_verifying,
            algorithms=[algorithm],
            audience=cfg.audience,
            issuer=cfg.issuer,
            options={
                "require": list(REQUIRED_CLAIMS),
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError:
        raise InvalidToken("The token is invalid.") from None
    header, claims = decoded["header"], decoded["payload"]
    if header.get("alg") != algorithm:
        raise InvalidToken("The token is signed with an algorithm that is not accepted.")
    if header.get("typ") != kind.typ:
        raise InvalidToken("The token is not of the kind this endpoint accepts.")
    if not isinstance(claims, dict):
        raise InvalidToken("The token is malformed.")
    for name in (*REQUIRED_CLAIMS, *kind.extra_claims):
        if name not in claims:
            raise InvalidToken("The token lacks a required claim.")
    for name in TIME_CLAIMS:
        if name in claims and not is_time(claims[name]):
            raise InvalidToken("The token has a malformed time claim.")
    if "scope" in claims and not isinstance(claims["scope"], str):
        raise InvalidToken("The token has a malformed claim.")
    for name in ("sub", "sid", "jti", "name", "purpose"):
        if name in claims and (not isinstance(claims[name], str) or not claims[name]):
            raise InvalidToken("The token has a malformed claim.")
    check_ids(claims)
    check_times(cfg, claims, now=now)
    return claims


def check_times(cfg: SigningConfig, claims: dict[str, Any], *, now: float) -> None:
    """The checks of a verified token that depend on ``now``: ``nbf`` and ``exp``."""
    if claims["nbf"] > now + cfg.leeway:
        raise InvalidToken("The token is not valid yet.")
    if claims["exp"] <= now - cfg.leeway:
        raise TokenExpired(claims=claims)


def check_ids(claims: dict[str, Any]) -> None:
    """The one check of the id claims' shape: ``sub`` a user id, ``sid`` a session id.

    Our own tokens always pass; a token that fails was not minted here, and its
    ids must never reach a Redis key or a query.
    """
    if not USER_ID.match(claims["sub"]) or (
        "sid" in claims and not SESSION_ID.match(claims["sid"])
    ):
        raise InvalidToken("The token has a malformed claim.")


def seconds_left(iat: int, ttl: int, now: float) -> int:
    """Whole seconds until a token issued at ``iat`` living ``ttl`` seconds expires."""
    return max(0, iat + ttl - int(now))


@dataclass(frozen=True, slots=True)
class Grant:
    """The ids and issue time of one token pair: the same grant mints the same tokens.

    This is what the session store keeps instead of tokens. ``iat`` is the
    pair's JWT ``iat`` claim (epoch seconds), named as the claim is.
    """

    user_id: str
    username: str
    session_id: str
    access_jti: str
    refresh_jti: str
    iat: int
    # The RFC 7638 thumbprint of the DPoP key both tokens are bound to (``cnf.jkt``).
    jkt: str | None = None


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    session_id: str
    # A password login's answer also carries the device's token (throttle.py).
    device_token: str | None = None
    token_type: str = "Bearer"  # noqa: S105 - "DPoP" for a bound pair (RFC 9449 section 5)

    def __repr__(self) -> str:  # tokens never appear in reprs or logs
        return f"TokenPair(session_id={self.session_id!r}, expires_in={self.expires_in})"

    def to_json(self) -> dict[str, Any]:
        device = {} if self.device_token is None else {"device_token": self.device_token}
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "refresh_expires_in": self.refresh_expires_in,
            "session_id": self.session_id,
            **device,
        }


def mint_access(
    cfg: SigningConfig, *, user_id: str, username: str, session_id: str, jti: str, iat: int,
    ttl: int, claims: Mapping[str, Any],
) -> str:  # fmt: skip
    """The access token of a session, issued at ``iat``.

    ``claims`` are the access token's own: ``auth_time``, ``scope`` and the
    application's (see ``login_claims``); the ids and times always win.
    """
    return mint(
        cfg, AccessToken.kind, sub=user_id, jti=jti, iat=iat, ttl=ttl,
        extra={**claims, "sid": session_id, "name": username},
    )  # fmt: skip


def mint_pair(
    cfg: SigningConfig, grant: Grant, claims: Mapping[str, Any], *, access_ttl: int,
    refresh_ttl: int, now: float,
) -> TokenPair:  # fmt: skip
    """The token pair of ``grant``, with the lifetimes left at ``now``.

    A grant bound to a DPoP key binds both tokens: ``cnf.jkt`` in each.
    """
    bound = {} if grant.jkt is None else {"cnf": {"jkt": grant.jkt}}
    access = mint_access(
        cfg, user_id=grant.user_id, username=grant.username, session_id=grant.session_id,
        jti=grant.access_jti, iat=grant.iat, ttl=access_ttl, claims={**claims, **bound},
    )  # fmt: skip
    refresh = mint(
        cfg, RefreshToken.kind, sub=grant.user_id, jti=grant.refresh_jti, iat=grant.iat,
        ttl=refresh_ttl, extra={"sid": grant.session_id, **bound},
    )  # fmt: skip
    return TokenPair(
        access_token=access,
        refresh_token=refresh,
        expires_in=seconds_left(grant.iat, access_ttl, now),
        refresh_expires_in=seconds_left(grant.iat, refresh_ttl, now),
        session_id=grant.session_id,
        token_type="Bearer" if grant.jkt is None else "DPoP",
    )


def login_claims(auth_time: int, scopes: Iterable[str]) -> dict[str, Any]:
    """An access token's claims about the login: ``auth_time``, and ``scope`` if any."""
    claims: dict[str, Any] = {"auth_time": auth_time}
    names = sorted(set(scopes))
    if names:
        claims["scope"] = " ".join(names)
    return claims


# What an access token re-issued without a login or refresh does not take over.
_REISSUED = frozenset({*REQUIRED_CLAIMS, "sid", "name"})


def carried_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The claims an access token re-issued from another (implicit refresh) keeps."""
    return {k: v for k, v in claims.items() if k not in _REISSUED}
