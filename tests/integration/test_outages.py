"""Outages fail closed and fast, and the service recovers by itself."""

from tests.conftest import bearer, register_and_login
from tests.support import assert_unavailable, free_port, timed_async


async def test_redis_down_every_auth_route_answers_503_fast_then_recovers(make_app, private_redis):
    app = await make_app(redis_url=private_redis.url)
    client = app.test_client()
    pair = await register_and_login(client)
    auth = bearer(pair["access_token"])
    private_redis.stop()

    calls = {
        "me": lambda: client.get("/auth/me", headers=auth),
        "sessions": lambda: client.get("/auth/sessions", headers=auth),
        "logout": lambda: client.post("/auth/logout", headers=auth),
        "login": lambda: client.post(
            "/auth/login", json={"username": "alice", "password": "correct horse"}
        ),
        "refresh": lambda: client.post(
            "/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        ),
    }
    for call in calls.values():
        r, elapsed = await timed_async(call)
        assert_unavailable(r, elapsed, await r.get_json())
    r = await client.get("/healthz")
    assert r.status_code == 503
    assert await r.get_json() == {
        "status": "unavailable",
        "database": "ok",
        "redis": "unavailable",
        "schema": "ok",
    }

    private_redis.start()
    assert (await client.get("/auth/me", headers=auth)).status_code == 200
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 200
    assert (await client.get("/healthz")).status_code == 200


async def test_logout_during_an_outage_is_not_lost(make_app, private_redis):
    app = await make_app(redis_url=private_redis.url)
    client = app.test_client()
    pair = await register_and_login(client)
    auth = bearer(pair["access_token"])
    private_redis.stop()
    assert (await client.post("/auth/logout", headers=auth)).status_code == 503
    private_redis.start()
    # The logout failed as a whole; the client retries it and it holds.
    assert (await client.post("/auth/logout", headers=auth)).status_code == 204
    r = await client.get("/auth/me", headers=auth)
    assert (await r.get_json())["error"] == "token_revoked"


async def test_database_down(make_app, redis_client):
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test"
    app = await make_app(database_url=dead)
    client = app.test_client()
    for call in [
        lambda: client.post("/auth/login", json={"username": "alice", "password": "correct horse"}),
        lambda: client.post(
            "/auth/register", json={"username": "alice", "password": "correct horse"}
        ),
        lambda: client.post("/auth/password-reset/request", json={"username": "alice"}),
    ]:
        r, elapsed = await timed_async(call)
        assert_unavailable(r, elapsed, await r.get_json())
    r = await client.get("/healthz")
    assert r.status_code == 503
    assert await r.get_json() == {
        "status": "unavailable",
        "database": "unavailable",
        "redis": "ok",
        "schema": "unknown",
    }


async def test_database_down_a_session_redis_lost_cannot_be_checked(make_app, redis_client, clock):
    """The guard needs no SQL while Redis holds the session; on a miss it does, and fails closed."""
    app = await make_app(clock=clock)
    client = app.test_client()
    pair = await register_and_login(client)
    gate = app.extensions["tokengate"]
    await gate._engine.dispose()
    good_url = gate.settings.sqlalchemy_url
    # Point the running app at a database that does not answer.
    from quart_tokengate.service.db.engine import build_engine, build_sessionmaker

    dead = build_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test")
    gate.manager.db = build_sessionmaker(dead)
    try:
        assert (
            await client.get("/auth/me", headers=bearer(pair["access_token"]))
        ).status_code == 200
        # Redis loses the app's data: its own database, not the whole (maybe shared) server.
        await redis_client.flushdb()
        r, elapsed = await timed_async(
            lambda: client.get("/auth/me", headers=bearer(pair["access_token"]))
        )
        assert_unavailable(r, elapsed, await r.get_json())
    finally:
        await dead.dispose()
        gate._engine = build_engine(good_url)
        gate.manager.db = build_sessionmaker(gate._engine)
