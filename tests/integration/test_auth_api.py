"""The /auth routes of the foundation: register, login, me, health, the OpenAPI document."""

import jwt
from sqlalchemy import func, select

from quart_tokengate.service.db.models import AuthSession
from quart_tokengate.service.guard import get_gate
from tests.conftest import bearer, register_and_login
from tests.support import SECRET


async def test_register_creates_a_user(app):
    client = app.test_client()
    r = await client.post("/auth/register", json={"username": "alice", "password": "correct horse"})
    assert r.status_code == 201
    body = await r.get_json()
    assert body == {"id": body["id"], "username": "alice"}


async def test_register_twice_is_a_conflict(app):
    client = app.test_client()
    await register_and_login(client)
    r = await client.post("/auth/register", json={"username": "alice", "password": "other pass"})
    assert r.status_code == 409
    assert (await r.get_json())["error"] == "username_taken"


async def test_short_password_is_refused(make_app):
    app = await make_app(password_min_length=12)
    r = await app.test_client().post("/auth/register", json={"username": "a", "password": "x" * 11})
    assert r.status_code == 400
    assert (await r.get_json())["error"] == "invalid_request"


async def test_registration_can_be_turned_off(make_app):
    app = await make_app(allow_registration=False)
    r = await app.test_client().post("/auth/register", json={"username": "a", "password": "x" * 9})
    assert r.status_code == 403
    assert (await r.get_json())["error"] == "registration_disabled"


async def test_login_returns_the_contract_pair_and_a_session_row(app):
    client = app.test_client()
    pair = await register_and_login(client, device="laptop")
    assert pair["token_type"] == "Bearer"
    assert pair["expires_in"] == 300 and pair["refresh_expires_in"] == 1_296_000
    access = jwt.decode(pair["access_token"], SECRET, algorithms=["HS256"], audience="tokengate")
    refresh = jwt.decode(pair["refresh_token"], SECRET, algorithms=["HS256"], audience="tokengate")
    base = {"iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp"}
    assert set(access) == base | {"name", "auth_time"} and set(refresh) == base
    assert all(type(access[k]) is int for k in ("iat", "nbf", "exp", "auth_time"))
    assert access["auth_time"] == access["iat"]
    assert access["sid"] == refresh["sid"] == pair["session_id"]
    assert access["jti"] != refresh["jti"]
    assert jwt.get_unverified_header(pair["access_token"])["typ"] == "at+jwt"
    assert jwt.get_unverified_header(pair["refresh_token"])["typ"] == "rt+jwt"
    async with get_gate_of(app).db() as db:
        row = await db.get(AuthSession, pair["session_id"])
        assert row is not None and row.device == "laptop" and row.ended_at is None


def get_gate_of(app):
    return app.extensions["tokengate"]


async def test_unknown_user_and_wrong_password_look_the_same(app):
    client = app.test_client()
    await register_and_login(client)
    wrong = await client.post("/auth/login", json={"username": "alice", "password": "nope nope"})
    unknown = await client.post("/auth/login", json={"username": "bob", "password": "nope nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert await wrong.get_json() == await unknown.get_json()
    assert (await wrong.get_json())["error"] == "invalid_credentials"
    async with get_gate_of(app).db() as db:
        count = (await db.execute(select(func.count()).select_from(AuthSession))).scalar_one()
    assert count == 1


async def test_me(app):
    client = app.test_client()
    pair = await register_and_login(client)
    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    body = await r.get_json()
    assert body == {"id": body["id"], "username": "alice", "session_id": pair["session_id"]}


async def test_healthz(app):
    r = await app.test_client().get("/healthz")
    assert r.status_code == 200
    assert await r.get_json() == {
        "status": "ok",
        "database": "ok",
        "redis": "ok",
        "schema": "ok",
    }


async def test_openapi_documents_every_route(app):
    client = app.test_client()
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    paths = (await r.get_json())["paths"]
    for path in [
        "/auth/register", "/auth/login", "/auth/refresh", "/auth/me", "/auth/logout",
        "/auth/logout-all", "/auth/sessions", "/auth/sessions/{session_id}", "/auth/password",
        "/auth/password-reset/request", "/auth/password-reset/confirm", "/healthz",
    ]:  # fmt: skip
        assert path in paths, path
    login = paths["/auth/login"]["post"]
    assert "requestBody" in login and "200" in login["responses"]
    docs = await client.get("/docs")
    assert docs.status_code == 200 and b"openapi.json" in await docs.get_data()


async def test_the_extension_is_recorded_on_the_app(app):
    async with app.app_context():
        assert get_gate() is app.extensions["tokengate"]
