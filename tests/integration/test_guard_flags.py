"""login_required(scopes=, fresh=, optional=) on a host app's routes, and the token's claims."""

from __future__ import annotations

import base64
import inspect

import jwt
import pytest
from quart import Quart
from sqlalchemy import update

from quart_tokengate.service import (
    Settings,
    TokenGate,
    current_identity,
    current_identity_or_none,
    login_required,
)
from quart_tokengate.service.db.models import User
from quart_tokengate.service.passwords import Passwords
from tests.conftest import FAST_HASHER, bearer, register_and_login
from tests.support import SECRET


@pytest.fixture
async def host(redis_client, redis_url, database_url, tmp_path, clock):
    """A host app with routes that need scopes, a fresh login, or no login at all."""
    app = Quart(__name__)
    settings = Settings(
        secret_key=SECRET, redis_url=redis_url, database_url=database_url,
        instance_dir=tmp_path / "instance", fresh_ttl=600,
    )  # fmt: skip
    TokenGate(app, settings=settings, clock=clock, passwords=Passwords(FAST_HASHER))

    @app.get("/notes")
    @login_required
    async def notes() -> dict[str, object]:
        me = current_identity()
        return {"user": me.username, "scopes": sorted(me.scopes), "auth_time": me.auth_time}

    @app.post("/notes")
    @login_required(scopes=["notes:write"])
    async def add_note() -> dict[str, str]:
        return {"ok": "written"}

    @app.post("/admin")
    @login_required(scopes=["notes:write", "admin"])
    async def admin() -> dict[str, str]:
        return {"ok": "admin"}

    @app.delete("/account")
    @login_required(fresh=True)
    async def close_account() -> dict[str, str]:
        return {"ok": "closed"}

    @app.get("/feed")
    @login_required(optional=True)
    async def feed() -> dict[str, object]:
        me = current_identity_or_none()
        return {"who": me.username if me else None}

    async with app.test_app():
        yield app


async def grant(app, username, scopes):
    async with app.extensions["tokengate"].db() as db:
        await db.execute(update(User).where(User.username == username).values(scopes=scopes))
        await db.commit()


async def error(r):
    return (await r.get_json())["error"]


async def test_scopes_come_from_the_user_and_change_from_the_next_login_or_refresh(host):
    client = host.test_client()
    pair = await register_and_login(client)
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert "scope" not in claims
    r = await client.post("/notes", headers=bearer(pair["access_token"]))
    assert r.status_code == 403 and await error(r) == "insufficient_scope"
    assert r.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope", scope="notes:write"'

    await grant(host, "alice", "notes:read notes:write")
    r = await client.post("/notes", headers=bearer(pair["access_token"]))
    assert r.status_code == 403, "the scopes a token carries are those of its login"
    refreshed = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    token = (await refreshed.get_json())["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["scope"] == (
        "notes:read notes:write"
    )
    r = await client.post("/notes", headers=bearer(token))
    assert r.status_code == 200
    r = await client.post("/admin", headers=bearer(token))
    assert r.status_code == 403
    assert r.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="admin notes:write"'
    )
    r = await client.get("/notes", headers=bearer(token))
    assert (await r.get_json())["scopes"] == ["notes:read", "notes:write"]


async def test_a_fresh_login_is_needed_past_fresh_ttl_and_a_refresh_is_not_one(host, clock):
    client = host.test_client()
    pair = await register_and_login(client)
    login_at = jwt.decode(pair["access_token"], options={"verify_signature": False})["auth_time"]
    assert (
        await client.delete("/account", headers=bearer(pair["access_token"]))
    ).status_code == 200

    clock.advance(601)
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    refreshed = await r.get_json()
    claims = jwt.decode(refreshed["access_token"], options={"verify_signature": False})
    assert claims["auth_time"] == login_at and claims["iat"] > login_at
    r = await client.delete("/account", headers=bearer(refreshed["access_token"]))
    assert r.status_code == 401 and await error(r) == "fresh_login_required"
    assert 'error_description="fresh_login_required"' in r.headers["WWW-Authenticate"]
    # Still good for everything else.
    assert (
        await client.get("/notes", headers=bearer(refreshed["access_token"]))
    ).status_code == 200

    again = await register_and_login(client)
    assert (
        await client.delete("/account", headers=bearer(again["access_token"]))
    ).status_code == 200


async def test_optional_lets_anonymous_requests_through_but_never_a_bad_token(host):
    client = host.test_client()
    r = await client.get("/feed")
    assert r.status_code == 200 and (await r.get_json()) == {"who": None}
    pair = await register_and_login(client)
    r = await client.get("/feed", headers=bearer(pair["access_token"]))
    assert (await r.get_json()) == {"who": "alice"}
    r = await client.get("/feed", headers=bearer("not-a-token"))
    assert r.status_code == 401 and await error(r) == "invalid_token"
    await client.post("/auth/logout", headers=bearer(pair["access_token"]))
    r = await client.get("/feed", headers=bearer(pair["access_token"]))
    assert r.status_code == 401 and await error(r) == "token_revoked"
    # Plain @login_required still needs a token.
    r = await client.get("/notes")
    assert r.status_code == 401 and await error(r) == "missing_token"


def test_the_decorator_keeps_the_signature_and_refuses_malformed_scopes():
    async def view(note_id: int, *, verbose: bool = False) -> str:
        return str(note_id)

    for decorated in (login_required(view), login_required(scopes=["a"], fresh=True)(view)):
        assert inspect.signature(decorated) == inspect.signature(view)
        assert decorated.__name__ == "view"
    with pytest.raises(ValueError, match="scope"):
        login_required(scopes=['bad"scope'])
    with pytest.raises(ValueError, match="scope"):
        login_required(scopes=["two words"])


async def test_a_service_account_token_is_never_a_fresh_login(host, clock):
    # Its auth_time is when the token was fetched, but no password was typed:
    # a route that needs a fresh login refuses it, even a second after the fetch.
    from quart_tokengate.service.oauth.accounts import service_accounts

    gate = host.extensions["tokengate"]
    cid, secret = await service_accounts(gate).registry.create("job", [])
    client = host.test_client()
    r = await client.post(
        "/oauth/token", form={"grant_type": "client_credentials"},
        headers={"Authorization": "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode()},
    )  # fmt: skip
    assert r.status_code == 200, await r.get_data()
    token = (await r.get_json())["access_token"]
    assert (await client.get("/notes", headers=bearer(token))).status_code == 200
    clock.advance(1)
    r = await client.delete("/account", headers=bearer(token))
    assert r.status_code == 401 and await error(r) == "fresh_login_required"
