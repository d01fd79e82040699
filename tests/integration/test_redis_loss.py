"""Redis losing its data (FLUSHALL, or a restart without persistence) loses nothing.

Never a FLUSHALL on the Redis the tests share (in CI the machine's own, where
other tests use other databases): a server of the test's own for that, and
FLUSHDB on the app's own database elsewhere.
"""

import redis.asyncio

from tests.conftest import bearer, me, refresh, register_and_login


async def scenario(make_app, clock, lose_data, **settings):
    """Sessions in every state, then Redis loses everything: each keeps its state."""
    app = await make_app(clock=clock, max_sessions=2, refresh_grace=5, **settings)
    client = app.test_client()
    replaced = await register_and_login(client)
    live = await register_and_login(client)
    logged_out = await register_and_login(client)
    await client.post("/auth/logout", headers=bearer(logged_out["access_token"]))
    clock.advance(1)
    rotated = await refresh(client, live["refresh_token"])
    other = await register_and_login(client, "bob")
    assert await me(client, replaced) == "session_replaced"

    await lose_data()

    assert await me(client, live) == 200
    assert await me(client, rotated) == 200
    assert await me(client, other) == 200
    assert await me(client, logged_out) == "token_revoked"
    assert await me(client, replaced) == "session_replaced"
    # Within the grace window the old refresh token still returns the same pair...
    again = await refresh(client, live["refresh_token"])
    assert again["refresh_token"] == rotated["refresh_token"]
    # ...and after it, reuse is still detected.
    clock.advance(6)
    assert await refresh(client, live["refresh_token"]) == "refresh_reused"
    assert await me(client, rotated) == "token_revoked"
    # The per-user limit still counts the sessions SQL knows are live.
    await lose_data()
    newest = await register_and_login(client, "bob")
    newer = await register_and_login(client, "bob")
    assert await me(client, other) == "session_replaced"
    assert (await me(client, newest), await me(client, newer)) == (200, 200)


async def test_flushall(make_app, clock, private_redis):
    server = redis.asyncio.Redis.from_url(private_redis.url)
    try:
        await scenario(make_app, clock, server.flushall, redis_url=private_redis.url)
    finally:
        await server.aclose()


async def test_restart_without_persistence(make_app, clock, private_redis):
    async def restart():
        private_redis.stop()
        private_redis.start()

    await scenario(make_app, clock, restart, redis_url=private_redis.url)


async def test_idle_state_survives_a_flush(make_app, clock, redis_client):
    app = await make_app(clock=clock, idle_timeout=100, access_ttl=3600)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(150)
    assert await me(client, pair) == "session_expired"
    await redis_client.flushdb()
    assert await me(client, pair) == "session_expired"
