"""Interleavings and part-way failures: nothing ended comes back, nothing is half done."""

import asyncio
import json

from quart import Quart
from sqlalchemy import update

from quart_tokengate.service import Settings, TokenGate, login_required
from quart_tokengate.service.db.models import AuthSession
from quart_tokengate.service.passwords import Passwords, Verdict
from tests.conftest import FAST_HASHER, bearer, me, register_and_login
from tests.support import SECRET


class HeldPasswords(Passwords):
    """Real argon2id; a verify of ``held`` waits, after checking, until released."""

    def __init__(self) -> None:
        super().__init__(FAST_HASHER)
        self.held: str | None = None
        self.checked = asyncio.Event()
        self.release = asyncio.Event()

    async def verify(self, stored: str | None, password: str) -> Verdict:
        verdict = await super().verify(stored, password)
        if password == self.held:
            self.held = None
            self.checked.set()
            await self.release.wait()
        return verdict


async def test_a_login_checked_before_a_password_change_does_not_survive_it(
    redis_client, redis_url, database_url, tmp_path
):
    passwords = HeldPasswords()
    settings = Settings(
        secret_key=SECRET, redis_url=redis_url, database_url=database_url,
        instance_dir=tmp_path / "instance",
    )  # fmt: skip
    from quart_tokengate.service import create_app

    app = create_app(settings, passwords=passwords)
    async with app.test_app():
        client = app.test_client()
        owner = await register_and_login(client)
        # The thief knows the old password; their login is held right after the check.
        passwords.held = "correct horse"
        thief = asyncio.create_task(
            client.post("/auth/login", json={"username": "alice", "password": "correct horse"})
        )
        await passwords.checked.wait()
        r = await client.post(
            "/auth/password",
            json={"current_password": "correct horse", "new_password": "battery staple"},
            headers=bearer(owner["access_token"]),
        )
        assert r.status_code == 204
        passwords.release.set()
        r = await thief
        assert (r.status_code, (await r.get_json())["error"]) == (401, "invalid_credentials")
        r = await client.get("/auth/sessions", headers=bearer(owner["access_token"]))
        assert [s["id"] for s in (await r.get_json())["sessions"]] == [owner["session_id"]]


async def test_a_password_change_that_fails_part_way_can_be_retried(make_app, private_redis):
    app = await make_app(redis_url=private_redis.url)
    client = app.test_client()
    here = await register_and_login(client)
    thief = await register_and_login(client)
    change = {"current_password": "correct horse", "new_password": "battery staple"}
    private_redis.stop()
    r = await client.post("/auth/password", json=change, headers=bearer(here["access_token"]))
    assert r.status_code == 503
    private_redis.start()
    # Nothing was half done: the old password still works, so the retry does.
    r = await client.post("/auth/password", json=change, headers=bearer(here["access_token"]))
    assert r.status_code == 204
    assert await me(client, thief) == "token_revoked"
    assert await me(client, here) == 200


async def test_a_reset_that_fails_part_way_keeps_its_token(make_app, private_redis, tmp_path):
    app = await make_app(redis_url=private_redis.url)
    client = app.test_client()
    thief = await register_and_login(client)
    purpose_tokens = app.extensions["tokengate"].purpose_tokens
    token = await purpose_tokens.issue(1, "password_reset", 900)
    confirm = {"token": token, "new_password": "battery staple"}
    private_redis.stop()
    r = await client.post("/auth/password-reset/confirm", json=confirm)
    assert r.status_code == 503
    private_redis.start()
    r = await client.post("/auth/password-reset/confirm", json=confirm)
    assert r.status_code == 204
    assert await me(client, thief) == "token_revoked"
    r = await client.post("/auth/password-reset/confirm", json=confirm)
    assert (await r.get_json())["error"] == "invalid_token"
    r = await client.post("/auth/login", json={"username": "alice", "password": "battery staple"})
    assert r.status_code == 200


async def test_sql_catches_up_on_a_retried_refresh(make_app, clock, redis_client):
    """The first answer's SQL write was lost; the retry within grace repairs SQL."""
    app = await make_app(clock=clock)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(1)
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    new = await r.get_json()
    gate = app.extensions["tokengate"]
    async with gate.db() as db:
        row = await db.get(AuthSession, pair["session_id"])
        stale = {"refresh_jti": row.previous_refresh_jti, "previous_refresh_jti": None}
        await db.execute(update(AuthSession).where(AuthSession.id == row.id).values(**stale))
        await db.commit()
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert (await r.get_json())["refresh_token"] == new["refresh_token"]
    # Redis loses everything (the app's database on it); SQL must know the
    # latest token, not the retired one.
    await redis_client.flushdb()
    clock.advance(1)
    r = await client.post("/auth/refresh", json={"refresh_token": new["refresh_token"]})
    assert r.status_code == 200


async def test_redis_down_inside_a_host_app_is_503_json(database_url, private_redis, tmp_path):
    app = Quart("host")

    @app.get("/notes")
    @login_required
    async def notes():
        return {"ok": True}

    settings = Settings(
        secret_key=SECRET, redis_url=private_redis.url, database_url=database_url,
        instance_dir=tmp_path / "instance",
    )  # fmt: skip
    TokenGate(app, settings=settings, passwords=Passwords(FAST_HASHER))
    async with app.test_app():
        client = app.test_client()
        pair = await register_and_login(client)
        private_redis.stop()
        for call in [
            client.get("/notes", headers=bearer(pair["access_token"])),
            client.get("/auth/me", headers=bearer(pair["access_token"])),
            client.post("/auth/login", json={"username": "alice", "password": "correct horse"}),
        ]:
            r = await call
            assert r.status_code == 503
            assert (await r.get_json())["error"] == "auth_unavailable"
            assert r.headers["Retry-After"] == "1"


async def test_a_refresh_token_in_a_form_body_cannot_log_a_browser_in(make_app):
    app = await make_app(token_location=("cookies", "headers"))
    client = app.test_client()
    mallory = await register_and_login(client, "mallory")
    victim = app.test_client()
    r = await victim.post(
        "/auth/refresh",
        data=json.dumps({"refresh_token": mallory["refresh_token"]}).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert (r.status_code, (await r.get_json())["error"]) == (400, "invalid_request")
    assert not r.headers.getlist("Set-Cookie")
