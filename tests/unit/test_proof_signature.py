"""service/proof_signature.py: the direct ECDSA check answers as PyJWT's does, for every
signature PyJWT refuses (forged, mangled, of another length or out of range) and every
key it refuses (another curve, another family)."""

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms

from quart_tokengate.service.proof_signature import signature_ok

MESSAGE = b"eyJ0eXAiOiJkcG9wK2p3dCJ9.eyJqdGkiOiJwcm9vZi0xIn0"
CURVES = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}
KEYS = {alg: ec.generate_private_key(curve) for alg, curve in CURVES.items()}
PYJWT = get_default_algorithms()


def pyjwt_ok(alg: str, key, message: bytes, signature: bytes) -> bool:
    """The check as PyJWT's implementation makes it (what ``signature_ok`` replaces)."""
    try:
        return bool(PYJWT[alg].verify(message, key, signature))
    except (ValueError, TypeError):
        return False


def agree(alg: str, key, signature: bytes, message: bytes = MESSAGE) -> bool:
    found = signature_ok(alg, key, message, signature)
    assert found == pyjwt_ok(alg, key, message, signature)
    return found


def signed(alg: str, message: bytes = MESSAGE) -> bytes:
    return PYJWT[alg].sign(message, KEYS[alg])


def halves(alg: str, signature: bytes) -> tuple[int, int, int]:
    size = len(signature) // 2
    return int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"), size


def raw(r: int, s: int, size: int) -> bytes:
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


ORDER = {  # the group orders (SEC 2), for signatures at and past the range
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "C7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "ES512": int(
        "01FF" + "FFFFFFFF" * 7 + "FFFFFFFA"
        "51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}


@pytest.mark.parametrize("alg", sorted(CURVES))
def test_a_good_signature_verifies(alg):
    assert agree(alg, KEYS[alg].public_key(), signed(alg))


@pytest.mark.parametrize("alg", sorted(CURVES))
def test_a_signature_of_other_bytes_or_a_flipped_bit_is_refused(alg):
    key = KEYS[alg].public_key()
    signature = signed(alg)
    assert not agree(alg, key, signature, MESSAGE + b"x")
    for index in (0, len(signature) // 2, len(signature) - 1):
        flipped = bytearray(signature)
        flipped[index] ^= 1
        assert not agree(alg, key, bytes(flipped))
    other = ec.generate_private_key(CURVES[alg]).public_key()
    assert not agree(alg, other, signature)


@pytest.mark.parametrize("alg", sorted(CURVES))
def test_a_signature_of_the_wrong_length_is_refused(alg):
    key = KEYS[alg].public_key()
    signature = signed(alg)
    r, s, size = halves(alg, signature)
    for wrong in (b"", signature[:-1], signature + b"\x00", b"\x00" + signature,
                  signature[:size], signature * 2):  # fmt: skip
        assert not agree(alg, key, wrong)
    # The same r and s as DER (what cryptography takes) is not a JWS signature.
    assert not agree(alg, key, encode_dss_signature(r, s))


@pytest.mark.parametrize("alg", sorted(CURVES))
def test_signatures_out_of_range_and_high_s_answer_as_pyjwt_does(alg):
    key = KEYS[alg].public_key()
    r, s, size = halves(alg, signed(alg))
    n = ORDER[alg]
    for bad_r, bad_s in ((0, s), (r, 0), (r + n, s) if r + n < 256**size else (n, s),
                         (r, s + n) if s + n < 256**size else (r, n), (n, n)):  # fmt: skip
        assert not agree(alg, key, raw(bad_r, bad_s, size))
    # (r, n - s) is the same signature's other form: ECDSA (and PyJWT) accept it.
    assert agree(alg, key, raw(r, n - s, size))


def test_a_key_of_another_curve_or_family_is_refused():
    signature = signed("ES256")
    # secp256k1: the same sizes as P-256, and a signature that verifies with its own key.
    k1 = ec.generate_private_key(ec.SECP256K1())
    r, s = decode_dss_signature(k1.sign(MESSAGE, ec.ECDSA(hashes.SHA256())))
    k1_signature = raw(r, s, 32)
    assert not signature_ok("ES256", k1.public_key(), MESSAGE, k1_signature)
    for alg, curve_key in KEYS.items():
        if alg != "ES256":
            assert not signature_ok("ES256", curve_key.public_key(), MESSAGE, signature)
            assert not signature_ok(alg, KEYS["ES256"].public_key(), MESSAGE, signed(alg))
    for key in (ed25519.Ed25519PrivateKey.generate().public_key(),
                rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
                KEYS["ES256"], None, b"key"):  # fmt: skip
        assert not signature_ok("ES256", key, MESSAGE, signature)


@settings(max_examples=200, deadline=None)
@given(alg=st.sampled_from(sorted(CURVES)), data=st.data())
def test_arbitrary_bytes_answer_as_pyjwt_does(alg, data):
    size = len(signed(alg))
    exact = st.binary(min_size=size, max_size=size)
    signature = data.draw(st.one_of(st.binary(max_size=2 * size), exact))
    assert not agree(alg, KEYS[alg].public_key(), signature)


def test_rsa_and_eddsa_still_go_through_pyjwt():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pairs = (("EdDSA", ed25519.Ed25519PrivateKey.generate()), ("RS256", rsa_key),
             ("PS256", rsa_key))  # fmt: skip
    for alg, private in pairs:
        signature = PYJWT[alg].sign(MESSAGE, private)
        assert signature_ok(alg, private.public_key(), MESSAGE, signature)
        assert not signature_ok(alg, private.public_key(), MESSAGE + b"x", signature)
        assert not signature_ok(alg, private.public_key(), MESSAGE, signature[:-1])
