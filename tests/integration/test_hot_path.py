"""The guard's hot path: one JWT check, one EVALSHA, no SQL."""

import asyncio

import pytest
from quart import Quart
from sqlalchemy import event

from tests.conftest import bearer, register_and_login
from tests.support import PrivateRedis, commandstats_async, redis_up_a_while


@pytest.fixture
def redis_url(private_redis: PrivateRedis) -> str:
    """A server of the test's own: the counts are per server, and nothing else may add to them."""
    return private_redis.url


@pytest.fixture
def app(quiet_app: Quart) -> Quart:
    return quiet_app


async def test_one_script_call_per_request_and_nothing_else(app, redis_client):
    client = app.test_client()
    pair = await register_and_login(client)
    # Load the script and warm the connection pool.
    await asyncio.gather(
        *(client.get("/auth/me", headers=bearer(pair["access_token"])) for _ in range(50))
    )
    engine = app.extensions["tokengate"]._engine
    statements = []

    def count(*args):
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        await redis_client.config_resetstat()
        for _ in range(25):
            r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
            assert r.status_code == 200
        await asyncio.gather(
            *(client.get("/auth/me", headers=bearer(pair["access_token"])) for _ in range(25))
        )
        stats = await commandstats_async(redis_client)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    # One EVALSHA per request; inside it, one EXISTS, one HMGET, one HSET.
    assert stats == {"evalsha": 50, "exists": 50, "hmget": 50, "hset": 50}
    assert statements == []


async def test_a_refresh_is_one_script_call_plus_the_sql_record(make_app, clock, redis_client):
    # Near checks off: with them, the end also waits for this instance's own
    # acknowledgement (ack.lua, LPOP), which test_near_checks covers.
    app = await make_app(clock=clock, near_cache=False)
    client = app.test_client()
    pair = await register_and_login(client)
    await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    # In Redis's first seconds an end also waits out any lease (a restart may have lost
    # them: polling acknowledgements, LPOP); test_near_checks covers that.
    await redis_up_a_while(redis_client)
    await redis_client.config_resetstat()
    clock.advance(11)
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert (await r.get_json())["error"] == "refresh_reused"
    stats = await commandstats_async(redis_client)
    # The end is announced in the same script (PUBLISH), then the near-check
    # lease holders are read once (none here): that script is new to this
    # server, so its EVALSHA is refused once and it is loaded.
    assert stats == {
        "evalsha": 3, "exists": 1, "hmget": 1, "hset": 1, "zrem": 1,
        "publish": 1, "script": 1, "time": 1, "zrangebyscore": 1,
    }  # fmt: skip


async def test_the_guard_takes_the_pipelined_path_and_it_is_measured(app):
    """The service's own Redis client (``TimedRedis``, a subclass) still gets the lean path,
    and its round trips land in ``tokengate_redis_roundtrip_seconds`` as every command's do."""
    from quart_tokengate.service.metrics import metrics

    store = app.extensions["tokengate"].manager.store
    assert store.pipelined is not None
    client = app.test_client()
    pair = await register_and_login(client)
    histogram = metrics().redis_seconds
    before = histogram._sum.get(), sum(b.get() for b in histogram._buckets)
    calls: list[float] = []
    observe = store.pipelined.observe
    store.pipelined.observe = lambda seconds, exc: (calls.append(seconds), observe(seconds, exc))
    try:
        for _ in range(3):
            r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
            assert r.status_code == 200
    finally:
        store.pipelined.observe = observe
    assert len(calls) == 3
    assert sum(b.get() for b in histogram._buckets) == before[1] + 3
    assert histogram._sum.get() > before[0]


async def test_an_api_key_request_is_one_script_call_and_nothing_else(app, redis_client):
    client = app.test_client()
    pair = await register_and_login(client)
    r = await client.post(
        "/auth/api-keys", json={"name": "bench"}, headers=bearer(pair["access_token"])
    )
    key = (await r.get_json())["key"]
    # The first use builds the key's state from SQL and writes its last use.
    await asyncio.gather(*(client.get("/auth/me", headers=bearer(key)) for _ in range(20)))
    await app.extensions["tokengate"].manager.background.drain()
    engine = app.extensions["tokengate"]._engine
    statements = []

    def count(*args):
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        await redis_client.config_resetstat()
        for _ in range(25):
            r = await client.get("/auth/me", headers=bearer(key))
            assert r.status_code == 200
        await asyncio.gather(*(client.get("/auth/me", headers=bearer(key)) for _ in range(25)))
        stats = await commandstats_async(redis_client)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    # One EVALSHA per request; inside it, one HMGET (last use is written once a minute).
    assert stats == {"evalsha": 50, "hmget": 50}
    assert statements == []


async def test_a_rate_limited_api_key_is_still_one_script_call(make_app, redis_client):
    app = await make_app(rate_limit=(1000, 3600), near_cache=False)
    client = app.test_client()
    pair = await register_and_login(client)
    r = await client.post(
        "/auth/api-keys", json={"name": "bench"}, headers=bearer(pair["access_token"])
    )
    key = (await r.get_json())["key"]
    await client.get("/auth/me", headers=bearer(key))
    await app.extensions["tokengate"].manager.background.drain()
    await redis_client.config_resetstat()
    for _ in range(10):
        assert (await client.get("/auth/me", headers=bearer(key))).status_code == 200
    stats = await commandstats_async(redis_client)
    # The key's state and its counter are read, the count written: one EVALSHA.
    assert stats == {"evalsha": 10, "hmget": 20, "hset": 10}
