"""Refresh rotation: a grace window for concurrent refreshes, reuse detection after it."""

import asyncio

import jwt

from quart_tokengate.service.db.models import AuthSession
from tests.conftest import bearer, me, refresh, register_and_login


def jti(token):
    return jwt.decode(token, options={"verify_signature": False})["jti"]


async def test_refresh_rotates_and_is_recorded_in_sql(make_app, clock):
    app = await make_app(clock=clock)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(1)
    new = await refresh(client, pair["refresh_token"])
    assert new["session_id"] == pair["session_id"]
    assert new["refresh_token"] != pair["refresh_token"]
    assert new["access_token"] != pair["access_token"]
    assert await me(client, new) == 200
    async with app.extensions["tokengate"].db() as db:
        row = await db.get(AuthSession, pair["session_id"])
    assert row.refresh_jti == jti(new["refresh_token"])
    assert row.previous_refresh_jti == jti(pair["refresh_token"])


async def test_fifty_concurrent_refreshes_get_the_same_successor(make_app, clock):
    app = await make_app(clock=clock, refresh_grace=10)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(1)
    results = await asyncio.gather(*(refresh(client, pair["refresh_token"]) for _ in range(50)))
    assert all(isinstance(r, dict) for r in results), results
    assert len({(r["access_token"], r["refresh_token"]) for r in results}) == 1
    assert await me(client, results[0]) == 200


async def test_within_grace_the_same_pair_comes_back(make_app, clock):
    app = await make_app(clock=clock, refresh_grace=10)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(1)
    first = await refresh(client, pair["refresh_token"])
    clock.advance(9)
    again = await refresh(client, pair["refresh_token"])
    assert again["refresh_token"] == first["refresh_token"]
    assert again["access_token"] == first["access_token"]
    assert again["expires_in"] == first["expires_in"] - 9


async def test_reuse_after_grace_ends_the_session(make_app, clock):
    app = await make_app(clock=clock, refresh_grace=10)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(1)
    successor = await refresh(client, pair["refresh_token"])
    clock.advance(11)
    assert await refresh(client, pair["refresh_token"]) == "refresh_reused"
    assert await refresh(client, successor["refresh_token"]) == "token_revoked"
    assert await me(client, successor) == "token_revoked"
    async with app.extensions["tokengate"].db() as db:
        row = await db.get(AuthSession, pair["session_id"])
    assert row.end_reason == "reused" and row.ended_at is not None


async def test_an_older_token_is_reuse_even_within_grace(make_app, clock):
    app = await make_app(clock=clock, refresh_grace=10)
    client = app.test_client()
    first = await register_and_login(client)
    clock.advance(1)
    second = await refresh(client, first["refresh_token"])
    clock.advance(1)
    third = await refresh(client, second["refresh_token"])
    assert isinstance(third, dict)
    assert await refresh(client, first["refresh_token"]) == "refresh_reused"
    assert await me(client, third) == "token_revoked"


async def test_grace_zero_makes_any_second_use_reuse(make_app, clock):
    app = await make_app(clock=clock, refresh_grace=0)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(1)
    assert isinstance(await refresh(client, pair["refresh_token"]), dict)
    clock.advance(1)
    assert await refresh(client, pair["refresh_token"]) == "refresh_reused"


async def test_access_token_cannot_refresh_and_refresh_token_cannot_authenticate(app):
    client = app.test_client()
    pair = await register_and_login(client)
    assert await refresh(client, pair["access_token"]) == "invalid_token"
    r = await client.get("/auth/me", headers=bearer(pair["refresh_token"]))
    assert (await r.get_json())["error"] == "invalid_token"


async def test_expired_refresh_token(make_app, clock):
    app = await make_app(clock=clock, refresh_ttl=600, access_ttl=60, idle_timeout=0)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(600)
    assert await refresh(client, pair["refresh_token"]) == "token_expired"


async def test_missing_refresh_token(app):
    r = await app.test_client().post("/auth/refresh", json={})
    assert (r.status_code, (await r.get_json())["error"]) == (401, "missing_token")
