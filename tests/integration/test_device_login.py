"""Device login (RFC 8628): device authorization, the device-code grant, the confirmation routes."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select

from quart_tokengate.service.db.migrate import upgrade
from quart_tokengate.service.db.models import AuthSession, DeviceCode
from quart_tokengate.service.oauth.device_codes import (
    USER_CODE_ALPHABET,
    read_user_code,
    show_user_code,
)
from tests.conftest import me, refresh
from tests.integration.test_cookies import cookie_header
from tests.support import assert_unavailable, bearer, set_cookies, timed_async

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CREDENTIALS = {"username": "alice", "password": "correct horse"}


async def authorize(client: Any, **form: str) -> dict[str, Any]:
    r = await client.post("/oauth/device_authorization", data=urlencode(form), headers=FORM)
    assert r.status_code == 200, await r.get_data()
    assert r.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await r.get_json()
    return body


async def poll(client: Any, device_code: str, **extra: str) -> tuple[int, dict[str, Any]]:
    body = {"grant_type": GRANT, "device_code": device_code, **extra}
    r = await client.post("/oauth/token", data=urlencode(body), headers=FORM)
    return r.status_code, await r.get_json()


async def poll_error(client: Any, device_code: str, **extra: str) -> str:
    status, body = await poll(client, device_code, **extra)
    assert status == 400, body
    assert set(body) == {"error", "error_description"}
    return str(body["error"])


class Page:
    """The confirmation routes, with the account page's cookies and CSRF header."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.headers: dict[str, str] = {}

    async def login(self, credentials: dict[str, str] = CREDENTIALS, ip: str = "10.0.0.9") -> None:
        r = await self.client.post("/account/login", json=credentials)
        assert r.status_code == 200, await r.get_data()
        cookies = set_cookies(r)
        self.ip = ip
        self.headers = {
            **cookie_header(cookies, "account_access", "account_csrf"),
            "X-CSRF-Token": cookies["account_csrf"].value,
        }

    async def call(self, action: str, code: str, **headers: str) -> tuple[int, dict[str, Any]]:
        r = await self.client.post(
            f"/account/device/{action}", json={"user_code": code},
            headers={**self.headers, **headers}, scope_base={"client": (self.ip, 5000)},
        )  # fmt: skip
        return r.status_code, await r.get_json()


async def user_page(app: Any, credentials: dict[str, str] = CREDENTIALS) -> Page:
    client = app.test_client(use_cookies=False)
    r = await client.post("/auth/register", json=credentials)
    assert r.status_code in (201, 409)
    page = Page(client)
    await page.login(credentials)
    return page


async def device_sessions(app: Any) -> list[AuthSession]:
    async with app.extensions["tokengate"].db() as db:
        rows = await db.execute(select(AuthSession).where(AuthSession.ended_at.is_(None)))
        return [r for r in rows.scalars() if r.device and "device login" in r.device]


# -- the codes ----------------------------------------------------------------
def test_user_codes_are_read_in_any_case_with_or_without_the_hyphen():
    assert read_user_code("BCDF-GHJK") == "BCDFGHJK"
    assert read_user_code("bcdfghjk") == "BCDFGHJK"
    assert read_user_code(" bcdf ghjk ") == "BCDFGHJK"
    assert read_user_code("Bcdf-gHjk") == "BCDFGHJK"
    bad_codes = (
        "",
        "BCDF-GHJ",
        "BCDF-GHJKL",
        "ABCD-EFGH",
        "BCDF-GHJ1",
        "BCDF_GHJK",
        "\u0412CDF-GHJK",
    )
    for bad in bad_codes:
        assert read_user_code(bad) is None, bad
    assert show_user_code("BCDFGHJK") == "BCDF-GHJK"


# -- the whole loop -----------------------------------------------------------
async def test_device_login_pending_then_approved_gives_one_normal_session(app, clock):
    client = app.test_client()
    started = await authorize(client, client_id="cli", device="build box", scope="")
    assert set(started) == {
        "device_code", "user_code", "verification_uri", "verification_uri_complete",
        "expires_in", "interval",
    }  # fmt: skip
    assert started["expires_in"] == 600 and started["interval"] == 5
    code = started["user_code"]
    assert len(code) == 9 and code[4] == "-" and set(code) - {"-"} <= set(USER_CODE_ALPHABET)
    assert started["verification_uri"] == "http://localhost/account/device"
    assert started["verification_uri_complete"] == f"{started['verification_uri']}?user_code={code}"

    assert (
        await poll_error(client, started["device_code"], client_id="cli") == "authorization_pending"
    )
    page = await user_page(app)
    status, shown = await page.call("lookup", code.lower().replace("-", ""))
    assert status == 200, shown
    assert shown["device"] == "build box" and shown["user_code"] == code
    assert shown["client_id"] == "cli" and shown["scopes"] == []
    # What the session will carry: every scope of the account (none here), said on the page.
    assert shown["grants"] == []
    assert "requested_at" in shown and "user_agent" in shown and "ip" in shown
    status, decided = await page.call("approve", code)
    assert status == 200 and decided["status"] == "approved"

    status, pair = await poll(client, started["device_code"], client_id="cli")
    assert status == 200, pair
    assert {"access_token", "refresh_token", "token_type", "expires_in", "scope"} <= set(pair)
    assert await me(client, pair) == 200
    # A normal session: listed with its device name, marked, refreshed, ended.
    r = await client.get("/auth/sessions", headers=bearer(pair))
    listed = [s for s in (await r.get_json())["sessions"] if s["current"]]
    assert listed[0]["device"] == "build box (device login)"
    fresh = await refresh(client, pair["refresh_token"])
    assert isinstance(fresh, dict)
    # Used once: the second poll is invalid_grant, and no second session opens.
    assert await poll_error(client, started["device_code"], client_id="cli") == "invalid_grant"
    assert len(await device_sessions(app)) == 1
    assert (await client.post("/auth/logout", headers=bearer(fresh))).status_code == 204
    assert await me(client, fresh) == "token_revoked"


async def test_polling_early_is_slow_down_every_time_and_the_interval_grows(make_app, clock):
    app = await make_app(clock=clock)
    client = app.test_client()
    started = await authorize(client)
    dc = started["device_code"]
    assert await poll_error(client, dc) == "authorization_pending"
    clock.advance(4)
    assert await poll_error(client, dc) == "slow_down"  # interval 5 -> 10
    clock.advance(9)
    _, body = await poll(client, dc)
    assert body["error"] == "slow_down" and "15 seconds" in body["error_description"]
    clock.advance(15)
    assert await poll_error(client, dc) == "authorization_pending"
    clock.advance(14)
    assert await poll_error(client, dc) == "slow_down"
    async with app.extensions["tokengate"].db() as db:
        row = (await db.execute(select(DeviceCode))).scalar_one()
    assert row.interval == 20


async def test_denied_expired_unknown_malformed_and_other_clients_codes(make_app, clock):
    app = await make_app(clock=clock, device_code_ttl=60)
    client = app.test_client()
    page = await user_page(app)
    denied = await authorize(client, client_id="cli")
    assert (await page.call("deny", denied["user_code"]))[0] == 200
    assert await poll_error(client, denied["device_code"], client_id="cli") == "access_denied"
    clock.advance(5)
    assert await poll_error(client, denied["device_code"], client_id="cli") == "access_denied"
    # A code decided is not decided again.
    status, body = await page.call("approve", denied["user_code"])
    assert status == 404 and body["error"] == "not_found"

    other = await authorize(client, client_id="cli")
    assert await poll_error(client, other["device_code"], client_id="evil") == "invalid_grant"
    assert await poll_error(client, other["device_code"]) == "invalid_grant"
    assert await poll_error(client, "x" * 43) == "invalid_grant"  # unknown
    assert await poll_error(client, "not a code") == "invalid_grant"  # malformed
    status, body = await poll(client, "")
    assert status == 400 and body["error"] == "invalid_request"

    clock.advance(61)
    assert await poll_error(client, other["device_code"], client_id="cli") == "expired_token"
    status, body = await page.call("lookup", other["user_code"])
    assert status == 404
    status, body = await page.call("lookup", "not-a-code")
    assert status == 404 and body["error"] == "not_found"
    assert await device_sessions(app) == []


async def test_bad_authorization_requests_are_4xx_and_store_nothing(app):
    client = app.test_client()
    for form, code in [
        ("scope=a%20%20b", "invalid_scope"),
        ("scope=%22quoted%22", "invalid_scope"),
        ("scope=" + "s" * 1001, "invalid_request"),
        ("client_id=" + "x" * 65, "invalid_request"),
        ("device=%00bell", "invalid_request"),
        # A right-to-left override would make the page show the name reversed.
        ("device=laptop%E2%80%AEkoob", "invalid_request"),
        ("device=build%E2%81%A6box", "invalid_request"),
        ("device=" + "d" * 201, "invalid_request"),
        ("client_id=a&client_id=b", "invalid_request"),
    ]:
        r = await client.post("/oauth/device_authorization", data=form, headers=FORM)
        assert r.status_code == 400, form
        assert (await r.get_json())["error"] == code, form
    r = await client.post("/oauth/device_authorization", json={"device": "x"})
    assert r.status_code == 400
    async with app.extensions["tokengate"].db() as db:
        assert (await db.execute(select(func.count()).select_from(DeviceCode))).scalar_one() == 0


async def test_two_pages_approving_at_once_make_one_session_and_two_polls_one_pair(app):
    client = app.test_client()
    started = await authorize(client)
    pages = [await user_page(app) for _ in range(2)]
    answers = await asyncio.gather(*(p.call("approve", started["user_code"]) for p in pages))
    assert sorted(status for status, _ in answers) == [200, 404]
    polls = await asyncio.gather(*(poll(client, started["device_code"]) for _ in range(4)))
    assert sorted(status for status, _ in polls) == [200, 400, 400, 400]
    assert {b.get("error") for s, b in polls if s == 400} == {"invalid_grant"}
    assert len(await device_sessions(app)) == 1


async def test_approving_needs_a_fresh_login_csrf_and_the_scopes_it_asks_for(make_app, clock):
    app = await make_app(clock=clock)
    client = app.test_client()
    page = await user_page(app)
    started = await authorize(client, scope="notes:write")
    status, body = await page.call("approve", started["user_code"], **{"X-CSRF-Token": "x"})
    assert status == 403 and body["error"] == "csrf_failed"
    # The user lacks notes:write: approving is refused, the code stays pending.
    status, body = await page.call("approve", started["user_code"])
    assert status == 403 and body["error"] == "insufficient_scope"
    assert await poll_error(client, started["device_code"]) == "authorization_pending"
    clock.advance(901)  # past TOKENGATE_FRESH_TTL (and the access token's life)
    status, body = await page.call("lookup", started["user_code"])
    assert status == 401 and body["error"] in ("fresh_login_required", "token_expired")
    other = await authorize(client)
    await page.login()
    status, body = await page.call("approve", other["user_code"])
    assert status == 200
    anonymous = await app.test_client().post(
        "/account/device/approve", json={"user_code": other["user_code"]}
    )
    assert anonymous.status_code == 401


async def test_wrong_user_codes_are_throttled_per_account_and_per_address(make_app, clock):
    app = await make_app(clock=clock, login_max_failures=3)
    client = app.test_client()
    started = await authorize(client)
    alice = await user_page(app)
    for _ in range(3):
        assert (await alice.call("lookup", "BBBB-BBBB"))[0] == 404
    # Over the limit: even the right code is refused, so guessing cannot go on.
    r = await alice.client.post(
        "/account/device/lookup", json={"user_code": started["user_code"]},
        headers=alice.headers, scope_base={"client": (alice.ip, 5000)},
    )  # fmt: skip
    assert r.status_code == 429 and (await r.get_json())["error"] == "too_many_attempts"
    # Counted in Redis for TOKENGATE_LOGIN_WINDOW (900 s), with its expiry.
    assert 1 <= int(r.headers["Retry-After"]) <= 900
    # Another account from the same address is refused too (per address)...
    bob = await user_page(app, {"username": "bob", "password": "correct horse"})
    assert (await bob.call("lookup", started["user_code"]))[0] == 429
    # ...and from another address it works.
    bob.ip = "10.0.0.10"
    assert (await bob.call("lookup", started["user_code"]))[0] == 200
    # The account's own count holds from any address.
    alice.ip = "10.0.0.11"
    assert (await alice.call("lookup", started["user_code"]))[0] == 429
    # A malformed entry is no guess: it is not counted against the address.
    for _ in range(5):
        assert (await bob.call("lookup", "12345"))[0] == 404
    assert (await bob.call("approve", started["user_code"]))[0] == 200


async def test_codes_live_in_sql_another_instance_confirms_and_answers(make_app):
    first = await make_app()
    second = await make_app()  # same database and Redis: another instance
    started = await authorize(first.test_client())
    page = await user_page(second)
    assert (await page.call("approve", started["user_code"]))[0] == 200
    status, pair = await poll(first.test_client(), started["device_code"])
    assert status == 200
    assert await me(second.test_client(), pair) == 200


async def test_redis_down_poll_is_503_fast_and_the_code_still_works_after(make_app, private_redis):
    app = await make_app(redis_url=private_redis.url)
    client = app.test_client()
    started = await authorize(client)
    page = await user_page(app)
    assert (await page.call("approve", started["user_code"]))[0] == 200
    private_redis.stop()
    try:
        r, elapsed = await timed_async(
            lambda: client.post(
                "/oauth/token",
                data=urlencode({"grant_type": GRANT, "device_code": started["device_code"]}),
                headers=FORM,
            )
        )
        assert_unavailable(r, elapsed, await r.get_json())
        r, elapsed = await timed_async(
            lambda: page.client.post(
                "/account/device/lookup", json={"user_code": "BBBB-BBBB"}, headers=page.headers
            )
        )
        assert_unavailable(r, elapsed, await r.get_json())
    finally:
        private_redis.start()
    status, pair = await poll(client, started["device_code"])
    assert status == 200, pair
    assert await me(client, pair) == 200
    assert len(await device_sessions(app)) == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_database_down_is_503_fast_and_the_code_still_works_after(make_app, postgres):
    await asyncio.to_thread(upgrade, postgres.url)
    app = await make_app(database_url=postgres.url)
    client = app.test_client()
    started = await authorize(client)
    page = await user_page(app)
    postgres.stop()
    try:
        for call in (
            lambda: client.post("/oauth/device_authorization", data="", headers=FORM),
            lambda: client.post(
                "/oauth/token",
                data=urlencode({"grant_type": GRANT, "device_code": started["device_code"]}),
                headers=FORM,
            ),
            lambda: page.client.post(
                "/account/device/approve",
                json={"user_code": started["user_code"]},
                headers=page.headers,
            ),
        ):
            r, elapsed = await timed_async(call)
            assert_unavailable(r, elapsed, await r.get_json())
    finally:
        postgres.start()
    assert await poll_error(client, started["device_code"]) == "authorization_pending"
    assert (await page.call("approve", started["user_code"]))[0] == 200
    status, pair = await poll(client, started["device_code"])
    assert status == 200, pair


async def test_one_address_may_start_only_so_many_device_logins(make_app):
    app = await make_app(login_max_failures=1)  # ten per window
    client = app.test_client()
    for _ in range(10):
        await authorize(client)
    r = await client.post("/oauth/device_authorization", data="", headers=FORM)
    assert r.status_code == 429 and (await r.get_json())["error"] == "too_many_attempts"
    assert int(r.headers["Retry-After"]) >= 1
    # Another address is not held back.
    r = await client.post(
        "/oauth/device_authorization", data="", headers=FORM,
        scope_base={"client": ("10.9.9.9", 5000)},
    )  # fmt: skip
    assert r.status_code == 200


async def test_the_page_refuses_bad_bodies_and_never_echoes_a_bad_query(app):
    page = await user_page(app)
    for body in ({}, {"user_code": 5}, {"user_code": "B" * 65}, {"user_code": ""}):
        r = await page.client.post(
            "/account/device/lookup", json=body, headers=page.headers,
            scope_base={"client": (page.ip, 5000)},
        )  # fmt: skip
        assert r.status_code == 400, body
        assert (await r.get_json())["error"] == "invalid_request"
    r = await page.client.post(
        "/account/device/approve", data="not json", headers=page.headers,
        scope_base={"client": (page.ip, 5000)},
    )  # fmt: skip
    assert r.status_code == 400
    r = await app.test_client().get('/account/device?user_code="><script>alert(1)</script>')
    html = await r.get_data(as_text=True)
    assert r.status_code == 200 and "<script>alert" not in html and 'value=""' in html
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    r = await app.test_client().get("/account/device?user_code=bcdf%20ghjk")
    assert 'value="BCDF-GHJK"' in await r.get_data(as_text=True)


async def test_the_page_and_its_answers_are_never_cached(app):
    client = app.test_client()
    r = await client.get("/account/device")
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    started = await authorize(client)
    page = await user_page(app)
    r = await page.client.post(
        "/account/device/lookup", json={"user_code": started["user_code"]}, headers=page.headers
    )
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"


async def test_an_api_key_never_confirms_a_device(app):
    # Contract section 9: device confirmation refuses an API key, even with the
    # page's own cookies beside it; the code stays pending.
    client = app.test_client()
    started = await authorize(client)
    page = await user_page(app)
    login = await client.post("/auth/login", json=CREDENTIALS)
    pair = await login.get_json()
    r = await client.post(
        "/auth/api-keys", json={"name": "ci"}, headers=bearer(pair["access_token"])
    )
    key = (await r.get_json())["key"]
    for route in ("lookup", "approve", "deny"):
        r = await page.client.post(
            f"/account/device/{route}",
            json={"user_code": started["user_code"]},
            headers={**page.headers, **bearer(key)},
        )
        assert r.status_code == 403, route
        assert (await r.get_json())["error"] == "api_key_not_allowed"
    assert await poll_error(client, started["device_code"]) == "authorization_pending"


async def test_a_device_that_polls_with_a_dpop_proof_gets_a_bound_session(app):
    """RFC 9449 section 5 at the device-code grant: the poll that succeeds binds the pair."""
    import time

    from quart_tokengate.client._dpop import generate_key, make_proof

    client = app.test_client()
    key = generate_key()
    started = await authorize(client, client_id="cli", device="pi")
    page = await user_page(app)
    status, _ = await page.call("approve", started["user_code"])
    assert status == 200
    body = {"grant_type": GRANT, "device_code": started["device_code"], "client_id": "cli"}
    url = "http://localhost/oauth/token"
    proof = make_proof(key, "POST", url, now=time.time())
    r = await client.post("/oauth/token", data=urlencode(body), headers={**FORM, "DPoP": proof})
    pair = await r.get_json()
    assert r.status_code == 200, pair
    assert pair["token_type"] == "DPoP"
    token = pair["access_token"]
    me_url = "http://localhost/auth/me"
    headers = {
        "Authorization": f"DPoP {token}",
        "DPoP": make_proof(key, "GET", me_url, now=time.time(), access_token=token),
    }
    assert (await client.get("/auth/me", headers=headers)).status_code == 200
    assert await me(client, pair) == "invalid_token"  # as Bearer, refused
