"""The guard's codes and RFC 6750 headers, for every way a token can be wrong."""

import jwt
import pytest

from tests.conftest import bearer, me, me_answer, register_and_login
from tests.support import SECRET


async def test_missing_token(app):
    status, body, challenge = await me_answer(app.test_client(), {})
    assert (status, body["error"]) == (401, "missing_token")
    assert challenge == 'Bearer realm="tokengate"'
    assert body["error_description"]


@pytest.mark.parametrize(
    "header",
    ["Token abc", "abc", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz"],
    ids=["other-scheme", "no-scheme", "scheme-only", "empty", "basic"],
)
async def test_malformed_authorization_header(app, header):
    status, body, challenge = await me_answer(app.test_client(), {"Authorization": header})
    assert (status, body["error"]) == (401, "invalid_token")
    assert challenge == (
        'Bearer realm="tokengate", error="invalid_token", error_description="invalid_token"'
    )


def forged(pair, key=SECRET, alg="HS256", typ="at+jwt", **changes):
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    kid = jwt.get_unverified_header(pair["access_token"])["kid"]
    return jwt.encode(claims, key, algorithm=alg, headers={"typ": typ, "kid": kid})


@pytest.mark.parametrize(
    "make",
    [
        lambda p: forged(p, key="another-key-that-is-long-enough-000000"),
        lambda p: forged(p, alg="HS512"),
        lambda p: forged(p, typ="rt+jwt"),
        lambda p: p["refresh_token"],
        lambda p: forged(p, iss="evil"),
        lambda p: forged(p, aud="elsewhere"),
        lambda p: forged(p, sid=None),
        lambda p: forged(p, name=None),
        lambda p: forged(p, nbf=4_000_000_000),
        lambda p: forged(p, sub="1}:s:x"),
        lambda p: p["access_token"][:-4] + "AAAA",
        lambda p: "x" * 100_000,
    ],
    ids=[
        "signature", "alg-hs512", "typ", "refresh-as-access", "iss", "aud", "no-sid",
        "no-name", "nbf-future", "sub-injection", "tampered", "100kB",
    ],
)  # fmt: skip
async def test_invalid_tokens(app, make):
    client = app.test_client()
    pair = await register_and_login(client)
    status, body, challenge = await me_answer(client, bearer(make(pair)))
    assert (status, body["error"]) == (401, "invalid_token")
    assert 'error="invalid_token"' in challenge


async def test_expired_token(make_app, clock):
    app = await make_app(clock=clock, access_ttl=60)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(59)
    assert await me(client, pair) == 200
    clock.advance(1)
    status, body, challenge = await me_answer(client, bearer(pair))
    assert (status, body["error"]) == (401, "token_expired")
    assert challenge.endswith('error_description="token_expired"')


async def test_leeway_accepts_a_slightly_expired_token(make_app, clock):
    app = await make_app(clock=clock, access_ttl=60, leeway=5)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(64)
    assert await me(client, pair) == 200
    clock.advance(1)
    assert await me(client, pair) == "token_expired"


async def test_cookie_only_location_ignores_the_header(make_app):
    app = await make_app(token_location=("cookies",))
    client = app.test_client()
    pair = await register_and_login(client, "carol")
    fresh = app.test_client()
    status, body, _ = await me_answer(fresh, bearer(pair))
    assert (status, body["error"]) == (401, "missing_token")


async def test_tokens_of_another_issuer_configuration_are_refused(make_app):
    first = await make_app(issuer="tokengate-a")
    pair = await register_and_login(first.test_client())
    second = await make_app(issuer="tokengate-b")
    status, body, _ = await me_answer(second.test_client(), bearer(pair))
    assert (status, body["error"]) == (401, "invalid_token")
