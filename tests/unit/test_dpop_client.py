"""client/_dpop.py is pure: keys, their stored form, and proofs the service's verifier accepts."""

import base64
import json
import subprocess
import sys

import pytest

from quart_tokengate.client import _dpop
from quart_tokengate.client._dpop import DPoPKeyError
from quart_tokengate.service import dpop

NOW = 1_800_000_000
URL = "https://api.example.com/notes"


def decode(segment: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


@pytest.fixture(params=["ES256", "EdDSA"])
def key(request):
    return _dpop.generate_key(request.param)


def test_the_default_key_is_p256():
    key = _dpop.generate_key()
    assert key.algorithm == "ES256"
    assert (key.public_jwk["kty"], key.public_jwk["crv"]) == ("EC", "P-256")


def test_a_key_never_shows_its_private_half(key):
    stored = _dpop.key_to_json(key)
    assert stored["d"] not in repr(key)
    assert "d" not in key.public_jwk
    assert key.jkt == dpop.thumbprint(key.public_jwk)


def test_the_stored_form_is_json_and_gives_the_same_key(key):
    stored = json.loads(json.dumps(_dpop.key_to_json(key)))
    assert stored["alg"] == key.algorithm
    again = _dpop.key_from_json(stored)
    assert (again.algorithm, again.public_jwk, again.jkt) == (
        key.algorithm,
        key.public_jwk,
        key.jkt,
    )
    proof = _dpop.make_proof(again, "GET", URL, now=NOW)
    assert dpop.verify_proof(proof, method="GET", url=URL, now=NOW, policy=None).jkt == key.jkt


def test_two_keys_differ():
    assert _dpop.generate_key().jkt != _dpop.generate_key().jkt


def test_only_es256_and_eddsa_keys_are_made():
    with pytest.raises(ValueError, match="ES256 or EdDSA"):
        _dpop.generate_key("RS256")


@pytest.mark.parametrize(
    "change",
    [
        {"alg": "RS256"},
        {"alg": None},
        {"kty": "RSA"},
        {"crv": "P-384"},
        {"d": None},
        {"d": 5},
        {"d": "not base64!"},
        {"d": "AAAA"},  # too short
        {"x": "changed"},  # public half does not match
        {"y": None},
    ],
)
def test_a_damaged_stored_key_is_refused(key, change):
    stored = {**_dpop.key_to_json(key), **change}
    stored = {k: v for k, v in stored.items() if v is not None}
    if key.algorithm == "EdDSA" and set(change) == {"y"}:
        stored["x"] = "changed"  # an OKP key has no y: damage x instead
    with pytest.raises(DPoPKeyError):
        _dpop.key_from_json(stored)


@pytest.mark.parametrize("value", [None, "key", [], 5])
def test_a_stored_key_that_is_not_an_object_is_refused(value):
    with pytest.raises(DPoPKeyError):
        _dpop.key_from_json(value)


def test_an_ec_private_value_out_of_range_is_refused():
    stored = _dpop.key_to_json(_dpop.generate_key("ES256"))
    for d in (b"\x00" * 32, b"\xff" * 32):  # 0 and a value above the group order
        with pytest.raises(DPoPKeyError):
            _dpop.key_from_json({**stored, "d": base64.urlsafe_b64encode(d).rstrip(b"=").decode()})


def test_a_proof_carries_exactly_what_the_request_needs(key):
    proof = _dpop.make_proof(
        key, "POST", "https://api.example.com/notes?page=2#top", now=NOW + 0.9,
        access_token="tok", nonce="n-1", jti=lambda: "id-1",
    )  # fmt: skip
    head, body, signature = proof.split(".")
    assert decode(head) == {"typ": "dpop+jwt", "alg": key.algorithm, "jwk": key.public_jwk}
    assert decode(body) == {
        "jti": "id-1", "htm": "POST", "htu": "https://api.example.com/notes", "iat": NOW,
        "ath": dpop.ath("tok"), "nonce": "n-1",
    }  # fmt: skip
    assert len(base64.urlsafe_b64decode(signature + "==")) == 64


def test_no_ath_or_nonce_unless_given(key):
    body = decode(_dpop.make_proof(key, "GET", URL, now=NOW).split(".")[1])
    assert set(body) == {"jti", "htm", "htu", "iat"}
    assert _dpop.ath("tok") == dpop.ath("tok")


def test_each_proof_has_a_fresh_jti_by_default(key):
    one, two = (_dpop.make_proof(key, "GET", URL, now=NOW) for _ in range(2))
    assert decode(one.split(".")[1])["jti"] != decode(two.split(".")[1])["jti"]


def test_eddsa_proofs_are_a_pure_function_of_their_inputs():
    key = _dpop.generate_key("EdDSA")
    make = lambda: _dpop.make_proof(key, "GET", URL, now=NOW, jti=lambda: "same")  # noqa: E731
    assert make() == make()


def test_the_services_verifier_accepts_the_clients_proofs(key):
    nonce = dpop.make_nonce(b"n" * 32, now=NOW, ttl=300)
    proof = _dpop.make_proof(
        key, "DELETE", "https://API.example.com:443/notes/7?x=1", now=NOW, access_token="tok",
        nonce=nonce,
    )  # fmt: skip
    result = dpop.verify_proof(
        proof, method="DELETE", url="https://api.example.com/notes/7", now=NOW,
        access_token="tok", nonce_key=b"n" * 32,
    )  # fmt: skip
    assert result.jkt == key.jkt
    with pytest.raises(dpop.InvalidDPoPProof):
        dpop.verify_proof(proof, method="DELETE", url=URL, now=NOW, access_token="tok")


def test_without_cryptography_the_module_imports_and_using_it_says_what_to_install():
    probe = (
        "import sys\n"
        "sys.modules['cryptography'] = None\n"  # as if it were not installed
        "import quart_tokengate.client\n"
        "from quart_tokengate.client import _dpop\n"
        "assert not _dpop.HAVE_CRYPTOGRAPHY\n"
        "for call in (lambda: _dpop.generate_key(), lambda: _dpop.key_from_json({})):\n"
        "    try:\n"
        "        call()\n"
        "    except _dpop.DPoPUnavailable as exc:\n"
        "        print(exc)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    line = 'DPoP needs the cryptography package: pip install "quart-tokengate[dpop]"'
    assert r.stdout.splitlines() == [line, line]
