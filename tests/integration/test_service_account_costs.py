"""What service-account tokens cost: the guard's one round trip, and fetches that write nothing."""

import asyncio

import pytest
from quart import Quart
from sqlalchemy import event

from tests.integration.test_service_accounts import fetch_basic, registry
from tests.support import PrivateRedis, bearer, commandstats_async


@pytest.fixture
def redis_url(private_redis: PrivateRedis) -> str:
    """A server of the test's own: the counts are per server, and nothing else may add to them."""
    return private_redis.url


@pytest.fixture
def app(quiet_app: Quart) -> Quart:
    return quiet_app


def statements_of(app):
    engine = app.extensions["tokengate"]._engine
    seen: list[str] = []

    def count(*args):
        seen.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    return seen, lambda: event.remove(engine.sync_engine, "before_cursor_execute", count)


async def test_a_client_token_costs_the_guard_one_script_call_and_no_sql(app, redis_client):
    cid, secret = await registry(app).create("svc", ["a"])
    client = app.test_client()
    token = (await (await fetch_basic(client, cid, secret)).get_json())["access_token"]
    await asyncio.gather(*(client.get("/auth/me", headers=bearer(token)) for _ in range(20)))
    statements, stop = statements_of(app)
    try:
        await redis_client.config_resetstat()
        await asyncio.gather(*(client.get("/auth/me", headers=bearer(token)) for _ in range(30)))
        stats = await commandstats_async(redis_client)
    finally:
        stop()
    assert stats == {"evalsha": 30, "exists": 30, "hmget": 30, "hset": 30}
    assert statements == []


async def test_later_fetches_write_no_sql_and_make_one_round_trip(app, redis_client):
    cid, secret = await registry(app).create("svc", [])
    client = app.test_client()
    # The first opens the session, the second loads the check script.
    for _ in range(2):
        assert (await fetch_basic(client, cid, secret)).status_code == 200
    statements, stop = statements_of(app)
    try:
        await redis_client.config_resetstat()
        for _ in range(10):
            assert (await fetch_basic(client, cid, secret)).status_code == 200
        stats = await commandstats_async(redis_client)
    finally:
        stop()
    # Each fetch reads the client (one SELECT) and checks its session (one EVALSHA).
    assert stats == {"evalsha": 10, "exists": 10, "hmget": 10, "hset": 10}
    assert len(statements) == 10
    assert all(s.lstrip().upper().startswith("SELECT") for s in statements)
