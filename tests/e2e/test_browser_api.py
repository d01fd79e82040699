"""Cookie mode, implicit refresh and password reset over HTTP, with httpx.

Cookie mode and password reset run against the real service process; implicit
refresh and re-issue, which need tokens to expire, against the test kit's
server, whose clock moves past ``exp`` without waiting.
"""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import httpx
import pytest
from quart import Quart

from quart_tokengate.service import Settings, create_app
from tests.e2e.session_helpers import (
    PASSWORD,
    login,
    login_async,
    login_attempt,
    login_response,
    register,
)
from tests.support import SECRET, bearer, claims, set_cookies, wait_for

COOKIE_NAMES = {"access_token", "refresh_token", "csrf_token"}


def csrf(http: httpx.Client) -> dict[str, str]:
    return {"X-CSRF-Token": http.cookies["csrf_token"]}


def test_cookie_mode_csrf_and_clearing(service_factory):
    service = service_factory(token_location="headers,cookies")
    with (
        httpx.Client(base_url=service.base_url) as browser,
        httpx.Client(base_url=service.base_url) as other,
    ):
        register(browser, "alice")

        # Plain http on a loopback address: every flag but Secure.
        r = login_response(browser, "alice")
        cookies = set_cookies(r)
        assert set(cookies) == COOKIE_NAMES
        assert {m["samesite"] for m in cookies.values()} == {"Lax"}
        assert not any(m["secure"] for m in cookies.values())
        assert cookies["access_token"]["httponly"] and cookies["refresh_token"]["httponly"]
        assert not cookies["csrf_token"]["httponly"]
        assert cookies["refresh_token"]["path"] == "/auth/refresh"
        assert cookies["access_token"]["path"] == cookies["csrf_token"]["path"] == "/"

        # The same server reached under a public name: Secure everywhere.
        r = login_response(other, "alice", headers={"Host": "auth.example.com"})
        assert set(set_cookies(r)) == COOKIE_NAMES
        assert all(m["secure"] for m in set_cookies(r).values())
        other.cookies.clear()
        other_pair = login(other, "alice")

        # Safe requests ride on the cookie alone.
        r = browser.get("/auth/me")
        assert r.status_code == 200 and r.json()["username"] == "alice"

        # Unsafe ones need the CSRF header, and the right one.
        for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": ""}):
            r = browser.post("/auth/logout", headers=headers)
            assert r.status_code == 403
            assert r.json()["error"] == "csrf_failed"
        assert browser.get("/auth/me").status_code == 200

        # A header-authenticated request needs none, even with cookies present.
        r = other.post("/auth/logout", headers=bearer(other_pair["access_token"]))
        assert r.status_code == 204

        # Refresh by cookie: CSRF checked, everything rotated, the jar follows.
        old_refresh = browser.cookies["refresh_token"]
        assert browser.post("/auth/refresh").json()["error"] == "csrf_failed"
        r = browser.post("/auth/refresh", headers=csrf(browser))
        assert r.status_code == 200
        assert set(set_cookies(r)) == COOKIE_NAMES
        assert browser.cookies["refresh_token"] != old_refresh
        assert browser.get("/auth/me").status_code == 200

        # Ending a session from elsewhere: its next request clears its cookies.
        other.cookies.clear()
        login(other, "alice")
        victim = claims(other.cookies["access_token"])["sid"]
        r = browser.delete(f"/auth/sessions/{victim}", headers=csrf(browser))
        assert r.status_code == 204
        r = other.get("/auth/me")
        assert r.status_code == 401 and r.json()["error"] == "token_revoked"
        cleared = set_cookies(r)
        assert set(cleared) == COOKIE_NAMES
        assert all(m.value == "" and m["max-age"] == "0" for m in cleared.values())
        assert not other.cookies

        # Logout clears all three, and they are gone from the jar.
        r = browser.post("/auth/logout", headers=csrf(browser))
        assert r.status_code == 204
        assert set(set_cookies(r)) == COOKIE_NAMES
        assert not browser.cookies
        r = browser.get("/auth/me")
        assert r.status_code == 401 and r.json()["error"] == "missing_token"


@pytest.fixture
def tokengate_app() -> Quart:
    """For the test kit's server: headers and cookies, implicit refresh, one session a user."""
    return create_app(
        Settings(
            secret_key=SECRET,
            token_location=("headers", "cookies"),
            implicit_refresh=True,
            max_sessions=1,
        )
    )


async def test_implicit_refresh_and_reissue(tokengate_server, tokengate_clock):
    """Access tokens of 300 s, idle timeout 1800 s, on the test kit's clock."""
    users = ("alice", "bob", "carol", "dave", "erin")
    async with (
        httpx.AsyncClient(base_url=tokengate_server.base_url) as http,
        httpx.AsyncClient(base_url=tokengate_server.base_url) as browser,
    ):
        registered = await asyncio.gather(
            *(
                http.post("/auth/register", json={"username": n, "password": PASSWORD})
                for n in users
            )
        )
        assert {r.status_code for r in registered} == {201}
        # Every session this test needs, opened up front so one wait serves them all.
        idle, alice, _, carol, dave = await asyncio.gather(
            login_async(http, "erin"), login_async(http, "alice"), login_async(browser, "bob"),
            login_async(http, "carol"), login_async(http, "dave"),
        )  # fmt: skip
        idle_since = tokengate_clock()
        assert (
            await http.post("/auth/logout", headers=bearer(carol["access_token"]))
        ).status_code == 204
        await login_async(http, "dave")  # one session per user: this pushes the first out
        expired = alice["access_token"]
        tokengate_clock.advance(300)  # every access token so far has expired
        assert claims(browser.cookies["access_token"])["exp"] <= tokengate_clock()

        # 100 concurrent requests with one expired token: all accepted, one new token.
        responses = await asyncio.gather(
            *(http.get("/auth/me", headers=bearer(expired)) for _ in range(100))
        )
        assert [r.status_code for r in responses] == [200] * 100
        new_tokens = {r.headers["X-Access-Token"] for r in responses}
        assert len(new_tokens) == 1
        (fresh,) = new_tokens
        assert claims(fresh)["sid"] == claims(expired)["sid"]
        r = await http.get("/auth/me", headers=bearer(fresh))
        assert r.status_code == 200 and "X-Access-Token" not in r.headers
        assert set_cookies(r) == {}  # a header client gets the header only

        # In cookie mode the new token comes in the cookie as well.
        responses = await asyncio.gather(*(browser.get("/auth/me") for _ in range(20)))
        assert {r.status_code for r in responses} == {200}
        renewed = {set_cookies(r)["access_token"].value for r in responses}
        assert renewed == {responses[0].headers["X-Access-Token"]}
        assert browser.cookies["access_token"] in renewed

        # Logged out, or replaced: never revived.
        r = await http.get("/auth/me", headers=bearer(carol["access_token"]))
        assert r.status_code == 401 and r.json()["error"] == "token_revoked"
        r = await http.get("/auth/me", headers=bearer(dave["access_token"]))
        assert r.status_code == 401 and r.json()["error"] == "session_replaced"

        # A cookie in its last second is re-issued before it expires.
        current = browser.cookies["access_token"]
        tokengate_clock.advance(claims(current)["exp"] - tokengate_clock() - 30)
        r = await browser.get("/auth/me")
        assert r.status_code == 200
        reissued = set_cookies(r)["access_token"].value
        assert claims(reissued)["exp"] > claims(current)["exp"]
        assert claims(current)["exp"] > tokengate_clock(), "the old one had not expired yet"

        # Idle for the timeout: not revived either.
        tokengate_clock.advance(idle_since + 1800 - tokengate_clock())
        r = await http.get("/auth/me", headers=bearer(idle["access_token"]))
        assert r.status_code == 401 and r.json()["error"] == "session_expired"
        assert "X-Access-Token" not in r.headers


def test_password_reset_over_http(service_factory):
    service = service_factory(login_max_failures=3)
    outbox = Path(service.workdir) / "instance" / "outbox"
    with httpx.Client(base_url=service.base_url) as http:
        register(http, "alice")
        session = login(http, "alice")

        r = http.post("/auth/password-reset/request", json={"username": "nobody"})
        assert (r.status_code, r.json()) == (202, {})

        r = http.post("/auth/password-reset/request", json={"username": "alice"})
        assert (r.status_code, r.json()) == (202, {})
        # Written in the background, after the answer; the unknown name's never is.
        wait_for(lambda: list(outbox.glob("*.json")), what="the reset message")
        (path,) = outbox.glob("*.json")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        message = json.loads(path.read_text())
        assert set(message) == {"to", "purpose", "token", "created_at"}
        assert (message["to"], message["purpose"]) == ("alice", "password_reset")
        assert message["token"] not in (Path(service.log)).read_text()

        # A password the server refuses leaves the token usable.
        confirm = {"token": message["token"], "new_password": "short"}
        r = http.post("/auth/password-reset/confirm", json=confirm)
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"
        confirm["new_password"] = "battery staple"
        assert http.post("/auth/password-reset/confirm", json=confirm).status_code == 204

        # Every session is over; the new password works, the old does not.
        r = http.get("/auth/me", headers=bearer(session["access_token"]))
        assert r.json()["error"] == "token_revoked"
        r = login_attempt(http, "alice")
        assert r.json()["error"] == "invalid_credentials"
        assert login_attempt(http, "alice", "battery staple").status_code == 200

        # Single use.
        r = http.post("/auth/password-reset/confirm", json=confirm)
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"

        # Throttled per name: three requests in the window, then 429.
        for _ in range(2):
            r = http.post("/auth/password-reset/request", json={"username": "alice"})
            assert r.status_code == 202
        r = http.post("/auth/password-reset/request", json={"username": "alice"})
        assert r.status_code == 429
        assert r.json()["error"] == "too_many_attempts"
        assert int(r.headers["Retry-After"]) > 0
        wait_for(lambda: len(list(outbox.glob("*.json"))) == 3, what="three reset messages")
