"""Purpose tokens (single use, bound to a user and a purpose) and password reset on them."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from pathlib import Path

import jwt
import pytest

from quart_tokengate.service import Settings, create_app
from quart_tokengate.service.errors import InvalidToken
from quart_tokengate.service.outbox import Message
from quart_tokengate.service.passwords import Passwords
from tests.conftest import FAST_HASHER, bearer, register, register_and_login
from tests.support import SECRET

RESET_TTL = 900


@pytest.fixture
async def app(make_app, clock):
    return await make_app(clock=clock, login_max_failures=3)


@pytest.fixture
def manager(app):
    return app.extensions["tokengate"].purpose_tokens


def outbox_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "instance" / "outbox").glob("*.json"))


async def settled(app) -> None:
    """Let the background work of the requests so far finish: reset messages are sent there."""
    await app.extensions["tokengate"].manager.background.drain()


# -- the API ----------------------------------------------------------------


async def test_mint_and_consume_once(app, manager):
    uid = await register(app.test_client())
    token = await manager.issue(uid, "email_verify", 600, {"email": "a@example.com"})
    assert jwt.get_unverified_header(token)["typ"] == "pt+jwt"
    assert await manager.consume(token, "email_verify") == (
        uid,
        {"email": "a@example.com"},
    )
    with pytest.raises(InvalidToken):
        await manager.consume(token, "email_verify")


async def test_data_is_optional(app, manager):
    uid = await register(app.test_client())
    token = await manager.issue(uid, "invite", 60)
    assert await manager.consume(token, "invite") == (uid, {})


async def test_a_wrong_purpose_is_refused_and_does_not_use_the_token(app, manager):
    uid = await register(app.test_client())
    token = await manager.issue(uid, "email_verify", 600)
    with pytest.raises(InvalidToken):
        await manager.consume(token, "password_reset")
    assert (await manager.consume(token, "email_verify"))[0] == uid


async def test_an_expired_token_is_refused(app, manager, clock):
    uid = await register(app.test_client())
    token = await manager.issue(uid, "email_verify", 600)
    clock.advance(600)
    with pytest.raises(InvalidToken):
        await manager.consume(token, "email_verify")


async def test_each_token_has_its_own_lifetime(app, manager, clock):
    uid = await register(app.test_client())
    short = await manager.issue(uid, "login_link", 60)
    long = await manager.issue(uid, "login_link", 3600)
    clock.advance(120)
    with pytest.raises(InvalidToken):
        await manager.consume(short, "login_link")
    assert (await manager.consume(long, "login_link"))[0] == uid


@pytest.mark.parametrize("forgery", ["other_key", "tampered_purpose", "tampered_user", "garbage"])
async def test_a_forged_token_is_refused(app, manager, forgery):
    uid = await register(app.test_client())
    other = await register(app.test_client(), "mallory")
    token = await manager.issue(uid, "email_verify", 600)
    claims = jwt.decode(token, options={"verify_signature": False})
    header = {"typ": "pt+jwt"}
    forged = {
        "other_key": lambda: jwt.encode(claims, "another-key-" + "x" * 40, headers=header),
        "tampered_purpose": lambda: _swap_payload(token, {**claims, "purpose": "password_reset"}),
        "tampered_user": lambda: _swap_payload(token, {**claims, "sub": str(other)}),
        "garbage": lambda: "not.a.token",
    }[forgery]()
    for purpose in ("email_verify", "password_reset"):
        with pytest.raises(InvalidToken):
            await manager.consume(forged, purpose)
    # the genuine one is unharmed
    assert (await manager.consume(token, "email_verify"))[0] == uid


def _swap_payload(token: str, claims: dict) -> str:
    """Keep the signature, change the claims: what a tamperer can do without the key."""
    header, _, signature = token.split(".")
    payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{payload}.{signature}"


async def test_access_and_refresh_tokens_are_not_purpose_tokens(app, manager):
    client = app.test_client(use_cookies=False)
    pair = await register_and_login(client)
    for token in (pair["access_token"], pair["refresh_token"]):
        for purpose in ("password_reset", "email_verify"):
            with pytest.raises(InvalidToken):
                await manager.consume(token, purpose)
    r = await client.post(
        "/auth/password-reset/confirm",
        json={"token": pair["access_token"], "new_password": "battery staple"},
    )
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "invalid_token"


async def test_purpose_tokens_are_not_access_or_refresh_tokens(make_app):
    app = await make_app(token_location=("cookies", "headers"))
    manager = app.extensions["tokengate"].purpose_tokens
    client = app.test_client(use_cookies=False)
    uid = await register(app.test_client())
    token = await manager.issue(uid, "password_reset", 600)

    r = await client.get("/auth/me", headers=bearer(token))
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "invalid_token"
    r = await client.get("/auth/me", headers={"Cookie": f"access_token={token}"})
    assert (await r.get_json())["error"] == "invalid_token"
    r = await client.post("/auth/refresh", json={"refresh_token": token})
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "invalid_token"
    # none of that used it up
    assert (await manager.consume(token, "password_reset"))[0] == uid


async def test_concurrent_consumers_one_wins(app, manager):
    uid = await register(app.test_client())
    token = await manager.issue(uid, "email_verify", 600)
    results = await asyncio.gather(
        *(manager.consume(token, "email_verify") for _ in range(20)),
        return_exceptions=True,
    )
    assert [r for r in results if not isinstance(r, InvalidToken)] == [(uid, {})]


# -- password reset over HTTP -------------------------------------------------


async def test_reset_request_writes_the_outbox_for_a_real_user(app, tmp_path, caplog):
    await register(app.test_client())
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="tokengate"):
        r = await client.post("/auth/password-reset/request", json={"username": "alice"})
        await settled(app)
    assert r.status_code == 202
    assert await r.get_json() == {}
    (path,) = outbox_files(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    message = json.loads(path.read_text())
    assert set(message) == {"to", "purpose", "token", "created_at"}
    assert message["to"] == "alice"
    assert message["purpose"] == "password_reset"
    assert message["created_at"].endswith("Z")
    claims = jwt.decode(message["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == RESET_TTL
    assert claims["purpose"] == "password_reset"
    # the log says a message went out, but never carries the token
    assert any("password_reset" in rec.getMessage() for rec in caplog.records)
    assert all(message["token"] not in rec.getMessage() for rec in caplog.records)


async def test_reset_request_for_an_unknown_user_looks_the_same(app, tmp_path):
    client = app.test_client()
    r = await client.post("/auth/password-reset/request", json={"username": "nobody"})
    assert r.status_code == 202
    assert await r.get_json() == {}
    await settled(app)
    assert outbox_files(tmp_path) == []


async def test_reset_request_is_throttled(app, tmp_path):
    await register(app.test_client())
    client = app.test_client()
    for _ in range(3):
        r = await client.post("/auth/password-reset/request", json={"username": "alice"})
        assert r.status_code == 202
    r = await client.post("/auth/password-reset/request", json={"username": "alice"})
    assert r.status_code == 429
    assert (await r.get_json())["error"] == "too_many_attempts"
    assert int(r.headers["Retry-After"]) > 0
    await settled(app)
    assert len(outbox_files(tmp_path)) == 3
    # unknown names are throttled alike, so a 429 gives nothing away either
    for _ in range(3):
        await client.post("/auth/password-reset/request", json={"username": "nobody"})
    r = await client.post("/auth/password-reset/request", json={"username": "nobody"})
    assert r.status_code == 429


@pytest.mark.parametrize(
    "body",
    [{}, {"username": 5}, {"username": "alice", "extra": 1}, {"username": "a\u0000b"},
     {"username": ""}, {"username": "a" * 151}],
)  # fmt: skip
async def test_reset_request_with_a_bad_body_is_400(app, body):
    r = await app.test_client().post("/auth/password-reset/request", json=body)
    assert r.status_code == 400
    assert (await r.get_json())["error"] == "invalid_request"


async def reset_token(app, tmp_path: Path) -> str:
    r = await app.test_client().post("/auth/password-reset/request", json={"username": "alice"})
    assert r.status_code == 202
    await settled(app)
    token: str = json.loads(outbox_files(tmp_path)[-1].read_text())["token"]
    return token


async def test_reset_confirm_sets_the_password_and_ends_every_session(app, tmp_path):
    client = app.test_client(use_cookies=False)
    sessions = [await register_and_login(client) for _ in range(2)]
    token = await reset_token(app, tmp_path)

    r = await client.post(
        "/auth/password-reset/confirm", json={"token": token, "new_password": "battery staple"}
    )
    assert r.status_code == 204
    for pair in sessions:
        r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
        assert (await r.get_json())["error"] == "token_revoked"
        r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert (await r.get_json())["error"] == "token_revoked"
    r = await client.post("/auth/login", json={"username": "alice", "password": "correct horse"})
    assert (await r.get_json())["error"] == "invalid_credentials"
    r = await client.post("/auth/login", json={"username": "alice", "password": "battery staple"})
    assert r.status_code == 200

    # used once: the second time it is just an invalid token
    r = await client.post(
        "/auth/password-reset/confirm", json={"token": token, "new_password": "another one"}
    )
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "invalid_token"
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="tokengate"')


async def test_a_bad_new_password_does_not_burn_the_token(app, tmp_path):
    await register(app.test_client())
    token = await reset_token(app, tmp_path)
    client = app.test_client()
    r = await client.post(
        "/auth/password-reset/confirm", json={"token": token, "new_password": "short"}
    )
    assert r.status_code == 400
    assert (await r.get_json())["error"] == "invalid_request"
    r = await client.post(
        "/auth/password-reset/confirm", json={"token": token, "new_password": "long enough now"}
    )
    assert r.status_code == 204


async def test_an_expired_reset_token_is_refused(app, tmp_path, clock):
    await register(app.test_client())
    token = await reset_token(app, tmp_path)
    clock.advance(RESET_TTL)
    r = await app.test_client().post(
        "/auth/password-reset/confirm", json={"token": token, "new_password": "battery staple"}
    )
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "invalid_token"


async def test_a_token_for_another_purpose_cannot_reset(app, manager):
    uid = await register(app.test_client())
    token = await manager.issue(uid, "email_verify", 600)
    r = await app.test_client().post(
        "/auth/password-reset/confirm", json={"token": token, "new_password": "battery staple"}
    )
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "invalid_token"


# -- a sender of one's own ----------------------------------------------------


class RecordingSender:
    def __init__(self, fail: bool = False) -> None:
        self.messages: list[Message] = []
        self.fail = fail

    async def send(self, message: Message) -> None:
        if self.fail:
            raise ConnectionError("the mail relay is down")
        self.messages.append(message)


@pytest.fixture
async def start_with_sender(redis_client, redis_url, database_url, tmp_path):
    started = []

    async def start(sender: RecordingSender):
        settings = Settings(
            secret_key=SECRET,
            redis_url=redis_url,
            database_url=database_url,
            instance_dir=tmp_path / "instance",
        )
        app = create_app(settings, sender=sender, passwords=Passwords(FAST_HASHER))
        ctx = app.test_app()
        await ctx.__aenter__()
        started.append(ctx)
        return app

    yield start
    for ctx in started:
        await ctx.__aexit__(None, None, None)


async def test_a_configured_sender_replaces_the_outbox(start_with_sender, tmp_path):
    sender = RecordingSender()
    app = await start_with_sender(sender)
    await register(app.test_client())
    r = await app.test_client().post("/auth/password-reset/request", json={"username": "alice"})
    assert r.status_code == 202
    await settled(app)
    (message,) = sender.messages
    assert (message.to, message.purpose) == ("alice", "password_reset")
    assert "token" not in repr(message) and message.token not in repr(message)
    assert outbox_files(tmp_path) == []
    r = await app.test_client().post(
        "/auth/password-reset/confirm",
        json={"token": message.token, "new_password": "battery staple"},
    )
    assert r.status_code == 204


async def test_a_failing_sender_still_answers_202(start_with_sender, caplog):
    app = await start_with_sender(RecordingSender(fail=True))
    await register(app.test_client())
    with caplog.at_level(logging.ERROR, logger="tokengate"):
        r = await app.test_client().post("/auth/password-reset/request", json={"username": "alice"})
        assert r.status_code == 202
        await settled(app)
    assert any("could not send" in rec.getMessage() for rec in caplog.records)
