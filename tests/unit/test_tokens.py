"""tokens.py is pure: every rule is checked here without an app or a server."""

import base64
import json
import time

import jwt
import pytest

from quart_tokengate.service import tokens
from quart_tokengate.service.errors import InvalidToken, TokenExpired

CFG = tokens.SigningConfig.from_secret("k" * 40, issuer="tokengate", audience="tokengate")
KID = CFG.keys.keys[0].kid
NOW = 1_800_000_000


def access(cfg=CFG, iat=NOW, ttl=300, **extra):
    claims = {"sid": "session-0001", "name": "alice", "auth_time": iat, **extra}
    return tokens.mint(
        cfg, tokens.AccessToken.kind, sub="1", jti="j1", iat=iat, ttl=ttl, extra=claims
    )


def forge(header, claims, key="k" * 40, alg="HS256"):
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": KID, **header})


def base_claims(**over):
    claims = {
        "iss": "tokengate", "aud": "tokengate", "sub": "1", "sid": "session-0001",
        "jti": "j1", "iat": NOW, "nbf": NOW, "exp": NOW + 300, "name": "alice",
        "auth_time": NOW,
    }  # fmt: skip
    claims.update(over)
    return claims


def test_round_trip_carries_exactly_the_contract_claims():
    claims = tokens.verify(CFG, tokens.AccessToken.kind, access(), now=NOW + 1)
    assert set(claims) == {
        "iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "name", "auth_time"
    }  # fmt: skip
    assert jwt.get_unverified_header(access()) == {"alg": "HS256", "typ": "at+jwt", "kid": KID}


def test_minting_is_deterministic():
    assert access() == access()


def test_refresh_token_is_not_an_access_token_and_back():
    refresh = tokens.mint(
        CFG, tokens.RefreshToken.kind, sub="1", jti="r", iat=NOW, ttl=600,
        extra={"sid": "session-0001"},
    )  # fmt: skip
    assert jwt.get_unverified_header(refresh)["typ"] == "rt+jwt"
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, refresh, now=NOW)
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.RefreshToken.kind, access(), now=NOW)


def test_expired_token_raises_token_expired_with_claims():
    with pytest.raises(TokenExpired) as info:
        tokens.verify(CFG, tokens.AccessToken.kind, access(ttl=10), now=NOW + 10)
    assert info.value.claims["sid"] == "session-0001"


def test_leeway_applies_to_exp_and_nbf():
    lenient = tokens.SigningConfig(CFG.keys, issuer=CFG.issuer, audience=CFG.audience, leeway=5)
    tokens.verify(lenient, tokens.AccessToken.kind, access(ttl=10), now=NOW + 14)
    tokens.verify(lenient, tokens.AccessToken.kind, access(iat=NOW + 4), now=NOW)
    with pytest.raises(TokenExpired):
        tokens.verify(lenient, tokens.AccessToken.kind, access(ttl=10), now=NOW + 15)


def test_nbf_in_the_future_is_invalid():
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, access(iat=NOW + 60), now=NOW)


@pytest.mark.parametrize(
    "claims",
    [
        base_claims(iss="someone-else"),
        base_claims(aud="another-service"),
        base_claims(iat="yesterday"),
        base_claims(exp=NOW + 300.5),
        base_claims(iat=float(NOW)),
        base_claims(nbf=True),
        base_claims(auth_time=NOW + 0.25),
        base_claims(auth_time="today"),
        base_claims(scope=["a", "b"]),
        base_claims(sub=1),
        base_claims(sid=""),
    ],
    ids=[
        "iss",
        "aud",
        "iat-type",
        "exp-float",
        "iat-float",
        "nbf-bool",
        "auth_time-float",
        "auth_time-type",
        "scope-type",
        "sub-type",
        "sid-empty",
    ],
)
def test_wrong_claims_are_invalid(claims):
    token = forge({"typ": "at+jwt"}, claims)
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, token, now=NOW)


@pytest.mark.parametrize(
    "missing", ["iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "name", "auth_time"]
)
def test_each_required_claim_is_required(missing):
    claims = base_claims()
    del claims[missing]
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, forge({"typ": "at+jwt"}, claims), now=NOW)


def test_wrong_key_is_invalid():
    token = forge({"typ": "at+jwt"}, base_claims(), key="x" * 40)
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, token, now=NOW)


def test_other_algorithms_are_refused_even_with_the_right_key():
    token = forge({"typ": "at+jwt"}, base_claims(), alg="HS512")
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, token, now=NOW)


def test_alg_none_is_refused():
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    token = f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{b64(base_claims())}."
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, token, now=NOW)


def test_missing_typ_is_refused():
    token = forge({}, base_claims())
    assert jwt.get_unverified_header(token).get("typ") in (None, "JWT")
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, token, now=NOW)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 100_000, "\u00e9.\u00e9.\u00e9"])
def test_garbage_is_invalid(garbage):
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, garbage, now=time.time())


def test_purpose_token_needs_its_purpose_and_is_no_access_token():
    token = tokens.mint(
        CFG, tokens.PurposeToken.kind, sub="1", jti="p", iat=NOW, ttl=60,
        extra={"purpose": "password_reset"},
    )  # fmt: skip
    assert (
        tokens.verify(CFG, tokens.PurposeToken.kind, token, now=NOW)["purpose"] == "password_reset"
    )
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, token, now=NOW)
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.PurposeToken.kind, access(), now=NOW)


NOT_FINITE_INTEGERS = [
    float("nan"), float("inf"), float("-inf"), 1e300, NOW + 0.5, float(NOW + 300),
    True, False, "1800000300", None, [NOW], 10**40, -1,
]  # fmt: skip


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", NOT_FINITE_INTEGERS, ids=repr)
def test_time_claims_must_be_finite_integers(claim, value):
    # Correctly signed, so only the type of the time claim can refuse it.
    token = forge({"typ": "at+jwt"}, base_claims(**{claim: value}))
    with pytest.raises(InvalidToken) as info:
        tokens.verify(CFG, tokens.AccessToken.kind, token, now=NOW + 1)
    assert type(info.value) is InvalidToken


@pytest.mark.parametrize("value", NOT_FINITE_INTEGERS, ids=repr)
def test_auth_time_when_present_must_be_a_finite_integer(value):
    token = forge({"typ": "at+jwt"}, base_claims(auth_time=value))
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, token, now=NOW + 1)


def test_integer_time_claims_and_auth_time_pass():
    token = forge({"typ": "at+jwt"}, base_claims(auth_time=NOW - 5))
    assert tokens.verify(CFG, tokens.AccessToken.kind, token, now=NOW + 1)["auth_time"] == NOW - 5


def test_a_token_without_a_kid_or_with_an_unknown_one_is_invalid():
    claims = base_claims()
    no_kid = jwt.encode(claims, "k" * 40, algorithm="HS256", headers={"typ": "at+jwt"})
    other = forge({"typ": "at+jwt", "kid": "somebody-else"}, claims)
    for token in (no_kid, other):
        with pytest.raises(InvalidToken):
            tokens.verify(CFG, tokens.AccessToken.kind, token, now=NOW)


def test_the_kid_of_a_configured_secret_is_stable_and_reveals_nothing():
    again = tokens.SigningConfig.from_secret("k" * 40, "tokengate", "tokengate")
    assert again.keys.keys[0].kid == KID
    other = tokens.SigningConfig.from_secret("j" * 40, "tokengate", "tokengate")
    assert other.keys.keys[0].kid != KID
    assert "k" * 8 not in KID


def _asymmetric(algorithm, kid="key-1", active_at=0.0):
    from cryptography.hazmat.primitives import serialization

    from quart_tokengate.service.keys import generate

    private_pem, public_pem = generate(algorithm)
    private = serialization.load_pem_private_key(private_pem.encode(), password=None)
    public = serialization.load_pem_public_key(public_pem.encode())
    return tokens.SigningKey(kid, algorithm, private, public, active_at), public_pem


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256"])
def test_asymmetric_algorithms_round_trip_with_their_kid(algorithm):
    key, _ = _asymmetric(algorithm)
    cfg = tokens.SigningConfig(tokens.KeySet(algorithm, (key,)), "tokengate", "tokengate")
    token = access(cfg)
    assert jwt.get_unverified_header(token) == {"alg": algorithm, "typ": "at+jwt", "kid": "key-1"}
    assert tokens.verify(cfg, tokens.AccessToken.kind, token, now=NOW)["sid"] == "session-0001"


def test_algorithm_confusion_hs256_keyed_with_the_public_key_is_refused():
    key, public_pem = _asymmetric("EdDSA")
    cfg = tokens.SigningConfig(tokens.KeySet("EdDSA", (key,)), "tokengate", "tokengate")

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    # PyJWT refuses to sign HS256 with a PEM, so the attacker's token is made by hand.
    header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": "key-1"}).encode())
    payload = b64(json.dumps(base_claims()).encode())
    import hashlib
    import hmac

    for secret in (public_pem.encode(), public_pem.strip().encode()):
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        with pytest.raises(InvalidToken):
            tokens.verify(cfg, tokens.AccessToken.kind, f"{header}.{payload}.{b64(mac)}", now=NOW)


def test_the_newest_active_key_signs_and_every_key_verifies():
    old, _ = _asymmetric("EdDSA", kid="old", active_at=0)
    new, _ = _asymmetric("EdDSA", kid="new", active_at=NOW + 5)
    cfg = tokens.SigningConfig(tokens.KeySet("EdDSA", (new, old)), "tokengate", "tokengate")
    before, after = access(cfg, iat=NOW), access(cfg, iat=NOW + 5)
    assert jwt.get_unverified_header(before)["kid"] == "old"
    assert jwt.get_unverified_header(after)["kid"] == "new"
    tokens.verify(cfg, tokens.AccessToken.kind, before, now=NOW + 6)
    tokens.verify(cfg, tokens.AccessToken.kind, after, now=NOW + 6)
    only_new = tokens.SigningConfig(tokens.KeySet("EdDSA", (new,)), "tokengate", "tokengate")
    with pytest.raises(InvalidToken):
        tokens.verify(only_new, tokens.AccessToken.kind, before, now=NOW + 6)


def test_keys_are_prepared_once_and_still_pinned():
    """Each key is prepared for PyJWT when the key set is made, not per token; a prepared
    key is refused by any other algorithm, and a token of another algorithm still fails."""
    cfg = tokens.SigningConfig.from_secret(b"k" * 40, "iss", "aud")
    key = cfg.keys.keys[0]
    assert isinstance(key.prepared_signing, tokens.PreparedKey)
    assert key.prepared_verifying is key.prepared_signing
    token = tokens.mint(cfg, tokens.RefreshToken.kind, sub="1", jti="j" * 22, iat=100,
                        ttl=60, extra={"sid": "s" * 22})  # fmt: skip
    assert tokens.verify(cfg, tokens.RefreshToken.kind, token, now=110)["sub"] == "1"
    with pytest.raises(jwt.InvalidKeyError):
        tokens._CODEC.encode({"a": 1}, key.prepared_signing, algorithm="HS384")
    forged = jwt.encode({"a": 1}, b"k" * 40, algorithm="HS384", headers={"kid": key.kid})
    with pytest.raises(InvalidToken):
        tokens.verify(cfg, tokens.RefreshToken.kind, forged, now=110)


def test_session_ids_never_start_with_a_dash():
    # `tokengate sessions end ID` would read such an id as an option. One draw in
    # 64 of the underlying token starts with "-": 5,000 draws all but surely meet one.
    ids = [tokens.new_session_id() for _ in range(5000)]
    assert not [sid for sid in ids if sid.startswith("-")]
    assert len(set(ids)) == len(ids) and all(len(sid) == 22 for sid in ids)
