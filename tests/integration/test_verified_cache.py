"""The guard verifies each access token once; every request still checks exp, nbf, Redis."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from quart_tokengate.service import tokens
from tests.conftest import bearer, register_and_login
from tests.support import commandstats_async


@pytest.fixture
def verifications(monkeypatch):
    """How many times a token's signature and claims were checked."""
    count = {"n": 0}
    original = tokens.verify

    def counting(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(tokens, "verify", counting)
    return count


async def test_a_token_is_verified_once_and_its_session_checked_every_time(
    make_app, verifications, private_redis
):
    # Command counts are per server: on a shared one, anyone's EVALSHA would count.
    # Near checks off: their heartbeats would add EVALSHAs of their own.
    app = await make_app(redis_url=private_redis.url, near_cache=False)
    client = app.test_client()
    pair = await register_and_login(client)
    headers = bearer(pair["access_token"])
    before = verifications["n"]
    async with Redis.from_url(private_redis.url) as counted:
        # A fresh server has no script yet: the first request loads the guard's.
        assert (await client.get("/auth/me", headers=headers)).status_code == 200
        await counted.config_resetstat()
        for _ in range(5):
            assert (await client.get("/auth/me", headers=headers)).status_code == 200
        stats = await commandstats_async(counted)
    assert verifications["n"] - before == 1  # six requests, one verification
    assert stats["evalsha"] == 5


async def test_a_cached_token_still_expires(make_app, clock):
    app = await make_app(clock=clock, access_ttl=60)
    client = app.test_client()
    pair = await register_and_login(client)
    assert (await client.get("/auth/me", headers=bearer(pair["access_token"]))).status_code == 200
    clock.advance(60)
    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert (await r.get_json())["error"] == "token_expired"


async def test_a_cached_token_is_refused_at_once_when_its_session_ends(app):
    client = app.test_client()
    pair = await register_and_login(client)
    headers = bearer(pair["access_token"])
    assert (await client.get("/auth/me", headers=headers)).status_code == 200
    assert (await client.post("/auth/logout", headers=headers)).status_code == 204
    r = await client.get("/auth/me", headers=headers)
    assert (await r.get_json())["error"] == "token_revoked"


async def test_failures_are_never_cached(app, verifications):
    client = app.test_client()
    pair = await register_and_login(client)
    good = pair["access_token"]
    head, payload, signature = good.split(".")
    forged = f"{head}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    before = verifications["n"]
    for _ in range(3):
        r = await client.get("/auth/me", headers=bearer(forged))
        assert (await r.get_json())["error"] == "invalid_token"
    assert verifications["n"] - before == 3
    # The genuine token, verified and cached, does not vouch for the forged one.
    assert (await client.get("/auth/me", headers=bearer(good))).status_code == 200
    r = await client.get("/auth/me", headers=bearer(forged))
    assert (await r.get_json())["error"] == "invalid_token"


async def test_a_view_cannot_change_the_cached_claims(make_app):
    from quart_tokengate.service import current_identity, login_required

    app = await make_app()

    @app.get("/mutate")
    @login_required
    async def mutate():
        current_identity().claims["sub"] = "999"
        return {"ok": True}

    client = app.test_client()
    pair = await register_and_login(client)
    headers = bearer(pair["access_token"])
    assert (await client.get("/mutate", headers=headers)).status_code == 200
    me = await (await client.get("/auth/me", headers=headers)).get_json()
    assert me["id"] != 999
