"""Ending sessions: logout, logout-all, the sessions list, deleting one, changing the password."""

from sqlalchemy import select

from quart_tokengate.service.db.models import AuthSession
from tests.conftest import bearer, me, refresh, register_and_login


async def ended_reasons(app):
    async with app.extensions["tokengate"].db() as db:
        rows = (await db.execute(select(AuthSession))).scalars().all()
    return {row.id: row.end_reason for row in rows}


async def test_logout_ends_access_and_refresh_at_once(app):
    client = app.test_client()
    pair = await register_and_login(client)
    other = await register_and_login(client)
    r = await client.post("/auth/logout", headers=bearer(pair["access_token"]))
    assert r.status_code == 204
    assert await me(client, pair) == "token_revoked"
    assert await refresh(client, pair["refresh_token"]) == "token_revoked"
    assert await me(client, other) == 200
    assert (await ended_reasons(app))[pair["session_id"]] == "revoked"


async def test_logout_all_ends_every_session_of_the_user_only(app):
    client = app.test_client()
    mine = [await register_and_login(client) for _ in range(3)]
    theirs = await register_and_login(client, "bob")
    r = await client.post("/auth/logout-all", headers=bearer(mine[0]["access_token"]))
    assert r.status_code == 204
    for pair in mine:
        assert await me(client, pair) == "token_revoked"
        assert await refresh(client, pair["refresh_token"]) == "token_revoked"
    assert await me(client, theirs) == 200


async def test_sessions_list(app):
    client = app.test_client()
    first = await register_and_login(client, device="phone")
    second = await register_and_login(client, device="laptop")
    await register_and_login(client, "bob")
    await client.post("/auth/logout", headers=bearer(first["access_token"]))
    third = await register_and_login(client, device="tablet")
    r = await client.get(
        "/auth/sessions", headers={**bearer(second["access_token"]), "User-Agent": "tg-test/1"}
    )
    sessions = (await r.get_json())["sessions"]
    assert [s["device"] for s in sessions] == ["laptop", "tablet"]
    assert [s["id"] for s in sessions] == [second["session_id"], third["session_id"]]
    assert [s["current"] for s in sessions] == [True, False]
    for s in sessions:
        assert set(s) == {
            "id",
            "device",
            "ip",
            "user_agent",
            "created_at",
            "last_seen_at",
            "current",
        }
        assert s["created_at"].endswith("Z") and s["last_seen_at"].endswith("Z")


async def test_delete_one_of_my_sessions(app):
    client = app.test_client()
    first = await register_and_login(client)
    second = await register_and_login(client)
    r = await client.delete(
        f"/auth/sessions/{second['session_id']}", headers=bearer(first["access_token"])
    )
    assert r.status_code == 204
    assert await me(client, second) == "token_revoked"
    assert await me(client, first) == 200


async def test_deleting_someone_elses_session_is_not_found_and_changes_nothing(app):
    client = app.test_client()
    mine = await register_and_login(client)
    theirs = await register_and_login(client, "bob")
    r = await client.delete(
        f"/auth/sessions/{theirs['session_id']}", headers=bearer(mine["access_token"])
    )
    assert r.status_code == 404
    assert (await r.get_json())["error"] == "not_found"
    assert await me(client, theirs) == 200


async def test_password_change_ends_every_other_session(app):
    client = app.test_client()
    here = await register_and_login(client)
    elsewhere = await register_and_login(client)
    r = await client.post(
        "/auth/password",
        json={"current_password": "wrong password", "new_password": "battery staple"},
        headers=bearer(here["access_token"]),
    )
    assert (r.status_code, (await r.get_json())["error"]) == (401, "invalid_credentials")
    assert await me(client, elsewhere) == 200
    r = await client.post(
        "/auth/password",
        json={"current_password": "correct horse", "new_password": "battery staple"},
        headers=bearer(here["access_token"]),
    )
    assert r.status_code == 204
    assert await me(client, here) == 200
    assert await me(client, elsewhere) == "token_revoked"
    old = await client.post("/auth/login", json={"username": "alice", "password": "correct horse"})
    assert old.status_code == 401
    new = await client.post("/auth/login", json={"username": "alice", "password": "battery staple"})
    assert new.status_code == 200
