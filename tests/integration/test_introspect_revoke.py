"""POST /auth/introspect (RFC 7662) and POST /auth/revoke (RFC 7009)."""

from __future__ import annotations

import base64

import jwt
import pytest

from tests.conftest import bearer, register_and_login

CLIENTS = (("api", "api-secret"), ("billing", "billing-secret"))


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def service(make_app, clock):
    return await make_app(
        clock=clock, introspection_clients=CLIENTS, idle_timeout=600, access_ttl=900
    )


async def introspect(app, token, client=("api", "api-secret")):
    r = await app.test_client().post(
        "/auth/introspect", form={"token": token}, headers=basic(*client)
    )
    assert r.status_code == 200, await r.get_data()
    assert r.headers["Cache-Control"] == "no-store"
    return await r.get_json()


async def test_an_active_token_is_described(service):
    pair = await register_and_login(service.test_client())
    body = await introspect(service, pair["access_token"], ("billing", "billing-secret"))
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert body["active"] is True and body["token_type"] == "Bearer"
    assert body["sub"] == claims["sub"] and body["username"] == "alice"
    assert body["sid"] == pair["session_id"] and body["exp"] == claims["exp"]
    assert body["iat"] == claims["iat"] and "scope" not in body


async def test_every_token_the_guard_would_refuse_is_inactive(service, clock):
    client = service.test_client()
    pair = await register_and_login(client)
    assert (await introspect(service, pair["refresh_token"])) == {"active": False}
    assert (await introspect(service, "garbage")) == {"active": False}
    forged = jwt.encode({"sub": "1"}, "x" * 40, algorithm="HS256")
    assert (await introspect(service, forged)) == {"active": False}
    # idle: the session saw nothing for longer than the idle timeout
    clock.advance(601)
    assert (await introspect(service, pair["access_token"])) == {"active": False}
    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert (await r.get_json())["error"] == "session_expired"
    # expired
    fresh = await register_and_login(client, "bob")
    clock.advance(300)
    assert (await introspect(service, fresh["access_token"]))["active"] is True
    clock.advance(601)
    assert (await introspect(service, fresh["access_token"])) == {"active": False}
    # revoked
    live = await register_and_login(client, "carol")
    assert (await introspect(service, live["access_token"]))["active"] is True
    await client.post("/auth/logout", headers=bearer(live["access_token"]))
    assert (await introspect(service, live["access_token"])) == {"active": False}


async def test_implicit_refresh_does_not_make_an_expired_token_active(make_app, clock):
    app = await make_app(clock=clock, introspection_clients=CLIENTS, implicit_refresh=True)
    pair = await register_and_login(app.test_client())
    clock.advance(301)
    assert (await introspect(app, pair["access_token"])) == {"active": False}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("api", "wrong"),
        basic("nobody", "api-secret"),
        basic("api", ""),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Bearer something"},
    ],
    ids=["none", "wrong-secret", "unknown-client", "empty-secret", "garbage", "bearer"],
)
async def test_unknown_clients_get_invalid_client(service, headers):
    pair = await register_and_login(service.test_client())
    r = await service.test_client().post(
        "/auth/introspect", form={"token": pair["access_token"]}, headers=headers
    )
    assert r.status_code == 401 and (await r.get_json())["error"] == "invalid_client"
    assert r.headers["WWW-Authenticate"].startswith("Basic ")


async def test_introspection_is_off_without_clients(app):
    pair = await register_and_login(app.test_client())
    r = await app.test_client().post(
        "/auth/introspect", form={"token": pair["access_token"]}, headers=basic("api", "x")
    )
    assert r.status_code == 401 and (await r.get_json())["error"] == "invalid_client"


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_revoking_an_access_or_refresh_token_ends_its_session(service, which, encoding):
    client = service.test_client()
    pair = await register_and_login(client)
    other = await register_and_login(client)
    kwargs = {encoding: {"token": pair[which], "token_type_hint": which}}
    r = await client.post("/auth/revoke", **kwargs)
    assert r.status_code == 200
    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert (await r.get_json())["error"] == "token_revoked"
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401
    # Only that session.
    assert (await client.get("/auth/me", headers=bearer(other["access_token"]))).status_code == 200
    # Revoking again, or revoking nonsense, is still 200 (RFC 7009 section 2.2).
    assert (await client.post("/auth/revoke", **kwargs)).status_code == 200
    r = await client.post("/auth/revoke", form={"token": "not-a-token"})
    assert r.status_code == 200


async def test_an_expired_access_token_still_revokes_its_session(service, clock):
    client = service.test_client()
    pair = await register_and_login(client)
    clock.advance(301)
    assert (
        await client.post("/auth/revoke", form={"token": pair["access_token"]})
    ).status_code == 200
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert (await r.get_json())["error"] == "token_revoked"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"", FORM),
        (b"token_type_hint=access_token", FORM),
        (b"token=a&token=b", FORM),
        (b"\xff\xfe", FORM),
        (b'{"token": 7}', {"Content-Type": "application/json"}),
        (b"[1, 2", {"Content-Type": "application/json"}),
    ],
)
async def test_revoke_and_introspect_without_one_token_are_invalid_requests(service, body, headers):
    client = service.test_client()
    for path, extra in (("/auth/revoke", {}), ("/auth/introspect", basic("api", "api-secret"))):
        r = await client.post(path, data=body, headers={**headers, **extra})
        assert r.status_code == 400, (path, body)
        assert (await r.get_json())["error"] == "invalid_request"
