"""Pure minting and verification of tokengate's JWTs.

Nothing here does I/O or reads a clock: the key, the issuer, the audience and
``now`` are passed in, so every rule is testable without an app. Minting is
deterministic: the same claims give the same token bytes, which is what lets
the session store hand out the *same* successor pair again (refresh grace,
implicit refresh) from a few stored ids instead of storing tokens.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, ClassVar

import jwt

from .errors import InvalidToken, TokenExpired

ALGORITHM = "HS256"
# A real token is a few hundred bytes; refuse anything absurd before parsing it.
MAX_TOKEN_LENGTH = 8192
REQUIRED_CLAIMS = ("iss", "aud", "sub", "jti", "iat", "nbf", "exp")


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
    return jwt.encode(claims, cfg.key, algorithm=ALGORITHM, headers={"typ": kind.typ})


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
        decoded = jwt.decode_complete(
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
    if claims["nbf"] > now + cfg.leeway:
        raise InvalidToken("The token is not valid yet.")
    if claims["exp"] <= now - cfg.leeway:
        raise TokenExpired(claims=claims)
    return claims
