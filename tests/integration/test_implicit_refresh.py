"""Implicit refresh (CONTRACT section 4): an expired token, its session alive, is accepted.

The injected clock moves past ``exp``; nothing here sleeps.
"""

from __future__ import annotations

import asyncio

import jwt
import pytest

from quart_tokengate.service.store.redis_store import RedisSessionStore
from tests.conftest import bearer, register_and_login
from tests.integration.test_cookies import claims, cookie_header, set_cookies

ACCESS_TTL = 60


@pytest.fixture
async def app(make_app, clock):
    return await make_app(clock=clock, implicit_refresh=True, access_ttl=ACCESS_TTL)


async def error_of(response) -> str:
    body = await response.get_json()
    assert set(body) == {"error", "error_description"}
    assert "X-Access-Token" not in response.headers
    return str(body["error"])


async def test_expired_token_with_a_live_session_is_accepted_with_a_new_one(app, clock):
    client = app.test_client(use_cookies=False)
    pair = await register_and_login(client)
    old = pair["access_token"]
    clock.advance(ACCESS_TTL + 5)

    r = await client.get("/auth/me", headers=bearer(old))
    assert r.status_code == 200
    assert (await r.get_json())["username"] == "alice"
    new = r.headers["X-Access-Token"]
    assert new != old
    assert r.headers["X-Access-Token-Expires-In"] == str(ACCESS_TTL)
    fresh, stale = claims(new), claims(old)
    assert jwt.get_unverified_header(new)["typ"] == "at+jwt"
    assert fresh["sid"] == stale["sid"] and fresh["sub"] == stale["sub"]
    assert fresh["name"] == "alice"
    assert fresh["jti"] != stale["jti"]
    assert fresh["exp"] == int(clock()) + ACCESS_TTL

    # the new token works as an ordinary one: no further refresh
    r = await client.get("/auth/me", headers=bearer(new))
    assert r.status_code == 200
    assert "X-Access-Token" not in r.headers

    # and when it expires in turn, the next one is minted
    clock.advance(ACCESS_TTL + 1)
    r = await client.get("/auth/me", headers=bearer(new))
    assert r.status_code == 200
    assert r.headers["X-Access-Token"] not in (old, new)


@pytest.mark.parametrize(
    ("window", "settings"),
    [
        (10, {}),  # the default: TOKENGATE_REFRESH_GRACE's 10 s
        (4, {"refresh_grace": 4}),  # the default follows the grace
        (30, {"implicit_refresh_window": 30}),
        (0, {"implicit_refresh_window": 0}),
    ],
)
@pytest.mark.parametrize("past_window", [-1, 0, 1])
async def test_renewed_only_within_the_window_after_exp_then_token_expired(
    make_app, clock, window, settings, past_window
):
    app = await make_app(clock=clock, implicit_refresh=True, access_ttl=ACCESS_TTL, **settings)
    client = app.test_client(use_cookies=False)
    pair = await register_and_login(client)
    exp = claims(pair["access_token"])["exp"]
    clock.advance(exp + window + past_window - clock())

    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    if window + past_window < 0:  # a second before exp: accepted as it is
        assert r.status_code == 200 and "X-Access-Token" not in r.headers
    elif past_window <= 0:
        assert r.status_code == 200
        assert claims(r.headers["X-Access-Token"])["exp"] == int(clock()) + ACCESS_TTL
    else:
        assert r.status_code == 401
        assert await error_of(r) == "token_expired"
        assert 'error_description="token_expired"' in r.headers["WWW-Authenticate"]
        # Still refused a moment later; the session lives on for its refresh token.
        clock.advance(1)
        r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
        assert await error_of(r) == "token_expired"
        r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert r.status_code == 200


async def test_off_by_default(make_app, clock):
    app = await make_app(clock=clock, access_ttl=ACCESS_TTL)
    client = app.test_client(use_cookies=False)
    pair = await register_and_login(client)
    clock.advance(ACCESS_TTL)
    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert r.status_code == 401
    assert await error_of(r) == "token_expired"


async def test_a_hundred_concurrent_requests_get_one_new_token(app, clock, redis_client):
    client = app.test_client(use_cookies=False)
    pair = await register_and_login(client)
    clock.advance(ACCESS_TTL + 1)
    headers = bearer(pair["access_token"])

    responses = await asyncio.gather(*(client.get("/auth/me", headers=headers) for _ in range(100)))

    assert [r.status_code for r in responses] == [200] * 100
    tokens = {r.headers["X-Access-Token"] for r in responses}
    assert len(tokens) == 1
    (token,) = tokens
    # one mint, recorded once in Redis against the expired token's jti
    sid, uid = pair["session_id"], claims(token)["sub"]
    state = await redis_client.hgetall(RedisSessionStore.session_key(uid, sid))
    assert state[b"xf"].decode() == claims(pair["access_token"])["jti"]
    assert state[b"xa"].decode() == claims(token)["jti"]
    r = await client.get("/auth/me", headers=bearer(token))
    assert r.status_code == 200


async def test_a_late_straggler_with_the_same_expired_token_gets_the_same_new_one(app, clock):
    client = app.test_client(use_cookies=False)
    pair = await register_and_login(client)
    clock.advance(ACCESS_TTL + 1)
    first = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    clock.advance(3)
    second = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert first.headers["X-Access-Token"] == second.headers["X-Access-Token"]


async def test_cookie_mode_sets_the_new_token_in_the_cookie(make_app, clock):
    app = await make_app(
        clock=clock, implicit_refresh=True, access_ttl=ACCESS_TTL, token_location=("cookies",)
    )
    client = app.test_client(use_cookies=False)
    await client.post("/auth/register", json={"username": "alice", "password": "correct horse"})
    r = await client.post("/auth/login", json={"username": "alice", "password": "correct horse"})
    cookies = set_cookies(r)
    clock.advance(ACCESS_TTL + 1)

    headers = cookie_header(cookies, "access_token")
    responses = await asyncio.gather(*(client.get("/auth/me", headers=headers) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    renewed = [set_cookies(r)["access_token"] for r in responses]
    assert len({m.value for m in renewed}) == 1
    assert renewed[0].value == responses[0].headers["X-Access-Token"]
    assert renewed[0]["httponly"] and renewed[0]["samesite"] == "Lax"
    r = await client.get("/auth/me", headers={"Cookie": f"access_token={renewed[0].value}"})
    assert r.status_code == 200
    assert set_cookies(r) == {}


async def test_header_request_in_mixed_mode_gets_the_header_only(make_app, clock):
    app = await make_app(
        clock=clock,
        implicit_refresh=True,
        access_ttl=ACCESS_TTL,
        token_location=("cookies", "headers"),
    )
    client = app.test_client(use_cookies=False)
    pair = await register_and_login(client)
    clock.advance(ACCESS_TTL + 1)
    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert r.status_code == 200
    assert "X-Access-Token" in r.headers
    assert set_cookies(r) == {}


async def test_implicit_refresh_still_checks_csrf(make_app, clock):
    app = await make_app(
        clock=clock, implicit_refresh=True, access_ttl=ACCESS_TTL, token_location=("cookies",)
    )
    client = app.test_client(use_cookies=False)
    await client.post("/auth/register", json={"username": "alice", "password": "correct horse"})
    r = await client.post("/auth/login", json={"username": "alice", "password": "correct horse"})
    cookies = set_cookies(r)
    clock.advance(ACCESS_TTL + 1)
    r = await client.post("/auth/logout", headers=cookie_header(cookies))
    assert r.status_code == 403
    assert await error_of(r) == "csrf_failed"


async def test_a_logged_out_session_is_not_revived(app, clock):
    client = app.test_client(use_cookies=False)
    pair = await register_and_login(client)
    headers = bearer(pair["access_token"])
    assert (await client.post("/auth/logout", headers=headers)).status_code == 204
    clock.advance(ACCESS_TTL + 1)
    r = await client.get("/auth/me", headers=headers)
    assert r.status_code == 401
    assert await error_of(r) == "token_revoked"


async def test_a_session_ended_by_logout_all_is_not_revived(app, clock):
    client = app.test_client(use_cookies=False)
    first = await register_and_login(client)
    second = await register_and_login(client)
    r = await client.post("/auth/logout-all", headers=bearer(second["access_token"]))
    assert r.status_code == 204
    clock.advance(ACCESS_TTL + 1)
    for pair in (first, second):
        r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
        assert await error_of(r) == "token_revoked"


async def test_a_session_ended_by_a_password_change_is_not_revived(app, clock):
    client = app.test_client(use_cookies=False)
    other = await register_and_login(client)
    mine = await register_and_login(client)
    r = await client.post(
        "/auth/password",
        json={"current_password": "correct horse", "new_password": "battery staple"},
        headers=bearer(mine["access_token"]),
    )
    assert r.status_code == 204
    clock.advance(ACCESS_TTL + 1)
    r = await client.get("/auth/me", headers=bearer(other["access_token"]))
    assert await error_of(r) == "token_revoked"
    r = await client.get("/auth/me", headers=bearer(mine["access_token"]))
    assert r.status_code == 200


async def test_a_session_ended_by_refresh_reuse_is_not_revived(app, clock):
    client = app.test_client(use_cookies=False)
    pair = await register_and_login(client)
    first = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert first.status_code == 200
    clock.advance(30)  # past the 10 s grace: presenting the old one again is theft
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert await error_of(r) == "refresh_reused"
    clock.advance(ACCESS_TTL)
    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert await error_of(r) == "token_revoked"


async def test_an_idle_expired_session_is_not_revived(make_app, clock):
    app = await make_app(clock=clock, implicit_refresh=True, access_ttl=30, idle_timeout=60)
    client = app.test_client(use_cookies=False)
    pair = await register_and_login(client)
    clock.advance(61)
    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert r.status_code == 401
    assert await error_of(r) == "session_expired"
    # and it stays over: neither a retry nor the refresh token brings it back
    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert await error_of(r) == "session_expired"
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert await error_of(r) == "session_expired"


async def test_an_active_session_outlives_many_access_tokens(make_app, clock):
    app = await make_app(
        clock=clock, implicit_refresh=True, access_ttl=30, idle_timeout=60,
        implicit_refresh_window=30,
    )  # fmt: skip
    client = app.test_client(use_cookies=False)
    token = (await register_and_login(client))["access_token"]
    for _ in range(5):  # 5 x 50 s: longer than the idle timeout, never idle for it
        clock.advance(50)
        r = await client.get("/auth/me", headers=bearer(token))
        assert r.status_code == 200
        token = r.headers["X-Access-Token"]


async def test_a_session_past_its_absolute_age_is_not_revived(make_app, clock):
    app = await make_app(
        clock=clock, implicit_refresh=True, access_ttl=30, idle_timeout=0, session_max_age=100,
        implicit_refresh_window=30,
    )  # fmt: skip
    client = app.test_client(use_cookies=False)
    token = (await register_and_login(client))["access_token"]
    clock.advance(50)
    r = await client.get("/auth/me", headers=bearer(token))
    token = r.headers["X-Access-Token"]
    clock.advance(51)
    r = await client.get("/auth/me", headers=bearer(token))
    assert await error_of(r) == "session_expired"


async def test_a_replaced_session_is_not_revived(make_app, clock):
    app = await make_app(clock=clock, implicit_refresh=True, access_ttl=30, max_sessions=1)
    client = app.test_client(use_cookies=False)
    first = await register_and_login(client)
    clock.advance(1)
    second = await register_and_login(client)
    clock.advance(30)
    r = await client.get("/auth/me", headers=bearer(first["access_token"]))
    assert r.status_code == 401
    assert await error_of(r) == "session_replaced"
    r = await client.get("/auth/me", headers=bearer(second["access_token"]))
    assert r.status_code == 200
    assert "X-Access-Token" in r.headers


async def test_a_revoked_cookie_session_clears_the_cookies_instead(make_app, clock):
    app = await make_app(
        clock=clock, implicit_refresh=True, access_ttl=ACCESS_TTL, token_location=("cookies",)
    )
    client = app.test_client(use_cookies=False)
    await client.post("/auth/register", json={"username": "alice", "password": "correct horse"})
    r = await client.post("/auth/login", json={"username": "alice", "password": "correct horse"})
    cookies = set_cookies(r)
    headers = cookie_header(cookies)
    headers["X-CSRF-Token"] = cookies["csrf_token"].value
    assert (await client.post("/auth/logout", headers=headers)).status_code == 204
    clock.advance(ACCESS_TTL + 1)
    r = await client.get("/auth/me", headers=cookie_header(cookies, "access_token"))
    assert await error_of(r) == "token_revoked"
    cleared = set_cookies(r)
    assert {name for name, m in cleared.items() if m.value == ""} == set(cookies)


@pytest.mark.parametrize("fault", ["forged", "refresh_token", "wrong_audience"])
async def test_only_an_otherwise_valid_token_is_refreshed(app, clock, fault):
    client = app.test_client(use_cookies=False)
    pair = await register_and_login(client)
    clock.advance(ACCESS_TTL + 1)
    stale = claims(pair["access_token"])
    if fault == "forged":
        token = jwt.encode(stale, "another-key-" + "x" * 40, headers={"typ": "at+jwt"})
    elif fault == "refresh_token":
        token = pair["refresh_token"]
        clock.advance(1_296_000)
    else:
        token = jwt.encode(
            {**stale, "aud": "someone-else"}, "test-signing-key-" + "k" * 40,
            headers={"typ": "at+jwt"},
        )  # fmt: skip
    r = await client.get("/auth/me", headers=bearer(token))
    assert r.status_code == 401
    assert await error_of(r) == "invalid_token"
