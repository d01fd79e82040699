"""DPoP interoperability both ways, with requests_oauth2client (jwskate underneath).

Its ``DPoPKey`` makes proofs that service/dpop.py accepts, with the same
RFC 7638 thumbprint; client/_dpop.py makes proofs that its
``validate_dpop_proof`` accepts. That function reads the wall clock, so the
proofs it checks are made at ``time.time()``; every other proof here uses a
fixed ``now``.
"""

import time

import jwskate
import pytest
import requests
from requests_oauth2client import DPoPKey
from requests_oauth2client.dpop import InvalidDPoPProof as TheirInvalidProof
from requests_oauth2client.dpop import add_dpop_proof, validate_dpop_proof

from quart_tokengate.client import _dpop
from quart_tokengate.service import dpop
from quart_tokengate.service.dpop import DPoPPolicy

NOW = 1_800_000_000
URL = "https://api.example.com/notes"
TOKEN = "an.access.token"
EVERY = DPoPPolicy(algorithms=tuple(dpop.SUPPORTED_ALGORITHMS))


def their_key(alg: str) -> DPoPKey:
    return DPoPKey.generate(alg=alg, iat_generator=lambda: NOW)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_their_proofs_on_a_real_request_pass_the_default_policy(alg):
    key = their_key(alg)
    request = requests.Request("PATCH", URL + "?page=2", json={"a": 1}).prepare()
    add_dpop_proof(request, key, TOKEN)  # their whole path: htu, ath, signature
    result = dpop.verify_proof(
        request.headers["DPoP"], method="PATCH", url=URL, now=NOW, access_token=TOKEN
    )
    assert result.jkt == key.dpop_jkt
    assert result.algorithm == alg


@pytest.mark.parametrize("alg", ["ES384", "ES512", "RS256", "PS256", "RS512", "PS384"])
def test_their_proofs_of_other_algorithms_pass_when_allowed(alg):
    key = their_key(alg)
    proof = str(key.proof(htm="POST", htu=URL))
    result = dpop.verify_proof(proof, method="POST", url=URL, now=NOW, policy=EVERY)
    assert result.jkt == key.dpop_jkt
    with pytest.raises(dpop.InvalidDPoPProof, match="algorithm that is not accepted"):
        dpop.verify_proof(proof, method="POST", url=URL, now=NOW)


def test_their_proof_with_our_nonce_and_a_query_in_the_url():
    key = their_key("ES256")
    nonce = dpop.make_nonce(b"n" * 32, now=NOW, ttl=300)
    proof = str(key.proof(htm="GET", htu=URL + "?page=2#top", nonce=nonce))
    result = dpop.verify_proof(
        proof, method="GET", url=URL + "?page=2", now=NOW, nonce_key=b"n" * 32
    )
    assert result.jkt == key.dpop_jkt
    with pytest.raises(dpop.InvalidDPoPProof, match="another URL"):
        dpop.verify_proof(proof, method="GET", url=URL + "/1", now=NOW)


def test_their_ath_is_ours():
    key = their_key("ES256")
    ath = dpop.ath(TOKEN)
    proof = str(key.proof(htm="GET", htu=URL, ath=ath))
    dpop.verify_proof(proof, method="GET", url=URL, now=NOW, access_token=TOKEN)
    with pytest.raises(dpop.InvalidDPoPProof, match="not made for this access token"):
        dpop.verify_proof(proof, method="GET", url=URL, now=NOW, access_token=TOKEN + "x")


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_our_proofs_pass_their_validation(alg):
    key = _dpop.generate_key(alg)
    nonce = "server-nonce"
    proof = _dpop.make_proof(
        key, "POST", URL + "?q=1", now=time.time(), access_token=TOKEN, nonce=nonce
    )
    # (jwskate picks the first alg of the list and refuses a key that lacks it,
    # so each proof is checked with a list of its own alg, the usual server set-up.)
    validated = validate_dpop_proof(
        proof, htm="POST", htu=URL, ath=dpop.ath(TOKEN), nonce=nonce, algs=[alg]
    )
    assert validated.alg == alg
    assert jwskate.Jwk(validated.headers["jwk"]).thumbprint() == key.jkt
    for wrong in ({"htm": "GET"}, {"htu": URL + "/1"}, {"ath": dpop.ath("other")},
                  {"nonce": "another"}):  # fmt: skip
        args = {"htm": "POST", "htu": URL, "ath": dpop.ath(TOKEN), "nonce": nonce, **wrong}
        with pytest.raises(TheirInvalidProof):
            validate_dpop_proof(proof, algs=[alg], **args)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_our_thumbprints_and_stored_keys_are_theirs(alg):
    key = _dpop.generate_key(alg)
    assert jwskate.Jwk(key.public_jwk).thumbprint() == key.jkt
    theirs = jwskate.Jwk(_dpop.key_to_json(key))
    assert theirs.is_private
    assert theirs.public_jwk().thumbprint() == key.jkt
    # Their key, loaded from our stored form, signs proofs our verifier binds to our key.
    proof = str(DPoPKey(theirs, iat_generator=lambda: NOW).proof(htm="GET", htu=URL))
    assert dpop.verify_proof(proof, method="GET", url=URL, now=NOW).jkt == key.jkt
