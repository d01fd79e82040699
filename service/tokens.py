"""Pure minting and verification of tokengate's JWTs.

Nothing here does I/O or reads a clock: the key, the issuer, the audience and
``now`` are passed in, so every rule is testable without an app. Minting is
deterministic: the same claims give the same token bytes, which is what lets
the session store hand out the *same* successor pair again (refresh grace,
implicit refresh) from a few stored ids instead of storing tokens.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, ClassVar

import jwt
from jwt.algorithms import Algorithm, get_default_algorithms

from .errors import InvalidToken, TokenExpired

ALGORITHM = "HS256"
# A real token is a few hundred bytes; refuse anything absurd before parsing it.
MAX_TOKEN_LENGTH = 8192
REQUIRED_CLAIMS = ("iss", "aud", "sub", "jti", "iat", "nbf", "exp")
# The shape of the ids tokengate puts in its tokens: ``sub`` a user id, ``sid`` a session id.
USER_ID = re.compile(r"^[1-9][0-9]{0,18}$")
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass(frozen=True, slots=True)
class TokenKind:
    """A kind of token: its JOSE ``typ`` and its extra required claims."""

    typ: str
    extra_claims: tuple[str, ...] = ()


class AccessToken:
    kind: ClassVar[TokenKind] = TokenKind("at+jwt", ("sid", "name"))


class RefreshToken:
    kind: ClassVar[TokenKind] = TokenKind("rt+jwt", ("sid",))


class PurposeToken:
    kind: ClassVar[TokenKind] = TokenKind("pt+jwt", ("purpose",))


@dataclass(frozen=True, slots=True)
class SigningConfig:
    """Everything minting and checking need besides the claims."""

    key: str
    issuer: str
    audience: str
    leeway: int = 0


class _PreparedKeys(Algorithm):
    """One of PyJWT's algorithms, preparing each key once instead of on every call.

    PyJWT runs ``prepare_key`` (for HMAC: PEM and SSH-key regexes over the
    key) for every token it signs or checks. The prepared form of a key never
    changes, so it is kept, by key, for the keys this process uses.
    """

    def __init__(self, inner: Algorithm) -> None:
        self.inner = inner
        self.prepared: dict[str | bytes, Any] = {}

    def prepare_key(self, key: Any) -> Any:
        if not isinstance(key, str | bytes):
            return self.inner.prepare_key(key)
        prepared = self.prepared.get(key)
        if prepared is None:
            prepared = self.inner.prepare_key(key)
            if len(self.prepared) >= 64:  # a handful of keys in real use
                self.prepared.clear()
            self.prepared[key] = prepared
        return prepared

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


def _prepared_jwt() -> jwt.PyJWT:
    codec = jwt.PyJWT()
    for name, algorithm in get_default_algorithms().items():
        if name != "none":
            codec._jws.unregister_algorithm(name)
            codec._jws.register_algorithm(name, _PreparedKeys(algorithm))
    return codec


# The codec every token goes through: PyJWT's, with keys prepared once.
_codec = _prepared_jwt()


def new_jti() -> str:
    """A fresh unguessable token id."""
    return secrets.token_urlsafe(16)


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
    return _codec.encode(claims, cfg.key, algorithm=ALGORITHM, headers={"typ": kind.typ})


def verify(cfg: SigningConfig, kind: TokenKind, token: str, *, now: float) -> dict[str, Any]:
    """Check ``token`` fully and return its claims.

    Raises :class:`TokenExpired` (carrying the otherwise valid claims) when the
    only fault is ``exp``, and :class:`InvalidToken` for anything else: bad
    shape or signature, another algorithm, wrong ``typ``, ``iss`` or ``aud``,
    a missing claim, ``nbf`` in the future.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("The token is malformed.")
    try:
        # One parse: the signature is checked with the pinned algorithm only
        # (PyJWT refuses any other, "none" included), then the header is read.
        # PyJWT checks exp/nbf against its own clock; we check them against
        # ``now`` below, so the clock stays injectable.
        decoded = _codec.decode_complete(
            token,
            cfg.key,
            algorithms=[ALGORITHM],
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
    if header.get("alg") != ALGORITHM:
        raise InvalidToken("The token is signed with an algorithm that is not accepted.")
    if header.get("typ") != kind.typ:
        raise InvalidToken("The token is not of the kind this endpoint accepts.")
    if not isinstance(claims, dict):
        raise InvalidToken("The token is malformed.")
    for name in (*REQUIRED_CLAIMS, *kind.extra_claims):
        if name not in claims:
            raise InvalidToken("The token lacks a required claim.")
    for name in ("iat", "nbf", "exp"):
        if not isinstance(claims[name], int | float) or isinstance(claims[name], bool):
            raise InvalidToken("The token has a malformed time claim.")
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


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    session_id: str

    def __repr__(self) -> str:  # tokens never appear in reprs or logs
        return f"TokenPair(session_id={self.session_id!r}, expires_in={self.expires_in})"

    def to_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_expires_in": self.refresh_expires_in,
            "session_id": self.session_id,
        }


def mint_access(
    cfg: SigningConfig, *, user_id: str, username: str, session_id: str, jti: str, iat: int,
    ttl: int,
) -> str:  # fmt: skip
    """The access token of a session, issued at ``iat``."""
    return mint(
        cfg, AccessToken.kind, sub=user_id, jti=jti, iat=iat, ttl=ttl,
        extra={"sid": session_id, "name": username},
    )  # fmt: skip


def mint_pair(
    cfg: SigningConfig, grant: Grant, *, access_ttl: int, refresh_ttl: int, now: float
) -> TokenPair:
    """The token pair of ``grant``, with the lifetimes left at ``now``."""
    access = mint_access(
        cfg, user_id=grant.user_id, username=grant.username, session_id=grant.session_id,
        jti=grant.access_jti, iat=grant.iat, ttl=access_ttl,
    )  # fmt: skip
    refresh = mint(
        cfg, RefreshToken.kind, sub=grant.user_id, jti=grant.refresh_jti, iat=grant.iat,
        ttl=refresh_ttl, extra={"sid": grant.session_id},
    )  # fmt: skip
    return TokenPair(
        access_token=access,
        refresh_token=refresh,
        expires_in=seconds_left(grant.iat, access_ttl, now),
        refresh_expires_in=seconds_left(grant.iat, refresh_ttl, now),
        session_id=grant.session_id,
    )
