"""Cookie mode (CONTRACT section 4): the three cookies, CSRF, clearing, re-issue near expiry.

The test client is built without its own cookie jar: every test sends the
``Cookie`` header it means to send, and reads ``Set-Cookie`` headers as a
browser would, so the flags themselves are what is checked.
"""

from __future__ import annotations

import asyncio
import json
from http.cookies import Morsel
from typing import Any

import jwt
import pytest

from tests.conftest import bearer
from tests.support import claims, set_cookies

CREDENTIALS = {"username": "alice", "password": "correct horse"}
COOKIE_NAMES = {"access_token", "refresh_token", "csrf_token"}


def cookie_header(cookies: dict[str, Morsel[str]], *names: str) -> dict[str, str]:
    """A ``Cookie`` request header carrying ``names`` (all of them when none are given)."""
    chosen = names or tuple(cookies)
    return {"Cookie": "; ".join(f"{n}={cookies[n].value}" for n in chosen)}


def is_deleted(morsel: Morsel[str]) -> bool:
    return morsel.value == "" and morsel["max-age"] == "0"


async def cookie_login(client: Any, **request: Any) -> tuple[Any, dict[str, Morsel[str]]]:
    """Register alice (if new), log in, return the login response and its cookies."""
    await client.post("/auth/register", json=CREDENTIALS)
    r = await client.post("/auth/login", json=CREDENTIALS, **request)
    assert r.status_code == 200, await r.get_data()
    return r, set_cookies(r)


def browser_headers(cookies: dict[str, Morsel[str]], csrf: str | None = None) -> dict[str, str]:
    """What a page sends: the access and CSRF cookies, and the CSRF header if given."""
    headers = cookie_header(cookies, "access_token", "csrf_token")
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    return headers


@pytest.fixture
async def cookie_app(make_app, clock):
    return await make_app(clock=clock, token_location=("cookies", "headers"))


async def test_login_sets_three_cookies_with_the_contract_flags(cookie_app):
    client = cookie_app.test_client(use_cookies=False)
    r, cookies = await cookie_login(client)
    assert set(cookies) == COOKIE_NAMES
    body = await r.get_json()
    access, refresh, csrf = (cookies[n] for n in ("access_token", "refresh_token", "csrf_token"))
    assert access.value == body["access_token"]
    assert refresh.value == body["refresh_token"]
    for morsel in (access, refresh, csrf):
        assert morsel["samesite"] == "Lax"
        # plain http on localhost: the one case where Secure is left off
        assert not morsel["secure"]
    assert access["httponly"] and refresh["httponly"]
    assert not csrf["httponly"], "the page's script must be able to read the CSRF cookie"
    assert access["path"] == "/" and csrf["path"] == "/"
    assert refresh["path"] == "/auth/refresh"
    assert len(csrf.value) >= 20


@pytest.mark.parametrize(
    ("scheme", "host"),
    [("https", "localhost"), ("http", "auth.example.com"), ("https", "auth.example.com")],
)
async def test_cookies_are_secure_unless_plain_http_on_localhost(cookie_app, scheme, host):
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client, scheme=scheme, headers={"Host": host})
    assert set(cookies) == COOKIE_NAMES
    assert all(m["secure"] for m in cookies.values())


async def test_plain_http_on_loopback_addresses_is_not_secure(cookie_app):
    client = cookie_app.test_client(use_cookies=False)
    for host in ("127.0.0.1:8000", "[::1]:8000", "localhost:8000"):
        _, cookies = await cookie_login(client, headers={"Host": host})
        assert not any(m["secure"] for m in cookies.values()), host


async def test_refresh_by_cookie_rotates_and_sets_the_cookies_again(cookie_app):
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    headers = cookie_header(cookies, "refresh_token", "csrf_token")
    r = await client.post("/auth/refresh", headers=headers)
    assert r.status_code == 403
    assert (await r.get_json())["error"] == "csrf_failed"

    headers["X-CSRF-Token"] = cookies["csrf_token"].value
    r = await client.post("/auth/refresh", headers=headers)
    assert r.status_code == 200, await r.get_data()
    renewed = set_cookies(r)
    assert set(renewed) == COOKIE_NAMES
    assert renewed["refresh_token"].value != cookies["refresh_token"].value
    assert renewed["refresh_token"]["path"] == "/auth/refresh"
    assert renewed["access_token"].value == (await r.get_json())["access_token"]
    me = await client.get("/auth/me", headers=cookie_header(renewed, "access_token"))
    assert me.status_code == 200


async def test_safe_cookie_request_needs_no_csrf(cookie_app):
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    r = await client.get("/auth/me", headers=cookie_header(cookies, "access_token"))
    assert r.status_code == 200
    assert (await r.get_json())["username"] == "alice"


@pytest.mark.parametrize("csrf", [None, "", "wrong-value", "access_token"])
async def test_unsafe_cookie_request_without_the_right_csrf_header_is_refused(cookie_app, csrf):
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    if csrf == "access_token":  # another cookie's value is no better
        csrf = cookies["access_token"].value
    r = await client.post("/auth/logout", headers=browser_headers(cookies, csrf))
    assert r.status_code == 403
    body = await r.get_json()
    assert body["error"] == "csrf_failed"
    assert set(body) == {"error", "error_description"}
    assert set_cookies(r) == {}
    # refused before the view ran: the session is still alive
    me = await client.get("/auth/me", headers=cookie_header(cookies, "access_token"))
    assert me.status_code == 200


async def test_csrf_header_without_the_csrf_cookie_is_refused(cookie_app):
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    headers = cookie_header(cookies, "access_token")
    headers["X-CSRF-Token"] = cookies["csrf_token"].value
    r = await client.post("/auth/logout", headers=headers)
    assert r.status_code == 403
    assert (await r.get_json())["error"] == "csrf_failed"


@pytest.mark.parametrize(
    ("method", "path", "ok"),
    [
        ("DELETE", "/auth/sessions/{other}", 204),
        ("POST", "/auth/logout-all", 204),
        ("POST", "/auth/logout", 204),
    ],
)
async def test_every_unsafe_method_checks_csrf(cookie_app, method, path, ok):
    client = cookie_app.test_client(use_cookies=False)
    _, other = await cookie_login(client)
    _, cookies = await cookie_login(client)
    path = path.format(other=claims(other["access_token"].value)["sid"])
    r = await client.open(path, method=method, headers=browser_headers(cookies))
    assert r.status_code == 403
    r = await client.open(
        path, method=method, headers=browser_headers(cookies, cookies["csrf_token"].value)
    )
    assert r.status_code == ok, await r.get_data()


async def test_header_authenticated_request_needs_no_csrf(cookie_app):
    client = cookie_app.test_client(use_cookies=False)
    r, cookies = await cookie_login(client)
    token = (await r.get_json())["access_token"]
    # Cookies ride along as a browser would send them; the Authorization
    # header is what authenticates, and no page can forge that cross-site.
    headers = {**bearer(token), **cookie_header(cookies, "access_token", "csrf_token")}
    r = await client.post("/auth/logout", headers=headers)
    assert r.status_code == 204
    r = await client.get("/auth/me", headers=bearer(token))
    assert (await r.get_json())["error"] == "token_revoked"


async def test_cookies_only_mode_ignores_the_authorization_header(make_app):
    app = await make_app(token_location=("cookies",))
    client = app.test_client(use_cookies=False)
    r, cookies = await cookie_login(client)
    token = (await r.get_json())["access_token"]
    r = await client.get("/auth/me", headers=bearer(token))
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "missing_token"
    r = await client.get("/auth/me", headers=cookie_header(cookies, "access_token"))
    assert r.status_code == 200


async def test_headers_only_mode_sets_no_cookies_and_ignores_them(make_app):
    app = await make_app()
    client = app.test_client(use_cookies=False)
    r, cookies = await cookie_login(client)
    assert cookies == {}
    token = (await r.get_json())["access_token"]
    r = await client.get("/auth/me", headers={"Cookie": f"access_token={token}"})
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "missing_token"


@pytest.mark.parametrize("path", ["/auth/logout", "/auth/logout-all"])
async def test_logout_clears_all_three_cookies(cookie_app, path):
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    r = await client.post(path, headers=browser_headers(cookies, cookies["csrf_token"].value))
    assert r.status_code == 204
    cleared = set_cookies(r)
    assert set(cleared) == COOKIE_NAMES
    assert all(is_deleted(m) for m in cleared.values())
    # deleted at the path it was set on, or the browser would keep it
    assert cleared["refresh_token"]["path"] == "/auth/refresh"
    assert cleared["access_token"]["path"] == "/"
    r = await client.get("/auth/me", headers=cookie_header(cookies, "access_token"))
    assert (await r.get_json())["error"] == "token_revoked"


async def test_ending_ones_own_session_by_id_clears_the_cookies(cookie_app):
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    sid = claims(cookies["access_token"].value)["sid"]
    headers = browser_headers(cookies, cookies["csrf_token"].value)
    r = await client.delete(f"/auth/sessions/{sid}", headers=headers)
    assert r.status_code == 204
    assert set(set_cookies(r)) == COOKIE_NAMES


async def test_a_revoked_session_clears_the_cookies(cookie_app):
    client = cookie_app.test_client(use_cookies=False)
    _, first = await cookie_login(client)
    _, second = await cookie_login(client)
    sid = claims(first["access_token"].value)["sid"]
    headers = browser_headers(second, second["csrf_token"].value)
    assert (await client.delete(f"/auth/sessions/{sid}", headers=headers)).status_code == 204
    assert set_cookies(await client.get("/auth/me", headers=cookie_header(second))) == {}

    r = await client.get("/auth/me", headers=cookie_header(first, "access_token"))
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "token_revoked"
    cleared = set_cookies(r)
    assert set(cleared) == COOKIE_NAMES
    assert all(is_deleted(m) for m in cleared.values())

    # the refresh cookie is just as dead, and its failure clears too
    headers = cookie_header(first, "refresh_token", "csrf_token")
    headers["X-CSRF-Token"] = first["csrf_token"].value
    r = await client.post("/auth/refresh", headers=headers)
    assert (await r.get_json())["error"] == "token_revoked"
    assert set(set_cookies(r)) == COOKIE_NAMES


async def test_an_idle_expired_session_clears_the_cookies(make_app, clock):
    app = await make_app(clock=clock, token_location=("cookies",), idle_timeout=60, access_ttl=120)
    client = app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    clock.advance(61)
    r = await client.get("/auth/me", headers=cookie_header(cookies, "access_token"))
    assert (await r.get_json())["error"] == "session_expired"
    assert set(set_cookies(r)) == COOKIE_NAMES


async def test_an_expired_access_cookie_is_kept_for_refresh(cookie_app, clock):
    """``token_expired`` means "refresh", so the cookies must survive it."""
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    clock.advance(301)
    r = await client.get("/auth/me", headers=cookie_header(cookies, "access_token"))
    assert (await r.get_json())["error"] == "token_expired"
    assert set_cookies(r) == {}
    headers = cookie_header(cookies, "refresh_token", "csrf_token")
    headers["X-CSRF-Token"] = cookies["csrf_token"].value
    r = await client.post("/auth/refresh", headers=headers)
    assert r.status_code == 200


async def test_a_forged_cookie_is_refused_and_cleared(cookie_app):
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    forged = jwt.encode(claims(cookies["access_token"].value), "x" * 40, headers={"typ": "at+jwt"})
    r = await client.get("/auth/me", headers={"Cookie": f"access_token={forged}"})
    assert (await r.get_json())["error"] == "invalid_token"
    assert set(set_cookies(r)) == COOKIE_NAMES


async def test_a_cookie_nearing_expiry_is_reissued_on_the_response(cookie_app, clock):
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    old = cookies["access_token"].value

    # far from expiry: nothing is re-issued
    r = await client.get("/auth/me", headers=cookie_header(cookies, "access_token"))
    assert set_cookies(r) == {}
    assert "X-Access-Token" not in r.headers

    clock.advance(300 - 30)  # inside the last minute of a 300 s token
    r = await client.get("/auth/me", headers=cookie_header(cookies, "access_token"))
    assert r.status_code == 200
    renewed = set_cookies(r)
    assert set(renewed) == {"access_token"}
    new = renewed["access_token"]
    assert new.value != old and new["httponly"] and new["samesite"] == "Lax"
    assert new["path"] == "/"
    assert r.headers["X-Access-Token"] == new.value
    assert claims(new.value)["exp"] == int(clock()) + 300
    assert claims(new.value)["sid"] == claims(old)["sid"]

    # the old cookie is past its time now; the new one carries on
    clock.advance(60)
    r = await client.get("/auth/me", headers={"Cookie": f"access_token={old}"})
    assert (await r.get_json())["error"] == "token_expired"
    r = await client.get("/auth/me", headers={"Cookie": f"access_token={new.value}"})
    assert r.status_code == 200


async def test_concurrent_requests_near_expiry_get_the_same_reissued_cookie(cookie_app, clock):
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    clock.advance(290)
    headers = cookie_header(cookies, "access_token")
    responses = await asyncio.gather(*(client.get("/auth/me", headers=headers) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    assert len({set_cookies(r)["access_token"].value for r in responses}) == 1


async def test_a_header_token_nearing_expiry_is_not_reissued(cookie_app, clock):
    """Header clients refresh on their own; only a page's cookie is renewed for it."""
    client = cookie_app.test_client(use_cookies=False)
    r, _ = await cookie_login(client)
    clock.advance(290)
    r = await client.get("/auth/me", headers=bearer((await r.get_json())["access_token"]))
    assert r.status_code == 200
    assert "X-Access-Token" not in r.headers
    assert set_cookies(r) == {}


async def test_a_failed_request_does_not_reissue(cookie_app, clock):
    client = cookie_app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    clock.advance(290)
    r = await client.delete(
        "/auth/sessions/no-such-session",
        headers=browser_headers(cookies, cookies["csrf_token"].value),
    )
    assert r.status_code == 404
    assert set_cookies(r) == {}


# -- the account page -------------------------------------------------------


async def test_the_account_page_and_its_files(cookie_app):
    client = cookie_app.test_client(use_cookies=False)
    r = await client.get("/account")
    assert r.status_code == 200
    assert r.mimetype == "text/html"
    html = await r.get_data(as_text=True)
    assert 'data-auth-prefix="/auth"' in html and 'data-page="/account"' in html
    assert '<script src="/account/static/account.js" defer></script>' in html
    assert "<script>" not in html and "style=" not in html, "no inline code: the CSP forbids it"
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Cache-Control"] == "no-store"
    assert set_cookies(r) == {}

    files = (
        ("account.js", "text/javascript"), ("account.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    )  # fmt: skip
    for name, mimetype in files:
        r = await client.get(f"/account/static/{name}")
        assert r.status_code == 200, name
        assert r.mimetype == mimetype
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/account/static/../api/account.py", "/account/static/nothing.js"):
        assert (await client.get(path)).status_code == 404


async def test_the_account_page_is_not_in_the_api_document(cookie_app):
    document = await (await cookie_app.test_client().get("/openapi.json")).get_json()
    assert not [path for path in document["paths"] if path.startswith("/account")]


async def test_the_account_page_runs_on_its_own_cookies_on_a_headers_only_api(make_app):
    """The default install: the page works, and the API still reads no cookie."""
    app = await make_app()
    client = app.test_client(use_cookies=False)
    page = await client.get("/account")
    assert page.status_code == 200
    assert 'data-registration="on"' in await page.get_data(as_text=True)
    await client.post("/auth/register", json=CREDENTIALS)

    r = await client.post("/account/login", data=json.dumps(CREDENTIALS))  # no JSON type
    assert r.status_code == 400 and set_cookies(r) == {}
    r = await client.post("/account/login", json=CREDENTIALS)
    assert r.status_code == 200
    body = await r.get_json()
    assert set(body) == {"username", "session_id"}  # no token in the body
    cookies = set_cookies(r)
    assert set(cookies) == {"account_access", "account_refresh", "account_csrf", "account_device"}
    assert cookies["account_access"]["path"] == cookies["account_csrf"]["path"] == "/account"
    assert cookies["account_refresh"]["path"] == "/account/refresh"
    assert cookies["account_device"]["path"] == "/account/login"  # sent to the login alone
    assert cookies["account_device"]["httponly"]
    assert cookies["account_access"]["httponly"] and not cookies["account_csrf"]["httponly"]
    page_cookies = cookie_header(cookies, "account_access", "account_csrf")
    csrf = cookies["account_csrf"].value

    r = await client.get("/account/me", headers=page_cookies)
    assert r.status_code == 200 and (await r.get_json())["session_id"] == body["session_id"]
    # The API is headers-only: neither cookie name authenticates there.
    token = cookies["account_access"].value
    for name in ("account_access", "access_token"):
        r = await client.get("/auth/me", headers={"Cookie": f"{name}={token}"})
        assert r.status_code == 401 and (await r.get_json())["error"] == "missing_token"

    r = await client.post("/account/logout", headers=page_cookies)
    assert r.status_code == 403 and (await r.get_json())["error"] == "csrf_failed"
    r = await client.post("/account/logout", headers={**page_cookies, "X-CSRF-Token": "x" + csrf})
    assert r.status_code == 403
    r = await client.post("/account/logout", headers={**page_cookies, "X-CSRF-Token": csrf})
    assert r.status_code == 204
    cleared = set_cookies(r)
    assert {name: m.value for name, m in cleared.items()} == {
        "account_access": "", "account_refresh": "", "account_csrf": "",
    }  # fmt: skip
    r = await client.get("/account/me", headers=page_cookies)
    assert r.status_code == 401 and (await r.get_json())["error"] == "token_revoked"
    assert set(set_cookies(r)) == {"account_access", "account_refresh", "account_csrf"}


async def test_the_page_refresh_rotates_its_cookies_with_the_csrf_header(make_app, clock):
    app = await make_app(clock=clock, access_ttl=60)
    client = app.test_client(use_cookies=False)
    await client.post("/auth/register", json=CREDENTIALS)
    cookies = set_cookies(await client.post("/account/login", json=CREDENTIALS))
    refresh = cookie_header(cookies, "account_refresh", "account_csrf")
    clock.advance(61)
    r = await client.get("/account/me", headers=cookie_header(cookies, "account_access"))
    assert (await r.get_json())["error"] == "token_expired"
    assert (await client.post("/account/refresh", headers=refresh)).status_code == 403
    r = await client.post(
        "/account/refresh", headers={**refresh, "X-CSRF-Token": cookies["account_csrf"].value}
    )
    assert r.status_code == 204
    fresh = set_cookies(r)
    assert fresh["account_access"].value != cookies["account_access"].value
    r = await client.get("/account/me", headers=cookie_header(fresh, "account_access"))
    assert r.status_code == 200


async def test_without_registration_the_page_says_so(make_app):
    app = await make_app(allow_registration=False)
    page = await app.test_client().get("/account")
    assert 'data-registration="off"' in await page.get_data(as_text=True)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_cookie_mode_login_needs_a_json_content_type(cookie_app, content_type):
    """A cross-site form can send a JSON-shaped body, never this type (login CSRF)."""
    client = cookie_app.test_client(use_cookies=False)
    await client.post("/auth/register", json=CREDENTIALS)
    body = '{"username": "alice", "password": "correct horse", "device": "="}\r\n'
    headers = {"Content-Type": content_type} if content_type else {}
    r = await client.post("/auth/login", data=body, headers=headers)
    assert r.status_code == 400
    assert (await r.get_json())["error"] == "invalid_request"
    assert set_cookies(r) == {}
    r = await client.post(
        "/auth/login", data=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 200
    assert set(set_cookies(r)) == COOKIE_NAMES


async def test_headers_mode_login_takes_any_content_type(make_app):
    """No cookies, nothing for a forged login to plant: API clients keep their latitude."""
    app = await make_app()
    client = app.test_client(use_cookies=False)
    await client.post("/auth/register", json=CREDENTIALS)
    r = await client.post(
        "/auth/login", data=json.dumps(CREDENTIALS), headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 200
