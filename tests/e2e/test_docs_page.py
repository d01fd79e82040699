"""``/docs`` in a real browser: Swagger UI renders every operation, offline.

Debian's headless Chromium at ``/usr/bin/chromium`` (``.ci/browser`` installs
it), driven by Playwright; a machine without it fails rather than skips.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/browser does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_the_docs_page_renders_every_operation_with_no_other_host(service, browser):
    paths = httpx.get(service.base_url + "/openapi.json").json()["paths"]
    documented = [method for item in paths.values() for method in item]
    context = browser.new_context()
    context.set_default_timeout(15_000)
    page = context.new_page()
    hosts: list[str] = []
    errors: list[str] = []

    def record(request: Any) -> None:
        hosts.append(urlsplit(request.url).netloc)

    page.on("request", record)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(service.base_url + "/docs")
        operations = page.locator(".opblock")
        expect(operations.first).to_be_visible()
        expect(operations).to_have_count(len(documented))
        expect(page.locator(".opblock-summary-path", has_text="/auth/me")).to_be_visible()
        # The bearer scheme is offered by the Authorize button.
        expect(page.locator(".btn.authorize")).to_be_visible()
    finally:
        context.close()
    origin = urlsplit(service.base_url).netloc
    assert hosts and set(hosts) == {origin}, hosts
    assert errors == []
