"""Outages fail closed and fast, and the service recovers by itself."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from quart_tokengate.service.db.engine import build_engine
from quart_tokengate.service.db.migrate import upgrade
from quart_tokengate.service.errors import is_infrastructure_failure
from tests.conftest import bearer, refresh, register_and_login
from tests.support import assert_unavailable, free_port, timed_async, wait_for_async


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


async def test_database_down_a_reset_request_is_answered_and_sent_once_it_is_back(
    make_app, tmp_path
):
    """The reset's lookup runs in the background (same answer for any name), so it waits
    out an outage there and the message goes out when the database is back."""
    from quart_tokengate.service.db.engine import build_sessionmaker

    app = await make_app()
    client = app.test_client()
    await register_and_login(client)
    accounts = app.extensions["tokengate"].accounts
    good = accounts.db
    dead = build_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test")
    accounts.db = build_sessionmaker(dead)
    try:
        r, elapsed = await timed_async(
            lambda: client.post("/auth/password-reset/request", json={"username": "alice"})
        )
        assert (r.status_code, await r.get_json()) == (202, {}) and elapsed < 1
        outbox = tmp_path / "instance" / "outbox"
        assert not list(outbox.glob("*.json"))
    finally:
        accounts.db = good
        await dead.dispose()
    await wait_for_async(
        lambda: list(outbox.glob("*.json")), timeout=15, interval=0.05, what="the reset message"
    )


async def test_database_down_a_session_redis_lost_cannot_be_checked(make_app, redis_client, clock):
    """The guard needs no SQL while Redis holds the session; on a miss it does, and fails closed.

    Near checks off: with them, a session checked a moment ago may be answered near
    once more within its second (test_hung_backends bounds that second end to end).
    """
    app = await make_app(clock=clock, near_cache=False)
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


async def test_statements_the_database_cancels_are_unavailable_and_others_are_not(postgres):
    """The server's statement_timeout and lock_timeout are 503s; a broken constraint is not."""
    engine = build_engine(postgres.url)

    async def failure(*statements):
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                for statement in statements:
                    await conn.execute(text(statement))
        return caught.value

    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id int PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        # The server's timeouts made short, so that the client's cannot fire first.
        cancelled = await failure("SET statement_timeout = 50", "SELECT pg_sleep(5)")
        async with engine.connect() as holder:
            await holder.execute(text("SELECT id FROM t FOR UPDATE"))
            locked = await failure("SET lock_timeout = 50", "UPDATE t SET id = 1")
        duplicate = await failure("INSERT INTO t VALUES (1)")
    finally:
        await engine.dispose()
    errors = (cancelled, locked, duplicate)
    found = [(e.orig.sqlstate, is_infrastructure_failure(e)) for e in errors]
    assert found == [("57014", True), ("55P03", True), ("23505", False)]


@pytest.fixture
def migrated_postgres(postgres):
    upgrade(postgres.url)
    return postgres


async def test_a_refresh_waiting_on_a_locked_row_is_503_within_a_second(
    make_app, migrated_postgres
):
    app = await make_app(database_url=migrated_postgres.url)
    client = app.test_client()
    pair = await register_and_login(client)
    engine = build_engine(migrated_postgres.url)
    try:
        async with engine.connect() as holder:
            await holder.execute(
                text("SELECT id FROM sessions WHERE id = :sid FOR UPDATE"),
                {"sid": pair["session_id"]},
            )
            r, elapsed = await timed_async(
                lambda: client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
            )
            assert_unavailable(r, elapsed, await r.get_json())
    finally:
        await engine.dispose()
    # The lock gone, the same refresh succeeds (the grace window hands out the same pair).
    assert isinstance(await refresh(client, pair["refresh_token"]), dict)
