"""service/dpop.py is pure: every check of a DPoP proof, each with a proof that fails only it."""

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms

from quart_tokengate.service import dpop
from quart_tokengate.service.dpop import DPoPPolicy, InvalidDPoPProof, UseDPoPNonce
from quart_tokengate.service.errors import InvalidToken

NOW = 1_800_000_000
URL = "https://api.example.com/notes"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.access-token-signature"
NONCE_KEY = b"n" * 32

KEYS = {
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    "Ed448": ed448.Ed448PrivateKey.generate(),
    "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
OTHER_ES256 = ec.generate_private_key(ec.SECP256R1())
ALGORITHM_OF = {"ES384": "ES384", "ES512": "ES512", "Ed448": "EdDSA", "RS256": "RS256"}
ALL = DPoPPolicy(algorithms=tuple(dpop.SUPPORTED_ALGORITHMS))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value) -> str:
    return b64(json.dumps(value).encode())


def _family(key) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    return "EdDSA"


def public_jwk(private_key) -> dict:
    """The public JWK of a key, as PyJWT writes it."""
    public = private_key.public_key()
    return get_default_algorithms()[_family(public)].to_jwk(public, as_dict=True)


def private_jwk(private_key) -> dict:
    return get_default_algorithms()[_family(private_key)].to_jwk(private_key, as_dict=True)


def claims(**over) -> dict:
    """Claims of a good proof for URL at NOW presenting TOKEN; ``None`` drops a claim."""
    found = {"jti": "proof-1", "htm": "GET", "htu": URL, "iat": NOW, "ath": dpop.ath(TOKEN)}
    found.update(over)
    return {k: v for k, v in found.items() if v is not None}


def header(key=None, alg="ES256", **over) -> dict:
    """The header of a good proof signed by ``key`` (default: the ES256 key)."""
    key = KEYS["ES256"] if key is None else key
    found = {"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key)}
    found.update(over)
    return {k: v for k, v in found.items() if v is not None}


def sign_raw(head: dict, body: dict, key=None, alg=None) -> str:
    """A JWS of exactly ``head`` and ``body``, signed by ``key`` with PyJWT's ``alg``."""
    key = KEYS["ES256"] if key is None else key
    alg = alg or head.get("alg", "ES256")
    signing_input = f"{b64json(head)}.{b64json(body)}"
    signature = get_default_algorithms()[alg].sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def proof(key=None, alg="ES256", head=None, **over) -> str:
    """A proof that passes every check, but for what ``head`` and ``over`` change."""
    key = KEYS["ES256"] if key is None else key
    return sign_raw(head if head is not None else header(key, alg), claims(**over), key, alg)


def verify(value, *, method="GET", url=URL, now=NOW, token=TOKEN, **kwargs):
    return dpop.verify_proof(value, method=method, url=url, now=now, access_token=token, **kwargs)


def refused(value, reason: str, **kwargs) -> None:
    with pytest.raises(InvalidDPoPProof) as caught:
        verify(value, **kwargs)
    assert caught.value.error == "invalid_dpop_proof"
    assert reason in caught.value.reason


# -- a good proof --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KEYS))
def test_a_good_proof_passes_and_names_its_key(name):
    key, alg = KEYS[name], ALGORITHM_OF.get(name, name)
    result = verify(proof(key, alg), policy=ALL)
    assert result.jkt == dpop.thumbprint(public_jwk(key))
    assert (result.jti, result.iat, result.algorithm) == ("proof-1", NOW, alg)
    assert "d" not in result.jwk


def test_the_default_policy_is_the_contracts():
    assert dpop.DEFAULT_POLICY.algorithms == ("ES256", "EdDSA")
    assert dpop.DEFAULT_POLICY.max_age == 60
    verify(proof(KEYS["EdDSA"], "EdDSA"))
    refused(proof(KEYS["ES384"], "ES384"), "algorithm that is not accepted")
    refused(proof(KEYS["RS256"], "RS256"), "algorithm that is not accepted")


def test_thumbprint_matches_rfc_8037_and_ignores_other_members():
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert dpop.thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert dpop.thumbprint({**jwk, "use": "sig", "kid": "x"}) == dpop.thumbprint(jwk)
    with pytest.raises(InvalidDPoPProof):
        dpop.thumbprint({"kty": "oct", "k": "c2VjcmV0"})
    with pytest.raises(InvalidDPoPProof):
        dpop.thumbprint({"kty": "OKP", "crv": "Ed25519"})
    with pytest.raises(InvalidDPoPProof):
        dpop.thumbprint({"kty": ["EC"]})


def test_ath_is_base64url_sha256_of_the_token():
    # RFC 9449 section 7.1's example: the token and its ath.
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert dpop.ath(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


# -- typ, alg, jwk -------------------------------------------------------------------------


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", "DPOP+JWT", "dpop+jwt ", ["dpop+jwt"], 1])
def test_typ_must_be_dpop_jwt(typ):
    refused(proof(head=header(typ=typ)), "typ")


def test_alg_none_is_refused():
    bare = f"{b64json(header(alg='none'))}.{b64json(claims())}."
    refused(bare, "well-formed")  # no signature at all
    refused(f"{bare}AAAA", "algorithm that is not accepted")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_is_refused_even_keyed_with_the_proofs_own_public_key(alg):
    public = KEYS["ES256"].public_key()
    for secret in (
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(public_jwk(KEYS["ES256"])).encode(),
        b"any shared secret of enough length....",
    ):
        head = header(alg=alg)
        signing_input = f"{b64json(head)}.{b64json(claims())}"
        signature = get_default_algorithms()[alg].sign(signing_input.encode(), secret)
        refused(f"{signing_input}.{b64(signature)}", "algorithm that is not accepted", policy=ALL)


@pytest.mark.parametrize("alg", ["ES999", "es256", "ES256 ", "", "RSA-OAEP", None, 256, ["ES256"]])
def test_unknown_algs_are_refused(alg):
    refused(proof(head=header(alg=alg)), "algorithm that is not accepted", policy=ALL)


def test_a_policy_cannot_allow_none_or_hmac():
    for algorithms in (("none",), ("HS256",), ("ES256", "HS512"), ()):
        with pytest.raises(ValueError, match="DPoP algorithms"):
            DPoPPolicy(algorithms=algorithms)
    with pytest.raises(ValueError):
        DPoPPolicy(max_age=0)


@pytest.mark.parametrize("member", sorted(dpop.PRIVATE_MEMBERS))
def test_a_jwk_with_private_members_is_refused(member):
    jwk = {**public_jwk(KEYS["ES256"]), member: b64(b"secret")}
    refused(proof(head=header(jwk=jwk)), "private key material")


def test_a_jwk_carrying_the_real_private_key_is_refused_though_the_signature_verifies():
    refused(proof(head=header(jwk=private_jwk(KEYS["ES256"]))), "private key material")
    ed = KEYS["EdDSA"]
    refused(proof(ed, "EdDSA", head=header(ed, "EdDSA", jwk=private_jwk(ed))), "private")


def test_an_oct_key_is_refused():
    jwk = {"kty": "oct", "k": b64(b"shared secret")}
    refused(proof(head=header(jwk=jwk)), "private key material")
    refused(proof(head=header(jwk={"kty": "oct"})), "does not fit its algorithm")


@pytest.mark.parametrize(
    ("signer", "alg", "jwk_of"),
    [
        ("ES256", "ES256", "ES384"),  # curve other than the alg's
        ("ES256", "ES256", "EdDSA"),
        ("ES256", "ES256", "RS256"),
        ("EdDSA", "EdDSA", "ES256"),
        ("RS256", "RS256", "ES256"),
        ("ES384", "ES384", "ES256"),
        ("ES384", "ES256", "ES384"),  # alg names P-256 and the jwk is P-384
    ],
)
def test_the_jwk_never_chooses_the_algorithm_family(signer, alg, jwk_of):
    head = header(KEYS[jwk_of], alg)
    body = claims()
    signing_alg = ALGORITHM_OF.get(signer, signer)
    signing_input = f"{b64json(head)}.{b64json(body)}"
    signature = get_default_algorithms()[signing_alg].sign(signing_input.encode(), KEYS[signer])
    with pytest.raises(InvalidDPoPProof):
        verify(f"{signing_input}.{b64(signature)}", policy=ALL)


def test_a_jwk_alg_or_use_other_than_the_proofs_is_refused():
    refused(proof(head=header(jwk={**public_jwk(KEYS["ES256"]), "alg": "ES384"})), "another")
    refused(proof(head=header(jwk={**public_jwk(KEYS["ES256"]), "use": "enc"})), "signing key")
    verify(proof(head=header(jwk={**public_jwk(KEYS["ES256"]), "alg": "ES256", "use": "sig"})))


@pytest.mark.parametrize(
    "change",
    [
        {"x": "AAAA"},  # too short
        {"y": None},
        {"x": 5},
        {"x": "not base64!!"},
        {"x": b64(b"\x00" * 32), "y": b64(b"\x00" * 32)},  # not on the curve
        {"crv": "P-384"},
        {"crv": "secp256k1"},
    ],
)
def test_a_malformed_ec_jwk_is_refused(change):
    jwk = {k: v for k, v in {**public_jwk(KEYS["ES256"]), **change}.items() if v is not None}
    with pytest.raises(InvalidDPoPProof):
        verify(proof(head=header(jwk=jwk)))


def test_rsa_keys_below_2048_bits_or_with_odd_exponents_are_refused():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    refused(proof(small, "RS256"), "too weak", policy=ALL)
    jwk = {**public_jwk(KEYS["RS256"]), "e": b64((2**40 + 1).to_bytes(6, "big"))}
    refused(proof(KEYS["RS256"], "RS256", head=header(KEYS["RS256"], "RS256", jwk=jwk)),
            "too weak or too large", policy=ALL)  # fmt: skip


def test_crit_is_refused():
    refused(proof(head=header(crit=["exp"])), "critical")


# -- the signature -------------------------------------------------------------------------


def test_a_proof_signed_by_another_key_is_refused():
    head = header(KEYS["ES256"])
    refused(sign_raw(head, claims(), OTHER_ES256), "signature does not verify")


def test_a_tampered_payload_or_signature_is_refused():
    good = proof()
    head, body, signature = good.split(".")
    refused(f"{head}.{b64json(claims(htm='POST'))}.{signature}", "signature does not verify")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    refused(f"{head}.{body}.{flipped}", "signature does not verify")
    refused(f"{head}.{body}.{signature[:-4]}", "signature does not verify")  # too short
    other = proof(OTHER_ES256, head=header(OTHER_ES256)).split(".")[2]
    refused(f"{head}.{body}.{other}", "signature does not verify")


# -- htm, htu ------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "method"), [("GET", "POST"), ("get", "GET"), ("POST", "GET")])
def test_htm_must_be_the_requests_method(sent, method):
    refused(proof(htm=sent), "another HTTP method", method=method)


def test_a_missing_htm_or_htu_is_refused():
    refused(proof(htm=None), "another HTTP method")
    refused(proof(htu=None), "another URL")
    refused(proof(htu=["https://api.example.com/notes"]), "another URL")


@pytest.mark.parametrize(
    ("htu", "url"),
    [
        ("https://api.example.com/notes", "https://api.example.com/notes?page=2"),
        ("https://api.example.com/notes?page=2#top", "https://api.example.com/notes"),
        ("HTTPS://API.Example.COM/notes", "https://api.example.com/notes"),
        ("https://api.example.com:443/notes", "https://api.example.com/notes"),
        ("http://api.example.com:80/notes", "http://api.example.com/notes"),
        ("https://api.example.com:8443/notes", "https://API.example.com:08443/notes"),
        ("https://api.example.com", "https://api.example.com/"),
        ("https://api.example.com:/notes", "https://api.example.com/notes"),
        ("https://api.example.com/%6Eotes", "https://api.example.com/notes"),
        ("https://api.example.com/a%2fb", "https://api.example.com/a%2Fb"),
        ("https://api.example.com/caf%c3%a9", "https://api.example.com/café"),
        ("https://api.example.com/a/./b/../notes", "https://api.example.com/a/notes"),
        ("https://[2001:DB8::1]:443/x", "https://[2001:db8::1]/x"),
        ("https://api.example.com/~me", "https://api.example.com/%7Eme"),
    ],
)
def test_htu_equal_after_normalisation_passes(htu, url):
    verify(proof(htu=htu), url=url)


@pytest.mark.parametrize(
    ("htu", "url"),
    [
        ("https://api.example.com/other", URL),
        ("https://evil.example.com/notes", URL),
        ("http://api.example.com/notes", URL),
        ("https://api.example.com:8443/notes", URL),
        ("https://api.example.com/notes/", URL),
        ("https://api.example.com/Notes", URL),
        ("https://api.example.com/a%2Fb", "https://api.example.com/a/b"),
        ("https://user@api.example.com/notes", URL),
        ("https://api.example.com/no%zztes", URL),
        ("https://api.example.com:99999/notes", URL),
        ("/notes", URL),
        ("api.example.com/notes", URL),
        ("ftp://api.example.com/notes", URL),
        ("https://api.example.com/no tes", URL),
        ("https://api.example.com/notes\n", URL),
        ("", URL),
        ("https://" + "a" * 5000 + ".com/", URL),
    ],
)
def test_htu_for_another_url_is_refused(htu, url):
    refused(proof(htu=htu), "another URL", url=url)


def test_an_uncheckable_request_url_is_refused_not_an_error():
    refused(proof(), "cannot be checked", url="not a url")


def test_normalise_htu_examples():
    n = dpop.normalise_htu
    assert n("HTTPS://Example.COM:443/a/./b/../c?q#f") == "https://example.com/a/c"
    assert n("http://a/%7euser/%2f/%c3%a9") == "http://a/~user/%2F/%C3%A9"
    assert n("http://a:8080") == "http://a:8080/"
    assert n("http://a/b/..") == "http://a/"
    assert n("http://a/b/.") == "http://a/b/"
    assert n("http://[::1]:80/x") == "http://[::1]/x"
    for bad in ("http://u@a/", "http://a/%zz", "http://a:0/", "ftp://a/", "http:/a", "http://a b/"):
        assert n(bad) is None


# -- iat, jti ------------------------------------------------------------------------------


@pytest.mark.parametrize("iat", [NOW - 60, NOW + 60, NOW, NOW + 0.5, float(NOW)])
def test_iat_within_max_age_either_way_passes(iat):
    assert verify(proof(iat=iat)).iat == int(iat)


@pytest.mark.parametrize("iat", [NOW - 61, NOW + 61, NOW - 3600, NOW + 86400, 0])
def test_iat_too_old_or_too_far_ahead_is_refused(iat):
    refused(proof(iat=iat), "too far from the server's clock")


def test_max_age_and_leeway_widen_the_window():
    verify(proof(iat=NOW - 61), policy=DPoPPolicy(max_age=60, leeway=1))
    verify(proof(iat=NOW + 300), policy=DPoPPolicy(max_age=300))
    refused(proof(iat=NOW - 11), "too far", policy=DPoPPolicy(max_age=10))
    assert DPoPPolicy(max_age=60, leeway=5).replay_ttl == 130


@pytest.mark.parametrize("iat", [None, str(NOW), True, [NOW], {"t": NOW}, -1, 2**53, 1e300])
def test_iat_missing_or_not_a_time_is_refused(iat):
    refused(proof(iat=iat), "iat is missing or not a time")


@pytest.mark.parametrize("jti", [None, "", 7, ["a"], {"a": 1}, True, "j" * 257])
def test_jti_missing_or_malformed_is_refused(jti):
    refused(proof(jti=jti), "jti")


def test_jti_up_to_256_characters_passes():
    assert verify(proof(jti="j" * 256)).jti == "j" * 256


# -- ath -----------------------------------------------------------------------------------


def test_ath_must_hash_the_presented_token():
    refused(proof(ath=dpop.ath("another token")), "not made for this access token")
    refused(proof(ath=None), "not made for this access token")
    refused(proof(ath=5), "not made for this access token")
    refused(proof(ath=dpop.ath(TOKEN) + "="), "not made for this access token")
    refused(proof(ath=dpop.ath(TOKEN).upper()), "not made for this access token")


def test_a_proof_made_for_one_token_is_refused_with_another():
    made_for_one = proof()
    verify(made_for_one, token=TOKEN)
    refused(made_for_one, "not made for this access token", token=TOKEN + "x")


def test_ath_is_ignored_where_no_token_is_presented():
    verify(proof(ath=None), token=None)
    verify(proof(ath="whatever"), token=None)


# -- nonce ---------------------------------------------------------------------------------


def test_nonces_are_stateless_and_time_bucketed():
    nonce = dpop.make_nonce(NONCE_KEY, now=NOW, ttl=300)
    assert nonce == dpop.make_nonce(NONCE_KEY, now=NOW, ttl=300)  # any instance, same nonce
    assert len(nonce) == 24
    assert dpop.check_nonce(NONCE_KEY, nonce, now=NOW, ttl=300)
    assert dpop.check_nonce(NONCE_KEY, nonce, now=NOW + 300, ttl=300)  # the bucket after
    assert dpop.check_nonce(NONCE_KEY, nonce, now=NOW - 300, ttl=300)  # a clock behind
    assert not dpop.check_nonce(NONCE_KEY, nonce, now=NOW + 600, ttl=300)
    assert not dpop.check_nonce(b"k" * 32, nonce, now=NOW, ttl=300)
    for bad in ("", nonce[:-1], nonce + "A", "é" * 24, 5):
        assert not dpop.check_nonce(NONCE_KEY, bad, now=NOW, ttl=300)


def test_a_demanded_nonce_missing_or_stale_answers_use_dpop_nonce():
    fresh = dpop.make_nonce(NONCE_KEY, now=NOW, ttl=300)
    assert verify(proof(nonce=fresh), nonce_key=NONCE_KEY).jti == "proof-1"
    stale = dpop.make_nonce(NONCE_KEY, now=NOW - 900, ttl=300)
    foreign = dpop.make_nonce(b"k" * 32, now=NOW, ttl=300)
    for sent in (None, stale, foreign, "made-up"):
        with pytest.raises(UseDPoPNonce) as caught:
            verify(proof(nonce=sent), nonce_key=NONCE_KEY)
        assert caught.value.error == "use_dpop_nonce"
    refused(proof(nonce=5), "nonce is malformed", nonce_key=NONCE_KEY)


def test_a_nonce_is_checked_after_the_signature():
    forged = sign_raw(header(KEYS["ES256"]), claims(), OTHER_ES256)
    refused(forged, "signature", nonce_key=NONCE_KEY)


def test_a_nonce_is_ignored_when_none_is_demanded():
    verify(proof(nonce="anything"))


# -- binding -------------------------------------------------------------------------------


def test_the_binding_compares_the_thumbprint_with_cnf_jkt():
    result = verify(proof())
    dpop.check_binding(result, dpop.token_jkt({"cnf": {"jkt": result.jkt}}))
    other = dpop.thumbprint(public_jwk(OTHER_ES256))
    with pytest.raises(InvalidDPoPProof, match="not signed by the key the token is bound to"):
        dpop.check_binding(result, other)
    with pytest.raises(InvalidDPoPProof):
        dpop.check_binding(result, "é")


def test_token_jkt_reads_cnf_and_a_malformed_one_makes_the_token_invalid():
    assert dpop.token_jkt({"sub": "1"}) is None
    assert dpop.token_jkt({"cnf": {"jkt": "abc", "x5t#S256": "z"}}) == "abc"
    for cnf in (None, "abc", {"jkt": 5}, {"jkt": ""}, {}, ["abc"]):
        with pytest.raises(InvalidToken):
            dpop.token_jkt({"cnf": cnf})


# -- size and shape ------------------------------------------------------------------------


def test_a_proof_over_8_kib_is_refused_before_parsing():
    small = proof(pad="")
    step = len(proof(pad="xxx")) - len(small)
    pad = "x" * (3 * ((dpop.MAX_PROOF_LENGTH - len(small)) // step))
    fits = proof(pad=pad)
    assert dpop.MAX_PROOF_LENGTH - step < len(fits) <= dpop.MAX_PROOF_LENGTH
    verify(fits)
    too_big = proof(pad=pad + "xxx")
    assert len(too_big) > dpop.MAX_PROOF_LENGTH
    refused(too_big, "well-formed")


def unsigned(head_segment: str) -> str:
    return f"{head_segment}.{b64json(claims())}.x"


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


MALFORMED = [
    None, 5, b"a.b.c", ["a", "b", "c"], {"a": 1}, "", ".", "..", "a.b", "a.b.c.d",
    "a.b.c.d.e", " " + "x.y.z", "x.y.z ", "é.b.c", "a+b.c.d", "a/b.c.d", "YQ==.YQ.YQ",
    "a\nb.c.d", unsigned(b64(b"not json")),
    unsigned(b64json(["typ"])),
    unsigned(b64json("dpop+jwt")),
    unsigned(b64json(5)),
    unsigned(b64json(None)),
    unsigned(b64(deep(2000).encode())),
    unsigned(b64(b"\xff\xfe")),
    unsigned("A"),  # a length no base64 has
    unsigned(b64(b'{"typ":"dpop+jwt","typ":"JWT","alg":"ES256"}')),
    unsigned(b64(b'{"typ":"dpop+jwt","alg":"ES256","jwk":NaN}')),
]  # fmt: skip


@pytest.mark.parametrize("value", MALFORMED)
def test_malformed_proofs_are_refused_never_an_unexpected_error(value):
    with pytest.raises(InvalidDPoPProof):
        verify(value)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json", b"[]", b'"claims"', b"5", b"null", deep(2000).encode(),
        b'{"htm":"GET","htm":"POST"}', b'{"iat":NaN}', b'{"iat":Infinity}', b"\xff",
    ],
)  # fmt: skip
def test_a_signed_but_malformed_payload_is_refused(payload):
    head = b64json(header())
    signing_input = f"{head}.{b64(payload)}"
    signature = get_default_algorithms()["ES256"].sign(signing_input.encode(), KEYS["ES256"])
    refused(f"{signing_input}.{b64(signature)}", "well-formed")


def test_a_bad_signature_encoding_is_refused():
    head, body, _ = proof().split(".")
    refused(f"{head}.{body}.A", "well-formed")


# -- fuzz ----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HEADER_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "typ": st.sampled_from(["dpop+jwt", "JWT"]) | JSON,
        "alg": st.sampled_from(["ES256", "EdDSA", "none", "HS256"]) | JSON,
        "jwk": st.just(public_jwk(KEYS["ES256"])) | JSON,
        "crit": JSON,
    },
)
CLAIM_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "jti": st.text(max_size=300) | JSON,
        "htm": st.sampled_from(["GET", "POST"]) | JSON,
        "htu": st.sampled_from([URL, URL + "/", "https://x/"]) | st.text(max_size=40) | JSON,
        "iat": st.integers(NOW - 100, NOW + 100) | JSON,
        "ath": st.just(dpop.ath(TOKEN)) | JSON,
        "nonce": JSON,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_fuzz_any_text_is_refused_with_a_dpop_error(text):
    with pytest.raises(dpop.DPoPError):
        verify(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HEADER_VALUES, CLAIM_VALUES, st.booleans())
def test_fuzz_signed_proofs_of_any_shape_never_raise_anything_else(head, body, demand_nonce):
    signed = sign_raw(head, body, KEYS["ES256"], "ES256")
    try:
        result = verify(signed, nonce_key=NONCE_KEY if demand_nonce else None)
    except dpop.DPoPError:
        return
    # Whatever passed really is a good proof.
    assert head.get("typ") == "dpop+jwt" and head.get("alg") == "ES256"
    assert body.get("htm") == "GET" and body.get("ath") == dpop.ath(TOKEN)
    assert result.jkt == dpop.thumbprint(public_jwk(KEYS["ES256"]))


URL_PARTS = st.text(alphabet="aA/.%2fF~é?#:@ -_", max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["http", "HTTPS", "ftp"]),
    st.sampled_from(["Ex.com", "[::1]", "a:8080", "a:"]),
    URL_PARTS,
)
def test_fuzz_htu_normalisation_is_idempotent_and_never_raises(scheme, host, rest):
    once = dpop.normalise_htu(f"{scheme}://{host}/{rest}")
    if once is not None:
        assert dpop.normalise_htu(once) == once
        assert "?" not in once and "#" not in once


def test_a_kept_header_is_still_held_to_each_policy():
    """Headers are decoded once and kept by their text; the algorithm allow-list is
    the caller's policy, checked on every proof, kept or not."""
    rsa_proof = proof(KEYS["RS256"], "RS256")
    dpop.verify_proof(rsa_proof, method="GET", url=URL, now=NOW, access_token=TOKEN, policy=ALL)
    assert rsa_proof.split(".")[0] in dpop._HEADERS
    with pytest.raises(dpop.InvalidDPoPProof, match="algorithm"):
        dpop.verify_proof(rsa_proof, method="GET", url=URL, now=NOW, access_token=TOKEN)


def test_a_refused_header_is_never_kept():
    forged = proof(head={**header(), "typ": "JWT"})
    with pytest.raises(dpop.InvalidDPoPProof):
        dpop.verify_proof(forged, method="GET", url=URL, now=NOW, access_token=TOKEN)
    assert forged.split(".")[0] not in dpop._HEADERS
