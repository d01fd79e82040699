"""TOKENGATE_MAX_SESSIONS: the newest login wins, atomically, even under concurrency."""

import asyncio

import pytest
from sqlalchemy import func, select

from quart_tokengate.service.db.models import AuthSession
from tests.conftest import login_attempt, me, register, register_and_login


async def test_newest_login_wins(make_app):
    app = await make_app(max_sessions=1)
    client = app.test_client()
    first = await register_and_login(client)
    second = await register_and_login(client)
    assert await me(client, first) == "session_replaced"
    r = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert (await r.get_json())["error"] == "session_replaced"
    assert await me(client, second) == 200


async def test_no_limit_by_default(app):
    client = app.test_client()
    pairs = [await register_and_login(client) for _ in range(5)]
    assert [await me(client, p) for p in pairs] == [200] * 5


async def test_limit_of_two_pushes_out_the_oldest(make_app):
    app = await make_app(max_sessions=2)
    client = app.test_client()
    pairs = [await register_and_login(client) for _ in range(4)]
    assert [await me(client, p) for p in pairs] == [
        "session_replaced", "session_replaced", 200, 200,
    ]  # fmt: skip


@pytest.mark.parametrize("limit", [1, 3])
async def test_limit_holds_under_twenty_concurrent_logins(make_app, limit):
    app = await make_app(max_sessions=limit)
    client = app.test_client()
    await register(client)
    responses = await asyncio.gather(*(login_attempt(client) for _ in range(20)))
    results = [await r.get_json() for r in responses]
    pairs = [p for p in results if "access_token" in p]
    statuses = [await me(client, p) for p in pairs]
    assert statuses.count(200) == limit
    assert set(statuses) <= {200, "session_replaced"}
    async with app.extensions["tokengate"].db() as db:
        live = (
            await db.execute(
                select(func.count()).select_from(AuthSession).where(AuthSession.ended_at.is_(None))
            )
        ).scalar_one()
    assert live == limit


async def test_logins_of_other_users_do_not_count(make_app):
    app = await make_app(max_sessions=1)
    client = app.test_client()
    alice = await register_and_login(client)
    await register_and_login(client, "bob")
    assert await me(client, alice) == 200
