"""Your own users: the UserStore protocol (examples/own_users.py) and the claims hook."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jwt
import pytest
from quart import Quart

from quart_tokengate.service import Settings, TokenGate, current_identity, login_required
from quart_tokengate.service.passwords import Passwords
from quart_tokengate.service.users import SqlUserStore, UserRecord, UserStore
from tests.conftest import FAST_HASHER, bearer, login_attempt, register_and_login
from tests.support import SECRET

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_users.py"


def load_example():
    spec = importlib.util.spec_from_file_location("own_users_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


own_users = load_example()


def settings_for(redis_url, database_url, tmp_path, **extra):
    return Settings(
        secret_key=SECRET, redis_url=redis_url, database_url=database_url,
        instance_dir=tmp_path / "instance", **extra,
    )  # fmt: skip


@pytest.fixture
async def example(redis_client, redis_url, database_url, tmp_path, clock):
    app = own_users.create_app(
        f"sqlite+aiosqlite:///{tmp_path / 'accounts.db'}",
        settings=settings_for(redis_url, database_url, tmp_path),
        clock=clock,
        passwords=Passwords(FAST_HASHER),
    )
    async with app.test_app():
        yield app


def claims_of(token):
    return jwt.decode(token, options={"verify_signature": False})


async def test_the_example_store_is_a_user_store():
    assert isinstance(own_users.AccountStore("sqlite+aiosqlite://"), UserStore)
    assert isinstance(SqlUserStore(None, None), UserStore)


async def test_users_of_the_apps_own_table_log_in_and_carry_its_claims(example):
    store = example.extensions["accounts"]
    alice = await store.add("alice@example.com", "correct horse", "reports:write", "acme")
    client = example.test_client()
    r = await login_attempt(client, "alice@example.com")
    assert r.status_code == 200, await r.get_data()
    pair = await r.get_json()
    claims = claims_of(pair["access_token"])
    assert claims["sub"] == str(alice.id) and claims["name"] == "alice@example.com"
    assert claims["tenant"] == "acme" and claims["scope"] == "reports:write"
    r = await client.get("/whoami", headers=bearer(pair["access_token"]))
    assert (await r.get_json()) == {
        "email": "alice@example.com", "tenant": "acme", "scopes": ["reports:write"],
    }  # fmt: skip
    r = await client.post("/reports", headers=bearer(pair["access_token"]))
    assert r.status_code == 201
    # The session is tokengate's: refresh, sessions and logout work as ever.
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 200 and claims_of((await r.get_json())["access_token"])["tenant"]
    token = (await r.get_json())["access_token"]
    r = await client.get("/auth/sessions", headers=bearer(token))
    assert len((await r.get_json())["sessions"]) == 1
    assert (await client.post("/auth/logout", headers=bearer(token))).status_code == 204


async def test_wrong_passwords_inactive_accounts_and_unknown_users_are_refused_alike(example):
    store = example.extensions["accounts"]
    bob = await store.add("bob@example.com", "correct horse")
    client = example.test_client()
    for username, password in [
        ("bob@example.com", "wrong horse"),
        ("nobody@example.com", "correct horse"),
    ]:
        r = await login_attempt(client, username, password)
        assert r.status_code == 401 and (await r.get_json())["error"] == "invalid_credentials"
    await store.update(bob.id, active=False)
    r = await login_attempt(client, "bob@example.com")
    assert r.status_code == 401 and (await r.get_json())["error"] == "invalid_credentials"


async def test_the_app_manages_its_users_tokengate_ends_their_sessions(example):
    store = example.extensions["accounts"]
    gate = example.extensions["tokengate"]
    carol = await store.add("carol@example.com", "correct horse")
    client = example.test_client()
    pair = await (await login_attempt(client, "carol@example.com")).get_json()
    r = await client.post("/auth/register", json={"username": "dave", "password": "x" * 12})
    assert r.status_code == 403 and (await r.get_json())["error"] == "registration_disabled"
    r = await client.post(
        "/auth/password", headers=bearer(pair["access_token"]),
        json={"current_password": "correct horse", "new_password": "y" * 12},
    )  # fmt: skip
    assert r.status_code == 404
    # A deactivated account cannot refresh...
    await store.update(carol.id, active=False)
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401 and (await r.get_json())["error"] == "token_revoked"
    # ...and the app ends sessions at once when it changes a password.
    await store.update(carol.id, active=True, password="new horse battery")
    pair = await (await login_attempt(client, "carol@example.com", "new horse battery")).get_json()
    await gate.end_sessions(carol.id)
    r = await client.get("/whoami", headers=bearer(pair["access_token"]))
    assert r.status_code == 401 and (await r.get_json())["error"] == "token_revoked"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_the_claims_hook_adds_claims_but_never_registered_ones(
    redis_client, redis_url, database_url, tmp_path, kind
):
    seen: list[UserRecord] = []

    def hook(user: UserRecord) -> dict[str, object]:
        seen.append(user)
        return {"plan": "pro", "org": {"id": 7}, "sub": "0", "scope": "admin", "exp": 1,
                "auth_time": 0, "sid": "stolen", "iss": "evil"}  # fmt: skip

    async def async_hook(user: UserRecord) -> dict[str, object]:
        return hook(user)

    app = Quart(__name__)
    TokenGate(
        app, settings=settings_for(redis_url, database_url, tmp_path),
        passwords=Passwords(FAST_HASHER), claims=hook if kind == "sync" else async_hook,
    )  # fmt: skip

    @app.get("/plan")
    @login_required
    async def plan() -> dict[str, object]:
        return {"plan": current_identity().claims["plan"]}

    async with app.test_app():
        client = app.test_client()
        pair = await register_and_login(client)
        claims = claims_of(pair["access_token"])
        assert claims["plan"] == "pro" and claims["org"] == {"id": 7}
        assert claims["sub"] == str(seen[0].id) and seen[0].username == "alice"
        assert "scope" not in claims and claims["iss"] == "tokengate"
        assert claims["sid"] == pair["session_id"] and claims["auth_time"] == claims["iat"]
        assert claims["exp"] == claims["iat"] + 300
        r = await client.get("/plan", headers=bearer(pair["access_token"]))
        assert (await r.get_json()) == {"plan": "pro"}
        refreshed = await client.post(
            "/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        assert claims_of((await refreshed.get_json())["access_token"])["plan"] == "pro"
        assert len(seen) == 2
