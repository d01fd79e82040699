"""The signature check of a DPoP proof, with its algorithm pinned by the caller.

Every request that carries a proof pays for one signature check, so the ECDSA
algorithms (``ES256``, the default, and its larger siblings) call
``cryptography`` directly: one ``ECDSA`` object per algorithm, made once, and
the JWS signature (``r || s``, RFC 7518 section 3.4) turned into DER from two
integers. PyJWT's ``ECAlgorithm.verify`` does the same checks, but builds the
``ECDSA`` object and converts both halves through hex text on every call. The
checks are the same: a signature of any other length than the curve's is
refused before any arithmetic, and a key on a curve other than the
algorithm's is refused outright (``public_key`` and PyJWT's ``prepare_key``
refuse such a key first; this check does not rely on them). RSA and EdDSA,
rarer, go through PyJWT's implementations as they always did.
"""

from __future__ import annotations

from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import Algorithm, get_default_algorithms


class _ECDSACheck:
    """One ECDSA algorithm's check: its curve, the size of ``r`` and ``s``, its hash."""

    __slots__ = ("curve", "ecdsa", "size")

    def __init__(self, curve: str, size: int, digest: hashes.HashAlgorithm) -> None:
        self.curve, self.size, self.ecdsa = curve, size, ec.ECDSA(digest)

    def __call__(self, key: Any, signing_input: bytes, signature: bytes) -> bool:
        size = self.size
        if (
            len(signature) != 2 * size
            or not isinstance(key, ec.EllipticCurvePublicKey)
            or key.curve.name != self.curve
        ):
            return False
        der = encode_dss_signature(
            int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
        )
        try:
            key.verify(der, signing_input, self.ecdsa)
        except InvalidSignature:
            return False
        return True


_ECDSA = {
    "ES256": _ECDSACheck("secp256r1", 32, hashes.SHA256()),
    "ES384": _ECDSACheck("secp384r1", 48, hashes.SHA384()),
    "ES512": _ECDSACheck("secp521r1", 66, hashes.SHA512()),
}


# PyJWT's asymmetric implementations, looked up once: ``none`` and the HMACs are not
# among them, whatever a caller asks for (the policy's allow-list comes first).
_PYJWT: dict[str, Algorithm] = {
    name: found
    for name, found in get_default_algorithms().items()
    if name.startswith(("ES", "RS", "PS", "EdDSA"))
}


def pyjwt_algorithm(algorithm: str) -> Algorithm:
    """PyJWT's implementation of ``algorithm`` (its ``prepare_key`` checks a key's family)."""
    return _PYJWT[algorithm]


def signature_ok(algorithm: str, key: Any, signing_input: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``signing_input`` verifies with ``key`` under ``algorithm``.

    ``algorithm`` is one the policy allows and ``key`` the proof's own, built
    from its JWK for that algorithm and prepared by PyJWT's implementation.
    """
    check = _ECDSA.get(algorithm)
    if check is not None:
        return check(key, signing_input, signature)
    try:
        return bool(_PYJWT[algorithm].verify(signing_input, key, signature))
    except (jwt.PyJWTError, ValueError, TypeError):  # a signature they refuse
        return False
