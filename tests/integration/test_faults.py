"""A 503 changes nothing the caller can see, and outages never count as failed logins.

Each test breaks a real server part-way through a request: PostgreSQL or
Redis behind a proxy that cuts the connection at a chosen statement or
script (``tests/faults.py``), or a Redis frozen with SIGSTOP. The clock is
the test kit's, so "long after the grace window" takes no time.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from quart import Quart
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from quart_tokengate.client.pytest_plugin import TokengateClock
from quart_tokengate.service import get_gate
from quart_tokengate.service.store.redis_store import script_source
from tests.conftest import _truncate, me, refresh, register_and_login
from tests.faults import CuttingProxy, FreezableRedis, proxy_to
from tests.support import bearer, claims

GRACE = 10
AppFactory = Callable[..., Awaitable[Quart]]


def script_sha(name: str) -> bytes:
    """What an EVALSHA of the store's script ``name`` carries on the wire."""
    return hashlib.sha1(script_source(name).encode()).hexdigest().encode()


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[CuttingProxy]:
    """The test PostgreSQL, emptied, behind a proxy that can cut its connections."""
    await _truncate(postgres_url)
    with proxy_to(make_url(postgres_url).port or 5432) as proxy:
        yield proxy


def through(proxy: CuttingProxy, postgres_url: str) -> str:
    """``postgres_url``, reached through ``proxy``."""
    url = make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    return url.render_as_string(hide_password=False)


@pytest.fixture
def frozen_redis() -> Iterator[FreezableRedis]:
    server = FreezableRedis()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_cut(frozen_redis: FreezableRedis) -> Iterator[CuttingProxy]:
    """A private Redis (that may be frozen) behind a cutting proxy."""
    with proxy_to(frozen_redis.port) as proxy:
        yield proxy


@pytest.fixture
def build(make_app: AppFactory, clock: TokengateClock) -> AppFactory:
    """``await build(database_url=..., redis_url=...)``: a started app on the kit's clock."""

    async def factory(**overrides: Any) -> Quart:
        return await make_app(clock=clock, refresh_grace=GRACE, **overrides)

    return factory


async def unavailable(response: Any) -> bool:
    body = await response.get_json()
    return response.status_code == 503 and body["error"] == "auth_unavailable"


async def listed(client: Any, pair: dict[str, Any]) -> set[str]:
    r = await client.get("/auth/sessions", headers=bearer(pair))
    assert r.status_code == 200
    return {s["id"] for s in (await r.get_json())["sessions"]}


# -- refresh --------------------------------------------------------------------------
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_refresh_refused_when_sql_fails_refreshes_long_after(
    build: AppFactory, database: CuttingProxy, postgres_url: str, clock: TokengateClock
) -> None:
    app = await build(database_url=through(database, postgres_url))
    client = app.test_client()
    pair = await register_and_login(client)
    # Redis rotates, then the SQL write of the rotation is cut: 503.
    database.cut_at(b"UPDATE sessions SET last_seen_at=$1::TIMESTAMP WITH TIME ZONE, access_jti")
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert await unavailable(r)
    assert database.cuts == 1
    # The client sends the same refresh again once the outage is over, long
    # after the grace window: it refreshes, and the session lives on.
    clock.advance(GRACE * 6)
    fresh = await refresh(client, pair["refresh_token"])
    assert isinstance(fresh, dict), fresh
    assert await me(client, fresh) == 200
    again = await refresh(client, fresh["refresh_token"])
    assert isinstance(again, dict), again
    # Now confirmed: the retired token past grace is theft, as always.
    clock.advance(GRACE + 1)
    assert await refresh(client, fresh["refresh_token"]) == "refresh_reused"


async def test_a_refresh_run_late_by_a_frozen_redis_refreshes_when_sent_again(
    build: AppFactory, frozen_redis: FreezableRedis, clock: TokengateClock
) -> None:
    app = await build(redis_url=frozen_redis.url)
    client = app.test_client()
    pair = await register_and_login(client)
    # A first refresh loads the script into Redis, so that the frozen one runs it.
    spare = await register_and_login(client)
    assert isinstance(await refresh(client, spare["refresh_token"]), dict)
    # The script reaches a hung Redis: the caller gets 503, and Redis runs it
    # once it wakes, stamped with the old time.
    frozen_redis.freeze()
    try:
        r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert await unavailable(r)
    finally:
        frozen_redis.thaw()
    clock.advance(GRACE * 6)
    fresh = await refresh(client, pair["refresh_token"])
    assert isinstance(fresh, dict), fresh
    assert await me(client, fresh) == 200


# -- login throttle ---------------------------------------------------------------------
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_logins_refused_by_a_database_outage_are_not_failures(
    build: AppFactory, database: CuttingProxy, postgres_url: str
) -> None:
    app = await build(database_url=through(database, postgres_url), login_max_failures=3)
    client = app.test_client()
    await register_and_login(client)
    database.refuse(True)
    try:
        for password in ["correct horse"] * 5 + ["wrong password"] * 5:
            r = await client.post("/auth/login", json={"username": "alice", "password": password})
            assert await unavailable(r)
    finally:
        database.refuse(False)
    r = await client.post("/auth/login", json={"username": "alice", "password": "correct horse"})
    assert r.status_code == 200, await r.get_data()


# -- logout and password change -----------------------------------------------------------
async def test_a_logout_cut_off_in_redis_leaves_the_session_alive_and_listed(
    build: AppFactory, redis_cut: CuttingProxy, frozen_redis: FreezableRedis
) -> None:
    app = await build(redis_url=f"redis://127.0.0.1:{redis_cut.port}/0")
    client = app.test_client()
    pair = await register_and_login(client)
    other = await register_and_login(client)
    # The end script is cut on its way to Redis (and on the client's one retry).
    redis_cut.cut_at(script_sha("end"))
    redis_cut.cut_at(script_sha("end"))
    r = await client.post("/auth/logout", headers=bearer(pair))
    assert await unavailable(r)
    assert redis_cut.cuts == 2
    assert await me(client, pair) == 200
    sid = claims(pair["access_token"])["sid"]
    assert sid in await listed(client, other)
    # Sent again after the outage: done.
    assert (await client.post("/auth/logout", headers=bearer(pair))).status_code == 204
    assert await me(client, pair) == "token_revoked"
    assert sid not in await listed(client, other)


async def test_a_password_change_cut_off_in_redis_changes_nothing(
    build: AppFactory, redis_cut: CuttingProxy
) -> None:
    app = await build(redis_url=f"redis://127.0.0.1:{redis_cut.port}/0")
    client = app.test_client()
    mine = await register_and_login(client)
    others = [await register_and_login(client) for _ in range(2)]
    change = {"current_password": "correct horse", "new_password": "battery staple"}
    redis_cut.cut_at(script_sha("end"))
    redis_cut.cut_at(script_sha("end"))
    r = await client.post("/auth/password", json=change, headers=bearer(mine))
    assert await unavailable(r)
    # Every session alive and listed, the old password still the password.
    every = {claims(p["access_token"])["sid"] for p in [mine, *others]}
    assert await listed(client, mine) == every
    assert [await me(client, p) for p in others] == [200, 200]
    again = await register_and_login(client)  # logs in with the old password
    every.add(claims(again["access_token"])["sid"])
    # The same request once Redis is back: done, every other session over.
    r = await client.post("/auth/password", json=change, headers=bearer(mine))
    assert r.status_code == 204, await r.get_data()
    assert [await me(client, p) for p in [*others, again]] == ["token_revoked"] * 3
    assert await listed(client, mine) == {claims(mine["access_token"])["sid"]}


async def test_a_logout_whose_reply_is_lost_ends_up_the_same_in_sql_and_redis(
    build: AppFactory, redis_cut: CuttingProxy, database_url: str
) -> None:
    """Redis ended the session but the reply never came: SQL follows Redis, never the reverse."""
    app = await build(redis_url=f"redis://127.0.0.1:{redis_cut.port}/0")
    client = app.test_client()
    pair = await register_and_login(client)
    other = await register_and_login(client)
    sid = claims(pair["access_token"])["sid"]
    # A first logout loads the script into Redis (else the lost reply is NOSCRIPT).
    spare = await register_and_login(client)
    assert (await client.post("/auth/logout", headers=bearer(spare))).status_code == 204
    # The script runs and its reply is lost; the client's one retry is cut.
    redis_cut.cut_at(script_sha("end"), after=True)
    redis_cut.cut_at(script_sha("end"))
    r = await client.post("/auth/logout", headers=bearer(pair))
    assert await unavailable(r), (r.status_code, await r.get_data())
    assert redis_cut.cuts == 2
    # The session is over (Redis decides), and nowhere listed...
    assert await me(client, pair) == "token_revoked"
    assert sid not in await listed(client, other)
    # ...and SQL records it too, in the background, so that a Redis rebuilt
    # from SQL could never bring it back.
    await get_gate(app).manager.background.drain()
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            query = text("SELECT end_reason FROM sessions WHERE id = :id")
            assert await conn.scalar(query, {"id": sid}) == "revoked"
    finally:
        await engine.dispose()
