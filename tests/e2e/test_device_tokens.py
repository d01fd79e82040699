"""Device tokens over real HTTP: the real client and the account page log in through an attack."""

from __future__ import annotations

import json

import httpx
import pytest

from quart_tokengate.client import AsyncAuthClient, AuthClient, FileTokenStore, RateLimited
from tests.e2e.session_helpers import PASSWORD, TIMEOUT, login_attempt, register

# Behind a trusted proxy (the test itself), each guess names its own address:
# ten IPv6 /64s, two guesses each, reach the account ceiling (ten times two).
ATTACKERS = [f"2001:db8:{n}::1" for n in range(10)]


def attack(http: httpx.Client, username: str) -> None:
    for ip in ATTACKERS:
        for _ in range(2):
            r = login_attempt(http, username, "wrong password", headers={"X-Forwarded-For": ip})
            assert r.status_code == 401, r.text


async def test_the_clients_and_the_pages_devices_log_in_through_an_attack(
    service_factory, tmp_path
):
    service = service_factory(login_max_failures=2, trusted_proxies="127.0.0.1")
    path = tmp_path / "tokens.json"
    with httpx.Client(base_url=service.base_url, timeout=TIMEOUT) as http:
        register(http, "alice")
        # The owner's script (a token file) and the owner's browser (the account page).
        with AuthClient(base_url=service.base_url, token_store=FileTokenStore(path)) as api:
            api.login("alice", PASSWORD)
            api.logout()
        assert json.loads(path.read_text())["device_tokens"]["alice"]
        browser = httpx.Client(base_url=service.base_url, timeout=TIMEOUT)
        body = {"username": "alice", "password": PASSWORD}
        assert browser.post("/account/login", json=body).status_code == 200
        assert any(c.name == "account_device" for c in browser.cookies.jar)

        attack(http, "alice")
        # Untrusted: the correct password from a new place, and a new client, are refused.
        r = login_attempt(http, "alice", headers={"X-Forwarded-For": "198.51.100.20"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        async with AsyncAuthClient(base_url=service.base_url) as stranger:
            with pytest.raises(RateLimited) as refused:
                await stranger.login("alice", PASSWORD)
            assert refused.value.retry_after > 0

        # Trusted: the owner's script (another process would read the same file) and browser.
        async with AsyncAuthClient(
            base_url=service.base_url, token_store=FileTokenStore(path)
        ) as api:
            await api.login("alice", PASSWORD)
            assert (await api.get("/auth/me")).json()["username"] == "alice"
        assert browser.post("/account/login", json=body).status_code == 200
        browser.close()
