"""The client's DPoP key and proofs (RFC 9449), as pure functions: no I/O, ``now`` passed in.

A ``ProofKey`` is a P-256 (``ES256``, the default) or Ed25519 (``EdDSA``) key
pair; it is kept as a JSON-able private JWK beside the tokens
(``key_to_json`` / ``key_from_json``) and signs one proof per request with
``make_proof``. Signing needs the ``cryptography`` package, which the base
install (httpx and filelock) does not carry: ``pip install
"quart-tokengate[dpop]"``. Without it, importing this module still works and
only using a key raises :class:`DPoPUnavailable`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    HAVE_CRYPTOGRAPHY = True
except ImportError:  # the base install: DPoP is an extra
    HAVE_CRYPTOGRAPHY = False

ALGORITHMS = ("ES256", "EdDSA")
MISSING = 'DPoP needs the cryptography package: pip install "quart-tokengate[dpop]"'
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


class DPoPUnavailable(ImportError):
    """DPoP was asked for and ``cryptography`` is not installed."""

    def __init__(self) -> None:
        super().__init__(MISSING)


class DPoPKeyError(ValueError):
    """A stored DPoP key is malformed (the token file was edited or damaged)."""


def _need_cryptography() -> None:
    if not HAVE_CRYPTOGRAPHY:
        raise DPoPUnavailable


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: Any, size: int) -> bytes:
    if not isinstance(text, str) or not _B64URL.match(text):
        raise DPoPKeyError("The stored DPoP key is malformed.")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise DPoPKeyError("The stored DPoP key is malformed.") from None
    if len(raw) != size:
        raise DPoPKeyError("The stored DPoP key is malformed.")
    return raw


@dataclass(frozen=True, slots=True)
class ProofKey:
    """A DPoP key pair: its algorithm, the private key, the public JWK and its thumbprint.

    ``jkt`` is the RFC 7638 thumbprint the service puts in a bound token's
    ``cnf.jkt``. The private key never appears in a repr.
    """

    algorithm: str
    private_key: Any = field(repr=False)
    public_jwk: dict[str, str] = field(compare=False)
    jkt: str

    @classmethod
    def from_private_key(cls, private_key: Any) -> ProofKey:
        """Wrap a ``cryptography`` P-256 or Ed25519 private key."""
        _need_cryptography()
        if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
            private_key.curve, ec.SECP256R1
        ):
            numbers = private_key.public_key().public_numbers()
            jwk = {
                "kty": "EC", "crv": "P-256",
                "x": _b64url(numbers.x.to_bytes(32, "big")),
                "y": _b64url(numbers.y.to_bytes(32, "big")),
            }  # fmt: skip
            return cls("ES256", private_key, jwk, thumbprint(jwk))
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
            return cls("EdDSA", private_key, jwk, thumbprint(jwk))
        raise DPoPKeyError("A DPoP key is a P-256 (ES256) or an Ed25519 (EdDSA) key.")


def thumbprint(jwk: Mapping[str, str]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public EC or OKP JWK."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("crv", "kty", "x")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def generate_key(algorithm: str = "ES256") -> ProofKey:
    """A new key for ``algorithm``: ``ES256`` (P-256, the default) or ``EdDSA`` (Ed25519)."""
    _need_cryptography()
    if algorithm == "ES256":
        return ProofKey.from_private_key(ec.generate_private_key(ec.SECP256R1()))
    if algorithm == "EdDSA":
        return ProofKey.from_private_key(ed25519.Ed25519PrivateKey.generate())
    raise ValueError(f"DPoP keys are {' or '.join(ALGORITHMS)}, not {algorithm!r}")


def key_to_json(key: ProofKey) -> dict[str, str]:
    """The key as a private JWK (with ``alg``), to keep beside the tokens."""
    if key.algorithm == "ES256":
        d = key.private_key.private_numbers().private_value.to_bytes(32, "big")
    else:
        d = key.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return {**key.public_jwk, "d": _b64url(d), "alg": key.algorithm}


def key_from_json(data: Any) -> ProofKey:
    """The key that :func:`key_to_json` wrote; :class:`DPoPKeyError` for anything else.

    The public half is derived from ``d`` and must equal the stored one, so a
    damaged or edited file is noticed rather than signing with a key the
    service bound nothing to.
    """
    _need_cryptography()
    if not isinstance(data, Mapping):
        raise DPoPKeyError("The stored DPoP key is malformed.")
    kind = (data.get("alg"), data.get("kty"), data.get("crv"))
    try:
        if kind == ("ES256", "EC", "P-256"):
            secret = int.from_bytes(_unb64url(data.get("d"), 32), "big")
            key = ProofKey.from_private_key(ec.derive_private_key(secret, ec.SECP256R1()))
        elif kind == ("EdDSA", "OKP", "Ed25519"):
            raw = _unb64url(data.get("d"), 32)
            key = ProofKey.from_private_key(ed25519.Ed25519PrivateKey.from_private_bytes(raw))
        else:
            raise DPoPKeyError("The stored DPoP key is of an unsupported kind.")
    except DPoPKeyError:
        raise
    except ValueError:  # a private value out of range for the curve
        raise DPoPKeyError("The stored DPoP key is malformed.") from None
    if any(data.get(name) != value for name, value in key.public_jwk.items()):
        raise DPoPKeyError("The stored DPoP key's public half does not match its private half.")
    return key


def ath(access_token: str) -> str:
    """The ``ath`` claim for an access token: base64url(SHA-256(token))."""
    return _b64url(hashlib.sha256(access_token.encode("utf-8")).digest())


def htu(url: str) -> str:
    """The ``htu`` claim for ``url``: the URL without its query and fragment."""
    return re.split(r"[?#]", url, maxsplit=1)[0]


def new_jti() -> str:
    """A fresh unguessable proof id (128 bits)."""
    return secrets.token_urlsafe(16)


def make_proof(
    key: ProofKey,
    method: str,
    url: str,
    *,
    now: float,
    access_token: str | None = None,
    nonce: str | None = None,
    jti: Callable[[], str] = new_jti,
) -> str:
    """A DPoP proof (the ``DPoP`` header's value) for one request.

    ``method`` and ``url`` are the request's as sent (the query and fragment
    are left out of ``htu``); ``access_token`` is the token the request
    presents (its hash goes in ``ath``), ``None`` at a token endpoint;
    ``nonce`` is the server's latest ``DPoP-Nonce`` for this origin, if any;
    ``jti`` makes the proof's unique id.
    """
    _need_cryptography()
    header = {"typ": "dpop+jwt", "alg": key.algorithm, "jwk": key.public_jwk}
    claims: dict[str, Any] = {"jti": jti(), "htm": method, "htu": htu(url), "iat": int(now)}
    if access_token is not None:
        claims["ath"] = ath(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode("utf-8"))
        for part in (header, claims)
    )
    if key.algorithm == "ES256":
        der = key.private_key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = key.private_key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64url(signature)}"
