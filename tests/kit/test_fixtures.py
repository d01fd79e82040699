"""The test kit's fixtures, used as a user's suite would use them (real HTTP, real servers)."""

from __future__ import annotations

import httpx
import jwt
import pytest

from quart_tokengate.client import AsyncAuthClient, LoginRequired
from quart_tokengate.service import Settings, create_app
from tests.e2e.session_helpers import me


async def test_auth_client_is_logged_in_over_http(auth_client, tokengate_server):
    r = await auth_client.get("/auth/me")
    assert r.status_code == 200
    assert r.json()["username"].startswith("user-")
    assert str(auth_client.base_url).rstrip("/") == tokengate_server.base_url


def test_sync_auth_client_is_logged_in(sync_auth_client):
    r = sync_auth_client.get("/auth/me")
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("state", "answer"),
    [("live", 200), ("expired", "token_expired"), ("revoked", "token_revoked")],
)
def test_token_states(tokengate_server, tokengate_user, tokengate_tokens, state, answer):
    pair = tokengate_tokens(tokengate_user(), state=state)
    with httpx.Client(base_url=tokengate_server.base_url) as http:
        assert me(http, pair.to_json()) == answer


async def test_advancing_the_clock_expires_the_access_token_and_the_client_refreshes(
    auth_client, tokengate_clock
):
    before = auth_client.tokens
    tokengate_clock.advance(301)
    r = await auth_client.get("/auth/me")
    assert r.status_code == 200
    assert auth_client.tokens.access_token != before.access_token


async def test_advancing_past_the_idle_timeout_ends_the_session(auth_client, tokengate_clock):
    tokengate_clock.advance(1801)
    with pytest.raises(LoginRequired):
        await auth_client.get("/auth/me")


@pytest.fixture
def tokengate_app(request):
    """A service with a session limit of one, so that every state can be made.

    A test changes other settings with ``parametrize("tokengate_app", [{...}], indirect=True)``.
    """
    settings = {"max_sessions": 1, "secret_key": "k" * 40, **getattr(request, "param", {})}
    return create_app(Settings(**settings))


@pytest.mark.parametrize("tokengate_app", [{"allow_registration": False}], indirect=True)
def test_users_are_made_with_registration_off_and_keep_their_scopes(
    tokengate_server, tokengate_user, sync_auth_client
):
    user = tokengate_user(scopes=["notes:read", "notes:write"], password="a password of mine")
    assert (user.password, user.scopes) == ("a password of mine", ("notes:read", "notes:write"))
    with httpx.Client(base_url=tokengate_server.base_url) as http:
        r = http.post("/auth/register", json={"username": "x" * 8, "password": "p" * 12})
        assert r.json()["error"] == "registration_disabled"
        r = http.post("/auth/login", json={"username": user.username, "password": user.password})
        assert r.status_code == 200
    assert sync_auth_client.get("/auth/me").status_code == 200


@pytest.mark.parametrize(
    ("tokengate_app", "state", "needs"),
    [({"max_sessions": 0}, "replaced", "TOKENGATE_MAX_SESSIONS"),
     ({"idle_timeout": 0}, "idle", "TOKENGATE_IDLE_TIMEOUT")],
    indirect=["tokengate_app"],
)  # fmt: skip
def test_a_state_the_settings_forbid_fails_naming_the_setting(
    tokengate_user, tokengate_tokens, state, needs
):
    with pytest.raises(pytest.fail.Exception, match=needs):
        tokengate_tokens(tokengate_user(), state=state)


def test_the_clock_only_moves_forward(tokengate_clock):
    start = tokengate_clock()
    assert tokengate_clock() == start  # it stands still until advanced
    tokengate_clock.advance(2.5)
    assert tokengate_clock() == start + 2.5
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="forward"):
            tokengate_clock.advance(bad)


@pytest.mark.parametrize(
    ("state", "answer"), [("idle", "session_expired"), ("replaced", "session_replaced")]
)
def test_more_token_states(tokengate_server, tokengate_user, tokengate_tokens, state, answer):
    pair = tokengate_tokens(tokengate_user(), state=state)
    with httpx.Client(base_url=tokengate_server.base_url) as http:
        assert me(http, pair.to_json()) == answer


def test_idle_refresh(tokengate_server, tokengate_user, tokengate_tokens):
    pair = tokengate_tokens(tokengate_user(), state="idle")
    r = httpx.post(
        tokengate_server.base_url + "/auth/refresh", json={"refresh_token": pair.refresh_token}
    )
    assert r.json()["error"] == "session_expired"


@pytest.fixture
def fresh_route(tokengate_app):
    from quart_tokengate.service import login_required

    @tokengate_app.get("/fresh-only")
    @login_required(fresh=True)
    async def fresh_only():
        return {"ok": True}


def test_stale_state(fresh_route, tokengate_server, tokengate_user, tokengate_tokens):
    headers = {
        "Authorization": f"Bearer {tokengate_tokens(tokengate_user(), state='stale').access_token}"
    }
    with httpx.Client(base_url=tokengate_server.base_url) as http:
        assert http.get("/auth/me", headers=headers).status_code == 200
        r = http.get("/fresh-only", headers=headers)
        assert (r.status_code, r.json()["error"]) == (401, "fresh_login_required")
        live = tokengate_tokens(tokengate_user(), state="live")
        r = http.get("/fresh-only", headers={"Authorization": f"Bearer {live.access_token}"})
        assert r.status_code == 200


@pytest.mark.parametrize(
    "tokengate_app",
    [{"idle_timeout": 200}, {"idle_timeout": 3}, {"idle_timeout": 200, "leeway": 5}],
    indirect=True,
)
def test_an_expired_pair_with_an_idle_timeout_shorter_than_the_access_ttl(
    tokengate_server, tokengate_user, tokengate_tokens
):
    # A client that used its token every few minutes keeps the session alive past the
    # token's expiry: the pair says token_expired, and its refresh token still refreshes.
    pair = tokengate_tokens(tokengate_user(), state="expired")
    with httpx.Client(base_url=tokengate_server.base_url) as http:
        assert me(http, pair.to_json()) == "token_expired"
        r = http.post("/auth/refresh", json={"refresh_token": pair.refresh_token})
        assert r.status_code == 200
        assert me(http, r.json()) == 200


@pytest.mark.parametrize("tokengate_app", [{"idle_timeout": 2}], indirect=True)
def test_an_expired_pair_needs_an_idle_timeout_of_a_few_seconds(tokengate_user, tokengate_tokens):
    with pytest.raises(pytest.fail.Exception, match="TOKENGATE_IDLE_TIMEOUT"):
        tokengate_tokens(tokengate_user(), state="expired")


def test_the_clients_say_who_they_are_and_count_their_refreshes(
    sync_auth_client, tokengate_server, tokengate_clock
):
    user = sync_auth_client.user
    assert sync_auth_client.get("/auth/me").json()["username"] == user.username
    assert sync_auth_client.refreshes == 0
    tokengate_clock.advance(301)
    assert sync_auth_client.get("/auth/me").status_code == 200
    assert sync_auth_client.get("/auth/me").status_code == 200
    assert sync_auth_client.refreshes == 1
    # Its password logs in (here, with a session limit of one, in its place).
    with httpx.Client(base_url=tokengate_server.base_url) as http:
        r = http.post("/auth/login", json={"username": user.username, "password": user.password})
        assert r.status_code == 200


async def test_the_async_client_counts_one_refresh_for_many_requests(auth_client, tokengate_clock):
    import asyncio

    tokengate_clock.advance(301)
    answers = await asyncio.gather(*(auth_client.get("/auth/me") for _ in range(30)))
    assert {r.status_code for r in answers} == {200}
    assert auth_client.refreshes == 1
    assert answers[0].json()["username"] == auth_client.user.username


async def test_a_service_client_fetches_tokens_that_carry_its_scopes(
    tokengate_server, tokengate_service_client, tokengate_clock
):
    made = tokengate_service_client(scopes=["reports:read"])
    assert made.client_id.startswith("tgc_") and made.client_secret not in repr(made)
    async with AsyncAuthClient.for_client(
        tokengate_server.base_url, made.client_id, made.client_secret, clock=tokengate_clock
    ) as api:
        r = await api.get("/auth/me")
        assert r.status_code == 200
        first = api.tokens
        assert jwt.decode(first.access_token, options={"verify_signature": False})["scope"] == (
            "reports:read"
        )
        # The kit's clock moves the service's and the client's: a new token is fetched.
        tokengate_clock.advance(301)
        assert (await api.get("/auth/me")).status_code == 200
        assert api.tokens != first
    with httpx.Client(base_url=tokengate_server.base_url) as http:
        r = http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "scope": "other"},
            auth=(made.client_id, made.client_secret),
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
