"""Pure rules of private_key_jwt client authentication (RFC 7523 sections 2.2 and 3).

A client registers the public half of its keys as a JWKS; it then proves
itself with a JWT it signs (the *client assertion*). Nothing here does I/O
or reads a clock: the registered keys, the accepted audiences and ``now`` are
passed in. The one rule that needs shared state, a ``jti`` used once, is the
caller's (``client_auth.py``, a Redis ``SET NX``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from ..errors import InvalidClient

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# RFC 7523 section 3 leaves the lifetime to the server: an assertion may
# expire at most this many seconds after ``now``, so a stolen one is of
# little use and its jti need not be kept long.
MAX_ASSERTION_LIFETIME = 300
MAX_ASSERTION_LENGTH = 8192
MAX_KEYS = 20
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "jti")
# The one algorithm each kind of public key signs with: a key's type decides
# it, never the assertion's header (so "none" and HS256 keyed with a public
# key are refused before any signature check).
_PINNED = {("RSA", None): "RS256", ("EC", "P-256"): "ES256", ("EC", "P-384"): "ES384",
           ("OKP", "Ed25519"): "EdDSA"}  # fmt: skip
# A PyJWT of its own: no algorithm beyond the pinned one is ever tried.
_CODEC = jwt.PyJWT()


@dataclass(frozen=True, slots=True)
class AssertionKey:
    """One registered public key: its ``kid`` (if any) and the algorithm it is pinned to."""

    kid: str | None
    algorithm: str
    key: Any = field(repr=False)


@dataclass(frozen=True, slots=True)
class AssertionClaims:
    """What a checked assertion says that the caller still needs: its ``jti`` and ``exp``."""

    client_id: str
    jti: str
    exp: int


def parse_jwks(raw: str | Mapping[str, Any]) -> tuple[AssertionKey, ...]:
    """The public keys of a JWKS (JSON text or a parsed object), each pinned to its algorithm.

    Raises ``ValueError`` with one line saying what is wrong: not a JWKS, no
    keys, a private or symmetric key, a key type with no pinned algorithm, an
    ``alg`` member other than the pinned one.
    """
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, RecursionError):
        raise ValueError("the JWKS is not valid JSON") from None
    keys = data.get("keys") if isinstance(data, Mapping) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError('the JWKS needs a non-empty "keys" list')
    if len(keys) > MAX_KEYS:
        raise ValueError(f"the JWKS holds more than {MAX_KEYS} keys")
    parsed: list[AssertionKey] = []
    for jwk in keys:
        if not isinstance(jwk, dict):
            raise ValueError("every key of the JWKS must be a JSON object")
        if "d" in jwk or jwk.get("kty") == "oct":
            raise ValueError("the JWKS must hold public keys only (a private or shared key leaked)")
        kty, crv = jwk.get("kty"), jwk.get("crv")
        algorithm = _PINNED.get((str(kty), None if kty == "RSA" else str(crv)))
        if algorithm is None:
            raise ValueError(f"unsupported key type {kty!r} (curve {crv!r}): use RSA, P-256, "
                             "P-384 or Ed25519")  # fmt: skip
        if jwk.get("alg") not in (None, algorithm):
            raise ValueError(f"a {kty} key signs with {algorithm} here, not {jwk.get('alg')!r}")
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise ValueError('a key\'s "kid" must be a string')
        try:
            key = jwt.PyJWK(jwk, algorithm=algorithm).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise ValueError(f"a key of the JWKS cannot be read: {exc}") from None
        parsed.append(AssertionKey(kid, algorithm, key))
    return tuple(parsed)


def _segment(assertion: str, index: int) -> dict[str, Any] | None:
    """A JSON segment (0: header, 1: claims) of a JWT, read without trusting it."""
    parts = assertion.split(".")
    if len(parts) != 3:
        return None
    raw = parts[index]
    try:
        found = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    return found if isinstance(found, dict) else None


def claimed_client_id(assertion: str) -> str | None:
    """The client an assertion claims to come from (its ``iss``), before any check.

    It only says which client's keys to check the assertion with.
    """
    if len(assertion) > MAX_ASSERTION_LENGTH:
        return None
    claims = _segment(assertion, 1)
    iss = claims.get("iss") if claims is not None else None
    return iss if isinstance(iss, str) and iss else None


def check_assertion(
    assertion: str,
    keys: Iterable[AssertionKey],
    *,
    client_id: str,
    audiences: Iterable[str],
    now: float,
    leeway: int = 0,
) -> AssertionClaims:
    """Check a client assertion against the client's registered keys (RFC 7523 section 3).

    The signature must verify with a registered key under that key's pinned
    algorithm; ``iss`` and ``sub`` must be ``client_id``; ``aud`` must name
    one of ``audiences`` (the token endpoint's URL, or the issuer); ``exp``
    must be in the future and at most ``MAX_ASSERTION_LIFETIME`` seconds
    ahead; ``nbf``, if present, reached; ``jti`` present. Anything else
    raises ``InvalidClient``.
    """
    header = _segment(assertion, 0) if len(assertion) <= MAX_ASSERTION_LENGTH else None
    if header is None:
        raise InvalidClient("The client assertion is not a JWT.")
    alg, kid = header.get("alg"), header.get("kid")
    candidates = [
        k for k in keys if k.algorithm == alg and (kid is None or k.kid is None or k.kid == kid)
    ]
    if not candidates:
        raise InvalidClient(
            "The client assertion is not signed by a registered key with its algorithm."
        )
    claims: dict[str, Any] | None = None
    for key in candidates:
        try:
            claims = _CODEC.decode(
                assertion, key.key, algorithms=[key.algorithm], audience=list(audiences),
                options={"require": list(REQUIRED_CLAIMS), "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False, "verify_iss": False},
            )  # fmt: skip
        except jwt.InvalidAudienceError:
            raise InvalidClient("The client assertion's aud is not this token endpoint.") from None
        except jwt.PyJWTError:
            continue
        break
    if claims is None:
        raise InvalidClient("The client assertion's signature or claims are invalid.")
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise InvalidClient("The client assertion's iss and sub must be the client_id.")
    exp, nbf, jti = claims.get("exp"), claims.get("nbf"), claims.get("jti")
    if type(exp) is not int or (nbf is not None and type(nbf) is not int):
        raise InvalidClient("The client assertion's times must be integers.")
    if exp <= now - leeway:
        raise InvalidClient("The client assertion has expired.")
    if exp > now + MAX_ASSERTION_LIFETIME + leeway:
        raise InvalidClient(
            f"The client assertion's exp may be at most {MAX_ASSERTION_LIFETIME} seconds ahead."
        )
    if nbf is not None and nbf > now + leeway:
        raise InvalidClient("The client assertion is not valid yet.")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise InvalidClient("The client assertion needs a jti.")
    return AssertionClaims(client_id, jti, exp)
