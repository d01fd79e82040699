"""Every time rule of the service falls on the exact second on the kit's clock.

The kit's clock starts at the real time, with its fraction of a second; the
tests here give it a fraction of .9 (the worst case for a rule that rounds one
side down and not the other) and look at each boundary one second before, on
it and one second after, over real HTTP: access-token expiry and the idle
timeout end the session on the second (``advance(ttl)`` is over), the
fresh-login window and the refresh grace window include their last second
(``advance(ttl)`` is still inside).
"""

from __future__ import annotations

import math

import httpx
import pytest
from quart import Quart

from quart_tokengate.client.pytest_plugin import TokengateClock
from quart_tokengate.service import Settings, create_app, login_required
from tests.e2e.session_helpers import bearer, error_of

ACCESS_TTL = 100
IDLE_TIMEOUT = 200
FRESH_TTL = 50
GRACE = 10


@pytest.fixture
def tokengate_app() -> Quart:
    app = create_app(
        Settings(
            secret_key="k" * 40,
            access_ttl=ACCESS_TTL,
            idle_timeout=IDLE_TIMEOUT,
            fresh_ttl=FRESH_TTL,
            refresh_grace=GRACE,
        )
    )

    @app.get("/fresh-only")
    @login_required(fresh=True)
    async def fresh_only() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.fixture
def http(tokengate_server, tokengate_clock: TokengateClock):
    # A clock nine tenths of a second past a whole second, as the real time may be.
    now = tokengate_clock()
    tokengate_clock.advance(math.floor(now) + 1.9 - now)
    assert round(tokengate_clock() % 1, 6) == 0.9
    with httpx.Client(base_url=tokengate_server.base_url) as client:
        yield client


def login(http: httpx.Client, user) -> dict:
    r = http.post("/auth/login", json={"username": user.username, "password": user.password})
    assert r.status_code == 200
    return r.json()


def answer(response: httpx.Response) -> int | str:
    return response.status_code if response.status_code < 400 else error_of(response)


def test_the_access_token_expires_on_its_second(http, tokengate_user, tokengate_clock):
    pair = login(http, tokengate_user())
    seen = []
    for step in (ACCESS_TTL - 1, 1, 1):
        tokengate_clock.advance(step)
        seen.append(answer(http.get("/auth/me", headers=bearer(pair))))
    assert seen == [200, "token_expired", "token_expired"]


def test_the_idle_timeout_ends_the_session_on_its_second(http, tokengate_user, tokengate_clock):
    user = tokengate_user()
    sessions = [login(http, user) for _ in range(3)]  # one per probe: a probe is a use
    seen = []
    for step, pair in zip((IDLE_TIMEOUT - 1, 1, 1), sessions, strict=True):
        tokengate_clock.advance(step)  # past the access token's expiry: ask with a refresh
        r = http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        seen.append(answer(r))
    assert seen == [200, "session_expired", "session_expired"]


def test_the_fresh_login_window_includes_its_last_second(http, tokengate_user, tokengate_clock):
    pair = login(http, tokengate_user())
    seen = []
    for step in (FRESH_TTL - 1, 1, 1):
        tokengate_clock.advance(step)
        seen.append(answer(http.get("/fresh-only", headers=bearer(pair))))
    assert seen == [200, 200, "fresh_login_required"]


def test_the_refresh_grace_window_includes_its_last_second(http, tokengate_user, tokengate_clock):
    first = login(http, tokengate_user())
    r = http.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    successor = r.json()
    seen = []
    for step in (GRACE - 1, 1, 1):
        tokengate_clock.advance(step)
        r = http.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        same = r.status_code == 200 and r.json()["refresh_token"] == successor["refresh_token"]
        seen.append("same pair" if same else answer(r))
    assert seen == ["same pair", "same pair", "refresh_reused"]
