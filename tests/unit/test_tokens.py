"""tokens.py is pure: every rule is checked here without an app or a server."""

import base64
import json
import time

import jwt
import pytest

from quart_tokengate.service import tokens
from quart_tokengate.service.errors import InvalidToken, TokenExpired

CFG = tokens.SigningConfig(key="k" * 40, issuer="tokengate", audience="tokengate")
NOW = 1_800_000_000


def access(cfg=CFG, iat=NOW, ttl=300, **extra):
    claims = {"sid": "session-0001", "name": "alice", **extra}
    return tokens.mint(
        cfg, tokens.AccessToken.kind, sub="1", jti="j1", iat=iat, ttl=ttl, extra=claims
    )


def forge(header, claims, key="k" * 40, alg="HS256"):
    return jwt.encode(claims, key, algorithm=alg, headers=header)


def base_claims(**over):
    claims = {
        "iss": "tokengate", "aud": "tokengate", "sub": "1", "sid": "session-0001",
        "jti": "j1", "iat": NOW, "nbf": NOW, "exp": NOW + 300, "name": "alice",
    }  # fmt: skip
    claims.update(over)
    return claims


def test_round_trip_carries_exactly_the_contract_claims():
    claims = tokens.verify(CFG, tokens.AccessToken.kind, access(), now=NOW + 1)
    assert set(claims) == {"iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "name"}
    assert jwt.get_unverified_header(access()) == {"alg": "HS256", "typ": "at+jwt"}


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
    lenient = tokens.SigningConfig(key=CFG.key, issuer=CFG.issuer, audience=CFG.audience, leeway=5)
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
        base_claims(sub=1),
        base_claims(sid=""),
    ],
    ids=["iss", "aud", "iat-type", "sub-type", "sid-empty"],
)
def test_wrong_claims_are_invalid(claims):
    token = forge({"typ": "at+jwt"}, claims)
    with pytest.raises(InvalidToken):
        tokens.verify(CFG, tokens.AccessToken.kind, token, now=NOW)


@pytest.mark.parametrize(
    "missing", ["iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "name"]
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
