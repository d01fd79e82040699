"""Usernames people cannot confuse: the PRECIS UsernameCaseMapped profile (RFC 8265) and
the TR 39 look-alike skeleton, on the route, in the database, in the OpenAPI document."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from quart_tokengate.service import usernames
from quart_tokengate.service.db.migrate import upgrade
from tests.conftest import login_attempt, register

ALICE = "alice"
ZERO_WIDTH = "a\u200dlice"  # a zero-width joiner inside
CYRILLIC = "\u0430lice"  # Cyrillic small a
FULL_WIDTH = "\uff41lice"  # full-width small a
ALL_FULL_WIDTH = "\uff41\uff4c\uff49\uff43\uff45"


async def register_answer(client, username: str) -> tuple[int, dict]:
    r = await client.post(
        "/auth/register", json={"username": username, "password": "correct horse"}
    )
    return r.status_code, await r.get_json()


async def test_look_alike_names_cannot_register_beside_alice(app):
    client = app.test_client()
    user_id = await register(client, ALICE)
    status, body = await register_answer(client, ZERO_WIDTH)
    assert (status, body["error"]) == (400, "invalid_request")
    for name in (CYRILLIC, FULL_WIDTH, ALL_FULL_WIDTH, "ALICE", "Alice"):
        status, body = await register_answer(client, name)
        assert (status, body["error"]) == (409, "username_taken"), name
    # Look-alikes in the other direction, and ones made of several characters.
    await register(client, "paypal")
    assert (await register_answer(client, "p\u0430yp\u0430l"))[0] == 409
    await register(client, "rn")
    assert (await register_answer(client, "m"))[0] == 409
    # Names of other scripts that look like no taken one are welcome.
    for name in ("\u043c\u0430\u0440\u0438\u044f", "\u738b\u5c0f\u660e", "stra\u00dfe"):
        assert (await register_answer(client, name))[0] == 201, name
    assert user_id == 1


async def test_a_name_is_kept_case_mapped_and_found_in_any_case_or_width(app):
    client = app.test_client()
    status, body = await register_answer(client, "Alice")
    assert (status, body["username"]) == (201, "alice")
    for given in ("alice", "ALICE", ALL_FULL_WIDTH, "\uff21lice"):
        r = await login_attempt(client, given)
        assert r.status_code == 200, given
        me = await client.get(
            "/auth/me", headers={"Authorization": f"Bearer {(await r.get_json())['access_token']}"}
        )
        assert (await me.get_json())["username"] == "alice"
    # A look-alike is someone else, and nobody: no login.
    assert (await login_attempt(client, CYRILLIC)).status_code == 401


async def test_every_form_of_a_name_shares_one_throttle_count(make_app):
    app = await make_app(login_max_failures=2)
    client = app.test_client()
    await register(client, ALICE)
    for given in ("Alice", ALL_FULL_WIDTH):
        r = await login_attempt(client, given, "wrong password", ip="10.0.8.1")
        assert r.status_code == 401
    assert (await login_attempt(client, "ALICE", ip="10.0.8.1")).status_code == 429


async def test_two_look_alikes_racing_one_wins(app):
    client = app.test_client()
    for _ in range(5):
        names = (f"racer{_}", f"r\u0430cer{_}")  # Latin and Cyrillic a
        answers = await asyncio.gather(*(register_answer(client, n) for n in names))
        assert sorted(status for status, _ in answers) == [201, 409]


async def test_the_skeleton_is_stored_under_a_unique_index(app, database_url):
    await register(app.test_client(), "Alice")
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT username, username_skeleton FROM users"))).one()
            assert tuple(row) == ("alice", usernames.skeleton("alice"))
            with pytest.raises(Exception, match=r"(?i)unique"):
                await conn.execute(
                    text(
                        "INSERT INTO users (username, username_skeleton, password_hash, "
                        "created_at, password_changed_at, disabled, scopes) VALUES "
                        "('x', :s, 'h', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, false, '')"
                    ),
                    {"s": usernames.skeleton("alice")},
                )
    finally:
        await engine.dispose()


async def test_the_document_states_the_one_definition(app):
    document = await (await app.test_client().get("/openapi.json")).get_json()
    schemas = document["components"]["schemas"]
    for name in ("Registration", "LoginRequest", "ResetRequest"):
        field = schemas[name]["properties"]["username"]
        assert field["pattern"] == usernames.PATTERN, name
        assert field["maxLength"] == usernames.MAX_LENGTH
        assert "UsernameCaseMapped" in field["description"]


async def test_the_migration_backfills_skeletons_and_keeps_old_look_alikes(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(upgrade, url, "3e6b1f9a7d25")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for name in ("Alice", CYRILLIC, "bob"):
                await conn.execute(
                    text(
                        "INSERT INTO users (username, password_hash, created_at, "
                        "password_changed_at, disabled, scopes) VALUES "
                        "(:n, 'h', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, false, '')"
                    ),
                    {"n": name},
                )
        await asyncio.to_thread(upgrade, url)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, username_skeleton FROM users"))).all()
    finally:
        await engine.dispose()
    assert dict(rows) == {1: "alice", 2: "alice#2", 3: "bob"}
