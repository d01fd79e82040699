"""Idle timeout and absolute age, on an injected clock, to within one second."""

from tests.conftest import bearer, me, refresh, register_and_login


async def test_activity_keeps_a_session_alive_and_silence_ends_it(make_app, clock):
    app = await make_app(clock=clock, idle_timeout=10, access_ttl=3600)
    client = app.test_client()
    pair = await register_and_login(client)
    for _ in range(5):  # 45 s of activity, never 10 s apart
        clock.advance(9)
        assert await me(client, pair) == 200
    clock.advance(9.5)
    assert await me(client, pair) == 200
    clock.advance(10.5)
    assert await me(client, pair) == "session_expired"
    with clock.pinned(clock() - 10):  # even back in time, the session stays over
        assert await me(client, pair) == "session_expired"
        assert await refresh(client, pair["refresh_token"]) == "session_expired"


async def test_refresh_counts_as_activity(make_app, clock):
    app = await make_app(clock=clock, idle_timeout=10, access_ttl=5)
    client = app.test_client()
    pair = await register_and_login(client)
    for _ in range(4):
        clock.advance(8)
        pair = await refresh(client, pair["refresh_token"])
        assert isinstance(pair, dict)
    clock.advance(10)
    assert await refresh(client, pair["refresh_token"]) == "session_expired"


async def test_idle_timeout_zero_turns_it_off(make_app, clock):
    app = await make_app(clock=clock, idle_timeout=0, access_ttl=100_000)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(86_400)
    assert await me(client, pair) == 200


async def test_absolute_age_ends_even_an_active_session(make_app, clock):
    app = await make_app(clock=clock, idle_timeout=10, session_max_age=30, access_ttl=5)
    client = app.test_client()
    pair = await register_and_login(client)
    for _ in range(3):
        clock.advance(9)
        pair = await refresh(client, pair["refresh_token"])
        assert isinstance(pair, dict)
    clock.advance(2.5)  # 29.5 s old
    assert await me(client, pair) == 200
    clock.advance(1)  # 30.5 s old
    assert await me(client, pair) == "session_expired"


async def test_an_expired_session_is_recorded_and_leaves_the_list(make_app, clock):
    app = await make_app(clock=clock, idle_timeout=10, access_ttl=3600)
    client = app.test_client()
    old = await register_and_login(client)
    clock.advance(11)
    new = await register_and_login(client)
    r = await client.get("/auth/sessions", headers=bearer(new["access_token"]))
    assert [s["id"] for s in (await r.get_json())["sessions"]] == [new["session_id"]]
    assert await me(client, old) == "session_expired"
    from quart_tokengate.service.db.models import AuthSession

    async with app.extensions["tokengate"].db() as db:
        row = await db.get(AuthSession, old["session_id"])
    assert row.end_reason == "expired" and row.ended_at is not None


async def test_an_expired_token_names_why_its_session_is_over(make_app, clock):
    """An expired token of a live session is token_expired; of an ended one, the end's reason."""
    app = await make_app(clock=clock, idle_timeout=100, access_ttl=60, implicit_refresh=False)
    client = app.test_client()
    idle, live, out = [await register_and_login(client) for _ in range(3)]
    assert (await client.post("/auth/logout", headers=bearer(out))).status_code == 204
    clock.advance(61)
    assert await me(client, live) == "token_expired"
    assert await me(client, out) == "token_revoked"
    # Meeting an expired token is not activity: the session still goes idle on time.
    clock.advance(39)
    assert await me(client, idle) == "session_expired"
    assert await me(client, live) == "session_expired"
    assert await refresh(client, live["refresh_token"]) == "session_expired"
