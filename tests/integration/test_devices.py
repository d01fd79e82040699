"""Device tokens (OWASP's device cookies): an attack from elsewhere never locks out a device
the owner has used, through the API (``device_token``) and the account page (a cookie)."""

from __future__ import annotations

from typing import Any

from tests.conftest import login_attempt, register, register_and_login
from tests.support import set_cookies

# Ten IPv6 /64s, two guesses each: with TOKENGATE_LOGIN_MAX_FAILURES=2 that is
# the account ceiling (ten times the limit): untrusted clients are locked out.
ATTACKERS = [f"2001:db8:{n}::1" for n in range(10)]
OWNER_HOME, ELSEWHERE = "192.0.2.10", "192.0.2.99"


async def attack(client: Any, username: str = "alice") -> None:
    for ip in ATTACKERS:
        for _ in range(2):
            r = await login_attempt(client, username, "wrong password", ip=ip)
            assert r.status_code == 401


async def test_the_login_answer_carries_a_device_token(make_app):
    app = await make_app()
    client = app.test_client()
    pair = await register_and_login(client)
    assert isinstance(pair["device_token"], str) and pair["device_token"].count(".") == 2
    # The same device logging in again keeps its token (renewed), another gets its own.
    again = await register_and_login(client, device_token=pair["device_token"])
    other = await register_and_login(client)
    assert again["device_token"] and other["device_token"] != pair["device_token"]
    # A refresh is no login: no device token.
    r = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert "device_token" not in await r.get_json()


async def test_an_attack_from_many_addresses_does_not_lock_out_the_owners_device(make_app):
    app = await make_app(login_max_failures=2, login_window=300)
    client = app.test_client()
    device = (await register_and_login(client, ip=OWNER_HOME))["device_token"]
    await attack(client)
    # The account is locked for every untrusted client, the owner's other browsers too...
    r = await login_attempt(client, ip=ELSEWHERE)
    assert r.status_code == 429 and 0 < int(r.headers["Retry-After"]) <= 300
    # ...but not for a device the owner has used, from anywhere, an attacker's address too.
    for ip in (OWNER_HOME, ELSEWHERE, ATTACKERS[0]):
        r = await login_attempt(client, ip=ip, device_token=device)
        assert r.status_code == 200, ip
        device = (await r.get_json())["device_token"]


async def test_another_accounts_or_a_forged_device_token_is_untrusted(make_app):
    app = await make_app(login_max_failures=2)
    client = app.test_client()
    alices = (await register_and_login(client, ip=OWNER_HOME))["device_token"]
    await register(client, "bob")
    bobs = (await register_and_login(client, "bob", ip=OWNER_HOME))["device_token"]
    access = (await register_and_login(client, ip=OWNER_HOME))["access_token"]
    await attack(client)
    head, body, signature = alices.split(".")
    forged = f"{head}.{body}.{signature[:-4]}AAAA"
    for token in (bobs, forged, access, "not-a-token"):
        r = await login_attempt(client, ip=ELSEWHERE, device_token=token)
        assert r.status_code == 429, token
    assert (await login_attempt(client, ip=ELSEWHERE, device_token=alices)).status_code == 200


async def test_a_device_that_fails_is_locked_out_alone(make_app):
    app = await make_app(login_max_failures=3)
    client = app.test_client()
    stolen = (await register_and_login(client, ip=OWNER_HOME))["device_token"]
    mine = (await register_and_login(client, ip=OWNER_HOME))["device_token"]
    for _ in range(3):
        r = await login_attempt(client, password="wrong", ip=ELSEWHERE, device_token=stolen)
        assert r.status_code == 401
    r = await login_attempt(client, ip=ELSEWHERE, device_token=stolen)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    # The owner's other device, and untrusted clients (their address counts nothing), go on.
    assert (await login_attempt(client, ip=ELSEWHERE, device_token=mine)).status_code == 200
    assert (await login_attempt(client, ip=ELSEWHERE)).status_code == 200
    # ``tokengate users unlock`` clears the device's count too.
    await app.extensions["tokengate"].accounts.store.clear_throttle("alice")
    assert (await login_attempt(client, ip=ELSEWHERE, device_token=stolen)).status_code == 200


async def test_a_device_token_does_not_lift_an_outage_or_bad_input(make_app):
    app = await make_app()
    client = app.test_client()
    device = (await register_and_login(client))["device_token"]
    r = await login_attempt(client, device_token=device + "\x01")
    assert r.status_code == 400 and (await r.get_json())["error"] == "invalid_request"
    r = await login_attempt(client, device_token=5)
    assert r.status_code == 400


# -- the account page: a cookie ---------------------------------------------------


async def page_login(client: Any, ip: str, password: str = "correct horse") -> Any:
    body = {"username": "alice", "password": password}
    return await client.post("/account/login", json=body, scope_base={"client": (ip, 5000)})


async def test_the_account_pages_device_cookie_survives_an_attack(make_app):
    app = await make_app(login_max_failures=2)
    owner = app.test_client()  # the owner's browser: keeps its cookies
    await register(owner)
    r = await page_login(owner, OWNER_HOME)
    assert r.status_code == 200
    cookie = next(c for c in r.headers.getlist("Set-Cookie") if c.startswith("account_device="))
    assert "HttpOnly" in cookie and "Path=/account/login" in cookie and "Max-Age=" in cookie
    # Logging out ends the session, not the device.
    csrf = set_cookies(r)["account_csrf"].value
    r = await owner.post("/account/logout", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 204
    assert not any(c.startswith("account_device=") for c in r.headers.getlist("Set-Cookie"))
    await attack(app.test_client())
    stranger = app.test_client()  # a browser the owner never used
    assert (await page_login(stranger, ELSEWHERE)).status_code == 429
    assert (await page_login(owner, ELSEWHERE)).status_code == 200
