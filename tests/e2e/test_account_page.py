"""The account page in a real browser: Debian's headless Chromium, driven by Playwright.

The page runs on its own cookie routes under /account/ whatever
TOKENGATE_TOKEN_LOCATION says, so most tests here run the default install
(headers only for the API).

Chromium must be at ``/usr/bin/chromium`` (``.ci/browser`` installs it); a
machine without it fails these tests rather than skipping them. Playwright
never downloads a browser here.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from quart import Quart

from quart_tokengate.client.pytest_plugin import TokengateClock
from quart_tokengate.service import Settings, create_app
from tests.e2e.session_helpers import PASSWORD, login, register
from tests.support import ROOT, SECRET, claims, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/browser does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Any]:
    """New, isolated browser contexts (each its own cookie jar), closed after the test."""
    opened: list[BrowserContext] = []

    def new(**options: Any) -> BrowserContext:
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        opened.append(context)
        return context

    yield new
    for context in opened:
        context.close()


class AccountPage:
    """One tab on ``/account`` that records its traffic and its script errors."""

    def __init__(self, context: BrowserContext, base_url: str) -> None:
        self.context = context
        self.base_url = base_url
        self.page: Page = context.new_page()
        self.traffic: list[tuple[str, str, int]] = []
        self.errors: list[str] = []
        self.console: list[str] = []
        self.page.on("response", self._record)
        # Requests the browser reports as failed or cancelled (net::ERR_ABORTED...).
        self.failed: list[str] = []
        self.page.on(
            "requestfailed",
            lambda request: self.failed.append(f"{request.url} {request.failure}"),
        )
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", self._console)

    def _record(self, response: Any) -> None:
        self.traffic.append((response.request.method, urlsplit(response.url).path, response.status))

    def _console(self, message: Any) -> None:
        self.console.append(f"{message.type}: {message.text}")
        # Chromium logs every 4xx fetch; those are the page's business, not errors.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def open(self) -> None:
        self.page.goto(self.base_url + "/account")

    def login(self, username: str = "alice", password: str = PASSWORD) -> None:
        expect(self.page.locator("#login-form")).to_be_visible()
        self.page.fill("#username", username)
        self.page.fill("#password", password)
        self.page.click("#login-form button[type=submit]")
        expect(self.page.locator("#account")).to_be_visible()
        expect(self.page.locator("#whoami")).to_have_text(username)

    def cookies(self) -> dict[str, Any]:
        return {c["name"]: c for c in self.context.cookies(self.base_url + "/account/refresh")}

    def session_id(self) -> str:
        return str(claims(self.cookies()["account_access"]["value"])["sid"])

    def loads(self) -> int:
        return int(self.page.locator("body").get_attribute("data-loads") or 0)

    def reload_list(self) -> None:
        """Press Refresh and wait until the page has shown the new list."""
        before = self.loads()
        self.page.click("#reload")
        self.wait_for_load(before)

    def wait_for_load(self, before: int) -> None:
        expect(self.page.locator("body")).to_have_attribute("data-loads", str(before + 1))

    def rows(self) -> Any:
        return self.page.locator("#sessions tbody tr")

    def expire_access(self, clock: TokengateClock) -> None:
        """Move the service's clock to the access token's expiry (the test kit's server)."""
        exp = claims(self.cookies()["account_access"]["value"])["exp"]
        clock.advance(max(0.0, exp - clock()))


@pytest.fixture
def tokengate_app() -> Quart:
    """For the test kit's server: the default install, tokens in headers only for the API."""
    return create_app(Settings(secret_key=SECRET))


def test_the_page_refreshes_by_itself_when_the_access_token_expires(
    tokengate_server, tokengate_clock, contexts
):
    service = tokengate_server
    with httpx.Client(base_url=service.base_url) as api:
        register(api, "alice")
        cli = login(api, "alice", device="cli")
    tab = AccountPage(contexts(), service.base_url)
    tab.open()
    tab.login()

    expect(tab.rows()).to_have_count(2)
    current = tab.page.locator("#sessions tbody tr.is-current")
    expect(current).to_contain_text("Chrome on Linux")
    expect(current).to_contain_text("this device")
    expect(tab.page.locator(f'tr[data-session-id="{cli["session_id"]}"]')).to_contain_text("cli")

    # The cookies as the browser holds them: the tokens out of the script's
    # reach, and every one scoped to the page's own routes.
    jar = tab.cookies()
    assert set(jar) == {"account_access", "account_refresh", "account_csrf"}
    assert jar["account_access"]["httpOnly"] and jar["account_refresh"]["httpOnly"]
    # The browser's device token goes to the page's login alone, out of the script's reach.
    (device,) = [
        c
        for c in tab.context.cookies(service.base_url + "/account/login")
        if c["name"] == "account_device"
    ]
    assert device["httpOnly"] and device["path"] == "/account/login"
    assert not jar["account_csrf"]["httpOnly"]
    assert {c["sameSite"] for c in jar.values()} == {"Lax"}
    assert jar["account_refresh"]["path"] == "/account/refresh"
    assert jar["account_access"]["path"] == jar["account_csrf"]["path"] == "/account"
    assert tab.context.cookies(service.base_url + "/auth/me") == []
    visible = tab.page.evaluate("document.cookie")
    assert "account_csrf=" in visible and "account_access" not in visible

    # The API stays headers-only: the page's token in a cookie opens nothing there.
    page_token = jar["account_access"]["value"]
    for name in ("account_access", "access_token"):
        r = httpx.get(service.base_url + "/auth/me", cookies={name: page_token})
        assert r.status_code == 401 and r.json()["error"] == "missing_token"
    # In a header it is an access token like any other.
    r = httpx.get(service.base_url + "/auth/me", headers={"Authorization": f"Bearer {page_token}"})
    assert r.status_code == 200

    # Past the access token's expiry, two concurrent calls meet 401 token_expired:
    # one refresh between them, then each is retried once.
    tab.expire_access(tokengate_clock)
    old_access, old_csrf = jar["account_access"]["value"], jar["account_csrf"]["value"]
    tab.traffic.clear()
    with tab.page.expect_request(lambda r: r.url.endswith("/account/refresh")) as refresh:
        tab.reload_list()
    expect(tab.rows()).to_have_count(2)
    assert refresh.value.method == "POST"
    assert refresh.value.headers["x-csrf-token"] == old_csrf
    assert [t for t in tab.traffic if t[0] == "POST"] == [("POST", "/account/refresh", 204)]
    for path in ("/account/me", "/account/sessions"):
        assert [s for m, p, s in tab.traffic if p == path] == [401, 200], tab.traffic
    assert tab.cookies()["account_access"]["value"] != old_access
    assert tab.cookies()["account_csrf"]["value"] != old_csrf

    # Expired again; now an unsafe call: refresh, then the DELETE is retried
    # with the rotated CSRF token and ends the other session.
    tab.expire_access(tokengate_clock)
    tab.traffic.clear()
    before = tab.loads()
    tab.page.click(f'tr[data-session-id="{cli["session_id"]}"] button.end-session')
    tab.wait_for_load(before)
    expect(tab.rows()).to_have_count(1)
    expect(tab.page.locator("#message")).to_have_text("The session was ended.")
    delete_path = f"/account/sessions/{cli['session_id']}"
    assert [s for m, p, s in tab.traffic if m == "DELETE"] == [401, 204], tab.traffic
    assert ("DELETE", delete_path, 204) in tab.traffic
    assert tab.traffic.count(("POST", "/account/refresh", 204)) == 1
    r = httpx.post(service.base_url + "/auth/refresh", json={"refresh_token": cli["refresh_token"]})
    assert r.json()["error"] == "token_revoked"
    assert tab.errors == []


def test_messages_clear_when_the_next_action_starts_and_the_address_forgets_the_form(
    tokengate_server, contexts
):
    tab = AccountPage(contexts(), tokengate_server.base_url)
    tab.open()
    tab.page.click("#to-register")
    expect(tab.page).to_have_url(tokengate_server.base_url + "/account#register")
    tab.page.fill("#new-username", "carol")
    tab.page.fill("#new-password", PASSWORD)
    tab.page.click("#register-form button[type=submit]")
    expect(tab.page.locator("#whoami")).to_have_text("carol")
    expect(tab.page.locator("#message")).to_have_text("Your account was created.")
    # Registered and logged in: the address no longer says #register...
    expect(tab.page).to_have_url(tokengate_server.base_url + "/account")
    # ...so a reload shows the account, not the registration form.
    tab.page.reload()
    expect(tab.page.locator("#account")).to_be_visible()
    expect(tab.page.locator("#register")).to_be_hidden()

    # A message from one action goes as the next begins, before its answer comes.
    tab.page.click("#change-password summary")
    tab.page.fill("#current-password", "not the password")
    tab.page.fill("#next-password", "a brand new password")
    tab.page.click("#password-form button[type=submit]")
    expect(tab.page.locator("#message")).not_to_have_text("")
    held: list[Any] = []  # the reload's request, kept from the server until released
    tab.page.route("**/account/sessions", lambda route: held.append(route))
    before = tab.loads()
    with tab.page.expect_request(lambda r: r.url.endswith("/account/sessions")):
        tab.page.click("#reload")
    expect(tab.page.locator("#message")).to_have_text("")
    assert len(held) == 1 and tab.loads() == before  # still waiting for its answer
    held[0].continue_()
    tab.page.unroute("**/account/sessions")
    tab.wait_for_load(before)
    assert tab.errors == []


def test_a_login_leaves_no_cancelled_request(tokengate_server, contexts):
    with httpx.Client(base_url=tokengate_server.base_url) as api:
        register(api, "alice")
    tab = AccountPage(contexts(), tokengate_server.base_url)
    tab.open()
    with tab.page.expect_event("requestfinished", lambda r: r.url.endswith("/account/login")):
        tab.login()
    tab.page.click("#reload")
    tab.page.click("#logout")
    expect(tab.page.locator("#login-form")).to_be_visible()
    with tab.page.expect_event("requestfinished", lambda r: r.url.endswith("/account/login")):
        tab.login()
    assert tab.failed == []
    assert [(m, p, s) for m, p, s in tab.traffic if p == "/account/login"] == [
        ("POST", "/account/login", 200),
        ("POST", "/account/login", 200),
    ]
    assert tab.errors == []


def test_a_load_answered_after_a_logout_leaves_the_login_form(tokengate_server, contexts):
    """A Refresh sent before Log out and answered after it shows no account again."""
    with httpx.Client(base_url=tokengate_server.base_url) as api:
        register(api, "alice")
    tab = AccountPage(contexts(), tokengate_server.base_url)
    tab.open()
    tab.login()
    held: list[Any] = []  # the Refresh's request, kept from the server until released
    tab.page.route("**/account/sessions", lambda route: held.append(route))
    before = tab.loads()
    with tab.page.expect_request(lambda r: r.url.endswith("/account/sessions")):
        tab.page.click("#reload")
    tab.page.click("#logout")
    expect(tab.page.locator("#login-form")).to_be_visible()
    expect(tab.page.locator("#message")).to_have_text("You have logged out.")
    assert len(held) == 1
    # Sent before the log-out, answered after it (200 or 401, as the cookies go): dropped.
    held[0].continue_()
    tab.page.unroute("**/account/sessions")
    expect(tab.page.locator("body")).to_have_attribute("data-stale-loads", "1")
    expect(tab.page.locator("#login-form")).to_be_visible()
    expect(tab.page.locator("#account")).to_be_hidden()
    expect(tab.page.locator("#message")).to_have_text("You have logged out.")
    assert tab.loads() == before
    assert tab.errors == []


def test_a_session_ended_elsewhere_lands_on_the_login_form(service_factory, contexts):
    service = service_factory(token_location="cookies")
    with httpx.Client(base_url=service.base_url) as api:
        register(api, "alice")
    first = AccountPage(contexts(), service.base_url)
    second = AccountPage(contexts(), service.base_url)
    first.open()
    first.login()
    second.open()
    second.login()
    expect(second.rows()).to_have_count(2)

    # From the second browser, end the first one's session.
    victim = first.session_id()
    assert victim != second.session_id()
    second.page.click(f'tr[data-session-id="{victim}"] button.end-session')
    expect(second.rows()).to_have_count(1)

    # The first browser's next call is refused, its cookies are cleared, and
    # the page falls back to the login form saying why.
    with first.page.expect_response(lambda r: r.url.endswith("/account/me")) as answer:
        first.page.click("#reload")
    assert answer.value.status == 401
    assert answer.value.json()["error"] == "token_revoked"
    expect(first.page.locator("#login-form")).to_be_visible()
    expect(first.page.locator("#account")).to_be_hidden()
    expect(first.page.locator("#message")).to_contain_text("This session was ended")
    assert first.cookies() == {}

    # It can log in again; the second logs out and its cookies go too.
    first.login()
    expect(first.rows()).to_have_count(2)
    second.page.click("#logout")
    expect(second.page.locator("#login-form")).to_be_visible()
    expect(second.page.locator("#message")).to_have_text("You have logged out.")
    assert second.cookies() == {}
    first.page.click("#reload")
    expect(first.rows()).to_have_count(1)

    # "End all sessions" asks first; Cancel changes nothing.
    first.page.click("#logout-all")
    expect(first.page.locator("#confirm-all")).to_be_visible()
    first.page.click("#confirm-all-no")
    expect(first.page.locator("#confirm-all")).to_be_hidden()
    first.reload_list()
    expect(first.rows()).to_have_count(1)
    assert not any(p.endswith("/logout-all") for _, p, _ in first.traffic)
    # Confirmed, it ends this one too.
    first.page.click("#logout-all")
    first.page.click("#confirm-all-yes")
    expect(first.page.locator("#login-form")).to_be_visible()
    assert first.cookies() == {}
    assert first.errors == [] and second.errors == []


def test_register_and_reset_a_forgotten_password_on_the_page(service_factory, contexts):
    service = service_factory()
    tab = AccountPage(contexts(), service.base_url)
    tab.open()
    expect(tab.page.locator("#login-form")).to_be_visible()
    # A fresh visitor: no call to the server, so no 401 in the console either.
    assert [p for _, p, _ in tab.traffic if p.startswith(("/account/me", "/auth/"))] == []

    tab.page.click("#to-register")
    tab.page.fill("#new-username", "carol")
    tab.page.fill("#new-password", PASSWORD)
    tab.page.click("#register-form button[type=submit]")
    expect(tab.page.locator("#account")).to_be_visible()
    expect(tab.page.locator("#whoami")).to_have_text("carol")
    expect(tab.page.locator("#message")).to_have_text("Your account was created.")
    # Taken already, from another browser:
    other = AccountPage(contexts(), service.base_url)
    other.open()
    other.page.click("#to-register")
    other.page.fill("#new-username", "carol")
    other.page.fill("#new-password", PASSWORD)
    other.page.click("#register-form button[type=submit]")
    expect(other.page.locator("#message")).to_have_text("That username is taken; choose another.")

    # Forgot the password: ask for a code, then use it.
    other.page.click("#register .to-login")
    other.page.click("#to-forgot")
    other.page.fill("#forgot-username", "carol")
    other.page.click("#forgot-form button[type=submit]")
    expect(other.page.locator("#message")).to_contain_text("a reset code is on its way")
    outbox = service.workdir / "instance" / "outbox"
    # The message is written in the background, after the answer.
    wait_for(lambda: list(outbox.glob("*.json")), what="the reset message")
    (message,) = [json.loads(p.read_text()) for p in outbox.glob("*.json")]
    other.page.fill("#reset-token", "not-a-code")
    other.page.fill("#reset-password", "a brand new password")
    other.page.click("#reset-form button[type=submit]")
    expect(other.page.locator("#message")).to_contain_text("wrong, used or expired")
    # The link a real message would carry: the code in the fragment.
    other.page.goto(f"{service.base_url}/account#reset={message['token']}")
    expect(other.page.locator("#reset-token")).to_have_value(message["token"])
    other.page.fill("#reset-password", "a brand new password")
    other.page.click("#reset-form button[type=submit]")
    expect(other.page.locator("#message")).to_contain_text("Your password was changed")
    other.login("carol", "a brand new password")

    # The reset ended the first browser's session.
    tab.page.click("#reload")
    expect(tab.page.locator("#login-form")).to_be_visible()
    assert tab.errors == [] and other.errors == []


def test_without_registration_the_page_offers_none(service_factory, contexts):
    service = service_factory(allow_registration="false")
    tab = AccountPage(contexts(), service.base_url)
    tab.open()
    expect(tab.page.locator("#login-form")).to_be_visible()
    expect(tab.page.locator("#to-register")).to_have_count(0)
    expect(tab.page.locator("#to-forgot")).to_be_visible()
    tab.page.goto(service.base_url + "/account#register")
    expect(tab.page.locator("#register")).to_be_hidden()


def test_an_action_that_needs_a_fresh_login_asks_for_the_password(service_factory, contexts):
    service = service_factory()
    with httpx.Client(base_url=service.base_url) as api:
        register(api, "alice")
    tab = AccountPage(contexts(), service.base_url)
    tab.open()
    tab.login()
    old_session = tab.session_id()
    answered: list[str] = []

    def stale_once(route: Any) -> None:
        # The service answers this for a route marked login_required(fresh=True)
        # when the password login is older than TOKENGATE_FRESH_TTL.
        if not answered:
            answered.append("fresh_login_required")
            body = {"error": "fresh_login_required", "error_description": "Log in again."}
            route.fulfill(status=401, content_type="application/json", body=json.dumps(body))
        else:
            route.continue_()

    tab.page.route("**/account/logout-all", stale_once)
    tab.page.click("#logout-all")
    tab.page.click("#confirm-all-yes")
    expect(tab.page.locator("#reauth")).to_be_visible()
    expect(tab.page.locator("#account")).to_be_hidden()
    tab.page.fill("#reauth-password", "wrong password")
    tab.page.click("#reauth-form button[type=submit]")
    expect(tab.page.locator("#message")).to_have_text("Wrong username or password.")
    tab.traffic.clear()
    tab.page.fill("#reauth-password", PASSWORD)
    tab.page.click("#reauth-form button[type=submit]")
    # A new login, the session it replaces ended, then the action itself.
    expect(tab.page.locator("#login-form")).to_be_visible()
    expect(tab.page.locator("#message")).to_have_text("Every session was ended, this one too.")
    posts = [(m, p, s) for m, p, s in tab.traffic if m != "GET"]
    assert posts == [
        ("POST", "/account/login", 200),
        ("DELETE", f"/account/sessions/{old_session}", 204),
        ("POST", "/account/logout-all", 204),
    ], tab.traffic
    assert tab.errors == []


def test_home_page_phone_width_favicon_no_console_errors_and_screenshot(
    service_factory, contexts, tmp_path
):
    service = service_factory()
    with httpx.Client(base_url=service.base_url) as api:
        register(api, "alice")
        login(api, "alice", device="tokengate-client on a laptop")
    home = AccountPage(contexts(), service.base_url)
    home.page.goto(service.base_url + "/")
    expect(home.page.locator("h1")).to_contain_text("tokengate")
    home.page.click("text=Your account")
    expect(home.page).to_have_url(service.base_url + "/account")
    expect(home.page.locator("#login-form")).to_be_visible()

    # Desktop: the screenshot for the docs.
    desk = AccountPage(contexts(), service.base_url)
    desk.page.set_viewport_size({"width": 960, "height": 560})
    desk.open()
    desk.login()
    expect(desk.rows()).to_have_count(2)
    icon = desk.page.evaluate(
        "fetch(document.querySelector('link[rel=icon]').href)"
        ".then(r => [r.status, r.headers.get('content-type')])"
    )
    assert icon[0] == 200 and icon[1].startswith("image/svg+xml"), icon
    assert not any(s == 404 for _, _, s in desk.traffic), desk.traffic
    shot = desk.page.screenshot(full_page=True)
    assert shot.startswith(b"\x89PNG")
    (tmp_path / "account-page.png").write_bytes(shot)
    target = os.environ.get("TOKENGATE_TEST_SCREENSHOTS")
    if target:  # `TOKENGATE_TEST_SCREENSHOTS=docs make test` refreshes the docs' picture
        (ROOT / target / "account-page.png").write_bytes(shot)

    # A phone: nothing wider than the screen, "Log out" on one line.
    phone = contexts(viewport={"width": 375, "height": 740}, device_scale_factor=2)
    tab = AccountPage(phone, service.base_url)
    tab.open()
    tab.login()
    expect(tab.rows()).to_have_count(3)
    tab.page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    width = tab.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375
    for selector in ("#logout", "button.logout-here", "#logout-all"):
        box = tab.page.locator(selector).bounding_box()
        line = tab.page.locator(selector).evaluate(
            "e => parseFloat(getComputedStyle(e).lineHeight)"
        )
        assert box is not None and box["height"] < 2 * line, selector
    for page in (home, desk, tab):
        assert page.errors == []
        assert [m for m in page.console if m.startswith(("error", "warning"))] == []


class _EvilSite(BaseHTTPRequestHandler):
    """Serves pages that post a form to the service as soon as they load."""

    pages: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        body = self.pages[self.path].encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def auto_post(action: str, fields: str, enctype: str = "application/x-www-form-urlencoded") -> str:
    return (
        "<!doctype html><title>win a prize</title>"
        f'<form id="f" method="POST" enctype="{enctype}" action="{action}">{fields}</form>'
        "<script>document.getElementById('f').submit()</script>"
    )


@pytest.fixture
def evil_site() -> Iterator[Any]:
    """Another loopback origin: ``start({path: html})`` serves those pages, returns the port."""
    servers: list[ThreadingHTTPServer] = []

    def start(pages: dict[str, str]) -> int:
        handler = type("Evil", (_EvilSite,), {"pages": pages})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_cross_site_form_post_is_refused(service_factory, contexts, evil_site):
    service = service_factory()
    with httpx.Client(base_url=service.base_url) as api:
        register(api, "alice")
        register(api, "mallory")
    tab = AccountPage(contexts(), service.base_url)
    tab.open()
    tab.login()
    session = tab.session_id()
    # A text/plain form can carry a body that parses as JSON: the login CSRF trick.
    json_field = (
        """<input type="hidden" name='{"username": "mallory", "password": "correct horse", """
        """"device": "' value='"}'>"""
    )
    port = evil_site(
        {
            "/logout-all": auto_post(service.base_url + "/account/logout-all", ""),
            "/login": auto_post(service.base_url + "/account/login", json_field, "text/plain"),
        }
    )

    # Another origin on the same site (127.0.0.1, another port): SameSite=Lax
    # lets the cookies ride along, and the missing X-CSRF-Token stops it.
    with tab.page.expect_response(lambda r: r.url.endswith("/account/logout-all")) as answer:
        tab.page.goto(f"http://127.0.0.1:{port}/logout-all")
    response = answer.value
    assert response.request.method == "POST"
    assert "account_access=" in (response.request.header_value("cookie") or "")
    assert response.status == 403
    assert response.json()["error"] == "csrf_failed"

    # Another site altogether (localhost is not 127.0.0.1 to a browser):
    # SameSite=Lax keeps the cookies home, so there is nothing to act on.
    with tab.page.expect_response(lambda r: r.url.endswith("/account/logout-all")) as answer:
        tab.page.goto(f"http://localhost:{port}/logout-all")
    response = answer.value
    assert response.request.header_value("cookie") is None
    assert response.status == 401
    assert response.json()["error"] == "missing_token"

    # Nor can a form swap the browser's session for one of the attacker's.
    for host in ("127.0.0.1", "localhost"):
        with tab.page.expect_response(lambda r: r.url.endswith("/account/login")) as answer:
            tab.page.goto(f"http://{host}:{port}/login")
        assert answer.value.request.post_data_json["username"] == "mallory"
        assert answer.value.status == 400
        assert answer.value.json()["error"] == "invalid_request"

    # The session survived all of it.
    tab.open()
    expect(tab.page.locator("#account")).to_be_visible()
    expect(tab.page.locator("#whoami")).to_have_text("alice")
    expect(tab.rows()).to_have_count(1)
    assert tab.session_id() == session
    assert tab.errors == []


# -- API keys on the page ----------------------------------------------------------
def me_with(base_url: str, key: str) -> int | str:
    r = httpx.get(base_url + "/auth/me", headers={"Authorization": f"Bearer {key}"})
    return r.status_code if r.status_code == 200 else str(r.json()["error"])


def test_make_use_and_revoke_a_key_and_see_a_leaked_one(service_factory, contexts):
    service = service_factory()
    with httpx.Client(base_url=service.base_url) as api:
        register(api, "alice")
    tab = AccountPage(contexts(), service.base_url)
    tab.open()
    tab.login()
    expect(tab.page.locator("#api-keys-section")).to_be_visible()
    for name in ("deploy", "leaky"):
        tab.page.click("#make-api-key summary")
        expect(tab.page.locator("#api-key-no-scopes")).to_be_visible()
        tab.page.fill("#api-key-name", name)
        tab.page.select_option("#api-key-lifetime", "2592000")
        tab.page.click("#api-key-form button[type=submit]")
        expect(tab.page.locator("#new-key")).to_be_visible()
        key = tab.page.locator("#new-key-value").inner_text()
        assert key.startswith("tgk_") and len(key) == 42
        tab.page.click("#new-key-done")
        expect(tab.page.locator("#new-key")).to_be_hidden()
        assert me_with(service.base_url, key) == 200
        if name == "deploy":
            deploy = key
        else:
            leaky = key
    rows = tab.page.locator("#api-keys tbody tr")
    expect(rows).to_have_count(2)
    # A scanner reports one; the owner sees why it was revoked.
    r = httpx.post(service.base_url + "/auth/api-keys/leaked", json={"keys": [leaky]})
    assert r.json() == {"revoked": 1}
    leaked_row = tab.page.locator("#api-keys tbody tr", has_text="leaky")
    for _ in range(50):  # revoked off the answer's path: the list says so once it is
        tab.reload_list()
        if leaked_row.locator(".key-state").inner_text() == "revoked: reported leaked":
            break
    expect(leaked_row.locator(".key-state")).to_have_text("revoked: reported leaked")
    assert me_with(service.base_url, leaky) == "token_revoked"
    # Revoking from the page.
    deploy_row = tab.page.locator("#api-keys tbody tr", has_text="deploy")
    expect(deploy_row.locator("td[data-label='Last used']")).not_to_have_text("never")
    deploy_row.locator(".revoke-key").click()
    expect(deploy_row.locator(".key-state")).to_have_text("revoked")
    assert me_with(service.base_url, deploy) == "token_revoked"
    assert tab.errors == []


def test_making_a_key_after_the_fresh_window_asks_for_the_password(
    tokengate_server, tokengate_clock, contexts
):
    service = tokengate_server
    with httpx.Client(base_url=service.base_url) as api:
        register(api, "alice")
    tab = AccountPage(contexts(), service.base_url)
    tab.open()
    tab.login()
    old_session = tab.session_id()
    tokengate_clock.advance(901)  # past TOKENGATE_FRESH_TTL (the access token too)
    tab.traffic.clear()
    tab.page.click("#make-api-key summary")
    tab.page.fill("#api-key-name", "late")
    tab.page.click("#api-key-form button[type=submit]")
    expect(tab.page.locator("#reauth")).to_be_visible()
    tab.page.fill("#reauth-password", PASSWORD)
    tab.page.click("#reauth-form button[type=submit]")
    expect(tab.page.locator("#new-key")).to_be_visible()
    assert tab.page.locator("#new-key-value").inner_text().startswith("tgk_")
    posts = [(m, p, s) for m, p, s in tab.traffic if m != "GET"]
    assert ("POST", "/account/api-keys", 401) in posts
    assert posts[-3:] == [
        ("POST", "/account/login", 200),
        ("DELETE", f"/account/sessions/{old_session}", 204),
        ("POST", "/account/api-keys", 201),
    ], tab.traffic
    assert tab.errors == []
