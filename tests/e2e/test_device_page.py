"""The device confirmation page in a real browser (Debian's Chromium, driven by Playwright).

A device asks the real service for a code over HTTP; a person opens the
``verification_uri_complete`` it was given, logs in, sees what asked, and
approves or denies; the device's next poll gets the session or
``access_denied``. Screenshots at desktop and phone width.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.e2e.session_helpers import PASSWORD, register
from tests.e2e.test_account_page import AccountPage, browser, contexts, tokengate_app
from tests.support import ROOT

GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_AGENT = "backup-script/2.1 (raspberry pi)"
__all__ = ["browser", "contexts", "tokengate_app"]  # fixtures, used by name


def start_device(base_url: str, **form: str) -> dict[str, Any]:
    r = httpx.post(
        base_url + "/oauth/device_authorization", data=form, headers={"User-Agent": DEVICE_AGENT}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def poll(base_url: str, device_code: str) -> httpx.Response:
    return httpx.post(
        base_url + "/oauth/token", data={"grant_type": GRANT, "device_code": device_code}
    )


def confirm_page(tab: AccountPage, started: dict[str, Any], username: str) -> None:
    """Open the complete address, log in, wait for the request to show."""
    tab.page.goto(started["verification_uri_complete"])
    expect(tab.page.locator("#login-form")).to_be_visible()
    tab.page.fill("#username", username)
    tab.page.fill("#password", PASSWORD)
    tab.page.click("#login-form button[type=submit]")
    expect(tab.page.locator("#confirm")).to_be_visible()


def test_a_person_approves_a_device_and_the_device_gets_its_session(
    service_factory, contexts, tmp_path
):
    service = service_factory()
    with httpx.Client(base_url=service.base_url) as api:
        register(api, "alice")
    started = start_device(service.base_url, device="pi-in-the-attic", scope="")
    assert poll(service.base_url, started["device_code"]).json()["error"] == (
        "authorization_pending"
    )

    tab = AccountPage(contexts(viewport={"width": 960, "height": 640}), service.base_url)
    confirm_page(tab, started, "alice")
    page = tab.page
    expect(page.locator("#req-code")).to_have_text(started["user_code"])
    expect(page.locator("#req-device")).to_have_text("pi-in-the-attic")
    expect(page.locator("#req-ip")).to_have_text("127.0.0.1")
    expect(page.locator("#req-agent")).to_have_text(DEVICE_AGENT)
    expect(page.locator("#req-when")).not_to_be_empty()
    expect(page.locator("#confirm-who")).to_have_text("alice")
    shot = page.screenshot(full_page=True)
    (tmp_path / "device-page.png").write_bytes(shot)
    target = os.environ.get("TOKENGATE_TEST_SCREENSHOTS")
    if target:  # `TOKENGATE_TEST_SCREENSHOTS=docs make test` refreshes the docs' picture
        (ROOT / target / "device-page.png").write_bytes(shot)

    page.click("#approve")
    expect(page.locator("#done")).to_be_visible()
    expect(page.locator("#done")).to_contain_text("You can close this page")
    expect(page.locator("#done-title")).to_have_text("Device approved")
    assert page.locator("body").get_attribute("data-outcome") == "approved"
    page.screenshot(path=str(tmp_path / "device-page-done.png"), full_page=True)

    r = poll(service.base_url, started["device_code"])
    assert r.status_code == 200, r.text
    pair = r.json()
    me = httpx.get(
        service.base_url + "/auth/sessions",
        headers={"Authorization": f"Bearer {pair['access_token']}"},
    )
    devices = {s["device"] for s in me.json()["sessions"]}
    assert "pi-in-the-attic (device login)" in devices
    assert poll(service.base_url, started["device_code"]).json()["error"] == "invalid_grant"

    # The account page lists the device's session like any other.
    page.click("#done a")
    expect(page.locator("#sessions tbody")).to_contain_text("pi-in-the-attic (device login)")
    assert tab.errors == []
    assert [m for m in tab.console if m.startswith("warning")] == []


def test_deny_at_phone_width_and_a_wrong_code_first(service_factory, contexts, tmp_path):
    service = service_factory()
    with httpx.Client(base_url=service.base_url) as api:
        register(api, "bob")
    started = start_device(service.base_url, device="ci runner 7", scope="")
    phone = contexts(viewport={"width": 375, "height": 740}, device_scale_factor=2)
    tab = AccountPage(phone, service.base_url)
    # The plain address: the person types the code, first wrong, then right,
    # in lower case without the hyphen.
    tab.page.goto(started["verification_uri"])
    tab.page.fill("#username", "bob")
    tab.page.fill("#password", PASSWORD)
    tab.page.click("#login-form button[type=submit]")
    expect(tab.page.locator("#code-form")).to_be_visible()
    tab.page.fill("#user-code", "BBBB-BBBB")
    tab.page.click("#code-form button[type=submit]")
    expect(tab.page.locator("#message")).to_contain_text("No device is waiting for that code")
    tab.page.fill("#user-code", started["user_code"].replace("-", "").lower())
    tab.page.click("#code-form button[type=submit]")
    expect(tab.page.locator("#confirm")).to_be_visible()
    expect(tab.page.locator("#req-device")).to_have_text("ci runner 7")
    width = tab.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375
    tab.page.screenshot(path=str(tmp_path / "device-phone.png"), full_page=True)
    tab.page.click("#deny")
    expect(tab.page.locator("#done-title")).to_have_text("Device denied")
    expect(tab.page.locator("#done")).to_contain_text("You can close this page")
    r = poll(service.base_url, started["device_code"])
    assert r.status_code == 400 and r.json()["error"] == "access_denied"
    assert tab.errors == []


def test_a_stale_login_is_asked_for_the_password_before_approving(
    tokengate_server, tokengate_clock, contexts
):
    base = tokengate_server.base_url
    with httpx.Client(base_url=base) as api:
        register(api, "carol")
    tab = AccountPage(contexts(), base)
    tab.open()
    tab.login("carol")
    tokengate_clock.advance(901)  # past TOKENGATE_FRESH_TTL and the access token's life
    started = start_device(base, device="laptop in a drawer")
    tab.page.goto(started["verification_uri_complete"])
    expect(tab.page.locator("#reauth-form")).to_be_visible()
    expect(tab.page.locator("#reauth-who")).to_have_text("carol")
    tab.page.fill("#reauth-password", PASSWORD)
    tab.page.click("#reauth-form button[type=submit]")
    expect(tab.page.locator("#confirm")).to_be_visible()
    tab.page.click("#approve")
    expect(tab.page.locator("#done-title")).to_have_text("Device approved")
    assert poll(base, started["device_code"]).status_code == 200
    assert tab.errors == []
