"""The session rules of issue 3 against the real service process, over HTTP.

Logout, logout-all, the sessions list, deleting a session, the password
change; idle timeout and absolute age on the test kit's clock; single sign-on under
concurrent logins; refresh rotation, its grace window and reuse detection;
login throttling.

Starting the service takes seconds, and every login costs an argon2id hash
with the service's real parameters, so the services here are shared by the
tests of this module (one per set of settings, each test with its own users),
each on its own database of a redis-server private to the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from quart import Quart

from quart_tokengate.service import Settings, create_app
from tests.support import SECRET, PrivateRedis, ServiceProcess

from .session_helpers import (
    PASSWORD,
    TIMEOUT,
    bearer,
    error_of,
    login,
    me,
    new_name,
    outcome,
    refresh,
    register,
    start_service,
)


# -- services shared by the module --
@pytest.fixture(scope="module")
def general(
    module_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """Three sessions per user, a login throttle of 3 failures, the default 10 s grace."""
    url = f"redis://127.0.0.1:{module_redis.port}/1"
    service = start_service(
        tmp_path_factory.mktemp("general"), url, max_sessions=3, login_max_failures=3
    )
    yield service
    service.stop()


@pytest.fixture(scope="module")
def single_sign_on(
    module_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One session per user, and a refresh grace window of 1 s."""
    url = f"redis://127.0.0.1:{module_redis.port}/2"
    service = start_service(tmp_path_factory.mktemp("sso"), url, max_sessions=1, refresh_grace=1)
    yield service
    service.stop()


@pytest.fixture
def tokengate_app() -> Quart:
    """For the test kit's server: idle timeout 30 min (the default), absolute age 2 h,
    access tokens that outlive the idle timeout."""
    return create_app(Settings(secret_key=SECRET, session_max_age=7200, access_ttl=3600))


@pytest.fixture
def http(general: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=general.base_url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def bystander(general: ServiceProcess) -> dict[str, Any]:
    """A session of another user on ``general``, that no test of a user may touch."""
    with httpx.Client(base_url=general.base_url, timeout=TIMEOUT) as http:
        name = new_name("bystander")
        register(http, name)
        return login(http, name, device="desktop")


# -- 1. ending sessions --
def test_logout_ends_access_and_refresh_tokens_at_once(http):
    name = new_name()
    register(http, name)
    pair, other = login(http, name), login(http, name)
    assert me(http, pair) == 200
    r = http.post("/auth/logout", headers=bearer(pair))
    assert r.status_code == 204
    # The very next request with either token of the session fails.
    assert me(http, pair) == "token_revoked"
    assert refresh(http, pair["refresh_token"]) == "token_revoked"
    r = http.get("/auth/me", headers=bearer(pair))
    assert r.status_code == 401
    # The user's other session is untouched.
    assert me(http, other) == 200


def test_logout_all_ends_every_session_of_the_user_only(http, bystander):
    name = new_name()
    register(http, name)
    mine = [login(http, name) for _ in range(3)]
    r = http.post("/auth/logout-all", headers=bearer(mine[1]))
    assert r.status_code == 204
    for pair in mine:
        assert me(http, pair) == "token_revoked"
        assert refresh(http, pair["refresh_token"]) == "token_revoked"
    assert me(http, bystander) == 200


def test_sessions_list_and_deleting_one_of_my_sessions(http, bystander):
    name = new_name()
    register(http, name)
    first = login(http, name, device="phone")
    second = login(http, name, device="laptop")
    http.post("/auth/logout", headers=bearer(first))
    r = http.post(
        "/auth/login",
        json={"username": name, "password": PASSWORD, "device": "tablet"},
        headers={"User-Agent": "tg-e2e/1"},
    )
    third = r.json()

    r = http.get("/auth/sessions", headers=bearer(second))
    assert r.status_code == 200
    sessions = r.json()["sessions"]
    # Live sessions of this user only, oldest first; no other user's.
    assert [s["device"] for s in sessions] == ["laptop", "tablet"]
    assert [s["id"] for s in sessions] == [second["session_id"], third["session_id"]]
    assert [s["current"] for s in sessions] == [True, False]
    for s in sessions:
        assert set(s) == {
            "id", "device", "ip", "user_agent", "created_at", "last_seen_at", "current",
        }  # fmt: skip
        assert s["ip"] == "127.0.0.1"
        assert s["created_at"].endswith("Z") and s["last_seen_at"].endswith("Z")
    assert sessions[1]["user_agent"] == "tg-e2e/1"

    r = http.delete(f"/auth/sessions/{third['session_id']}", headers=bearer(second))
    assert r.status_code == 204
    assert me(http, third) == "token_revoked"
    assert refresh(http, third["refresh_token"]) == "token_revoked"
    assert me(http, second) == 200
    r = http.get("/auth/sessions", headers=bearer(second))
    assert [s["id"] for s in r.json()["sessions"]] == [second["session_id"]]
    assert me(http, bystander) == 200


def test_deleting_another_users_session_is_not_found_and_changes_nothing(http, bystander):
    name = new_name()
    register(http, name)
    mine = login(http, name)
    r = http.delete(f"/auth/sessions/{bystander['session_id']}", headers=bearer(mine))
    assert r.status_code == 404
    assert error_of(r) == "not_found"
    # A session id that does not exist at all looks the same.
    r = http.delete("/auth/sessions/no-such-session-id", headers=bearer(mine))
    assert (r.status_code, error_of(r)) == (404, "not_found")
    assert me(http, bystander) == 200
    assert me(http, mine) == 200


def test_password_change_ends_every_other_session(http):
    name = new_name()
    register(http, name)
    here, elsewhere = login(http, name), login(http, name)
    r = http.post(
        "/auth/password",
        json={"current_password": "wrong password", "new_password": "battery staple"},
        headers=bearer(here),
    )
    assert (r.status_code, error_of(r)) == (401, "invalid_credentials")
    assert me(http, elsewhere) == 200
    r = http.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "battery staple"},
        headers=bearer(here),
    )
    assert r.status_code == 204
    assert me(http, here) == 200
    assert me(http, elsewhere) == "token_revoked"
    assert refresh(http, elsewhere["refresh_token"]) == "token_revoked"
    old = http.post("/auth/login", json={"username": name, "password": PASSWORD})
    assert (old.status_code, error_of(old)) == (401, "invalid_credentials")
    assert me(http, login(http, name, "battery staple")) == 200


# -- 2. idle timeout and absolute age, on the test kit's clock --
def test_activity_keeps_a_session_alive_silence_ends_it_and_age_ends_it_anyway(
    tokengate_server, tokengate_user, tokengate_clock
):
    """Idle timeout 1800 s and absolute age 7200 s, to the second, over HTTP."""
    user = tokengate_user()
    with httpx.Client(base_url=tokengate_server.base_url, timeout=TIMEOUT) as http:
        silent = login(http, user.username, user.password)
        active = login(http, user.username, user.password)

        # The active session is used every 1000 s, by a refresh or a request.
        tokengate_clock.advance(1000)
        active = refresh(http, active["refresh_token"])
        assert isinstance(active, dict), active
        tokengate_clock.advance(799)
        assert me(http, silent) == 200  # 1799 s of silence: still alive (this use counts)
        tokengate_clock.advance(201)
        assert me(http, active) == 200

        # The silent one had no request for the idle timeout: over, to the second
        # (its access token has not expired: the session has).
        tokengate_clock.advance(1800 - 201)
        assert me(http, silent) == "session_expired"
        assert refresh(http, silent["refresh_token"]) == "session_expired"

        # The active one lives on past the idle timeout, well inside its age.
        active = refresh(http, active["refresh_token"])
        assert isinstance(active, dict), active
        assert me(http, active) == 200
        r = http.get("/auth/sessions", headers=bearer(active))
        assert [s["id"] for s in r.json()["sessions"]] == [active["session_id"]]
        for step in (1600, 1600, 400):  # 5199 s old, then 6799 s, then 7199 s: alive
            tokengate_clock.advance(step)
            active = refresh(http, active["refresh_token"])
            assert isinstance(active, dict), active

        # At its absolute age it is over, though used a second ago.
        tokengate_clock.advance(1)
        assert me(http, active) == "session_expired"
        assert refresh(http, active["refresh_token"]) == "session_expired"
        assert refresh(http, silent["refresh_token"]) == "session_expired"


# -- 3. single sign-on --
def test_single_sign_on_newest_login_wins(single_sign_on):
    with httpx.Client(base_url=single_sign_on.base_url, timeout=TIMEOUT) as http:
        name = new_name()
        register(http, name)
        first = login(http, name)
        assert me(http, first) == 200
        second = login(http, name)
        assert me(http, first) == "session_replaced"
        assert refresh(http, first["refresh_token"]) == "session_replaced"
        assert me(http, second) == 200


def live_in_database(service: ServiceProcess, username: str) -> int:
    """How many sessions of ``username`` the service's database holds as live (read-only)."""
    path = service.workdir / "tokengate.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM sessions JOIN users ON users.id = sessions.user_id"
            " WHERE users.username = ? AND sessions.ended_at IS NULL",
            (username,),
        ).fetchone()
    return int(count)


async def concurrent_logins(service: ServiceProcess, count: int) -> tuple[list, list]:
    """``count`` logins of one new user at once; return their responses and the survivors.

    The survivors agree in the sessions list and in the database, the durable truth.
    """
    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(
        base_url=service.base_url, timeout=TIMEOUT, limits=limits
    ) as client:
        name = new_name()
        r = await client.post("/auth/register", json={"username": name, "password": PASSWORD})
        assert r.status_code == 201
        responses = await asyncio.gather(
            *(
                client.post("/auth/login", json={"username": name, "password": PASSWORD})
                for _ in range(count)
            )
        )
        pairs = [r.json() for r in responses if r.status_code == 200]
        checks = await asyncio.gather(*(client.get("/auth/me", headers=bearer(p)) for p in pairs))
        statuses = [outcome(r) for r in checks]
        survivors = [p for p, s in zip(pairs, statuses, strict=True) if s == 200]
        assert set(statuses) <= {200, "session_replaced"}, statuses
        if survivors:
            r = await client.get("/auth/sessions", headers=bearer(survivors[0]))
            listed = sorted(s["id"] for s in r.json()["sessions"])
            assert listed == sorted(p["session_id"] for p in survivors)
    assert live_in_database(service, name) == len(survivors)
    return responses, survivors


@pytest.mark.parametrize(("service_name", "limit"), [("single_sign_on", 1), ("general", 3)])
async def test_the_limit_holds_under_twenty_concurrent_logins(request, service_name, limit):
    service = request.getfixturevalue(service_name)
    responses, survivors = await concurrent_logins(service, 20)
    # A login that lost the race is refused as replaced; none fails otherwise.
    for r in responses:
        assert r.status_code == 200 or (r.status_code, error_of(r)) == (401, "session_replaced")
    assert len(survivors) == limit


# -- 4. refresh rotation --
async def test_fifty_concurrent_refreshes_get_the_same_successor(general):
    limits = httpx.Limits(max_connections=60)
    async with httpx.AsyncClient(
        base_url=general.base_url, timeout=TIMEOUT, limits=limits
    ) as client:
        name = new_name()
        await client.post("/auth/register", json={"username": name, "password": PASSWORD})
        r = await client.post("/auth/login", json={"username": name, "password": PASSWORD})
        pair = r.json()
        responses = await asyncio.gather(
            *(
                client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
                for _ in range(50)
            )
        )
        assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses]
        bodies = [r.json() for r in responses]
        assert len({(b["access_token"], b["refresh_token"]) for b in bodies}) == 1
        successor = bodies[0]
        assert successor["session_id"] == pair["session_id"]
        assert successor["refresh_token"] != pair["refresh_token"]
        r = await client.get("/auth/me", headers=bearer(successor))
        assert r.status_code == 200
        # The successor rotates on as usual.
        r = await client.post("/auth/refresh", json={"refresh_token": successor["refresh_token"]})
        assert r.status_code == 200
        assert r.json()["refresh_token"] != successor["refresh_token"]


def test_the_retired_token_after_the_grace_window_is_reuse_and_ends_the_session(
    tokengate_server, tokengate_user, tokengate_clock
):
    user = tokengate_user()
    with httpx.Client(base_url=tokengate_server.base_url, timeout=TIMEOUT) as http:
        pair = login(http, user.username, user.password)
        successor = refresh(http, pair["refresh_token"])
        assert isinstance(successor, dict), successor
        # Within the 10 s grace window the same successor comes back.
        tokengate_clock.advance(10)
        again = refresh(http, pair["refresh_token"])
        assert isinstance(again, dict) and again["refresh_token"] == successor["refresh_token"]
        tokengate_clock.advance(1)
        assert refresh(http, pair["refresh_token"]) == "refresh_reused"
        # The whole session is over: the successor pair fails too.
        assert refresh(http, successor["refresh_token"]) == "token_revoked"
        assert me(http, successor) == "token_revoked"


# -- 5. login throttling --
def client_from(service: ServiceProcess, address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x.y.z is loopback)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=service.base_url, timeout=TIMEOUT, transport=transport)


def test_too_many_failures_lock_out_that_address_not_the_owner(general):
    name = new_name()

    def attempt(address: str, password: str) -> httpx.Response:
        with client_from(general, address) as http:
            return http.post("/auth/login", json={"username": name, "password": password})

    with client_from(general, "127.0.0.1") as http:
        register(http, name)
    # Two failures, then a success from the same address: its count starts again.
    for _ in range(2):
        assert attempt("127.0.0.2", "wrong password").status_code == 401
    assert attempt("127.0.0.2", PASSWORD).status_code == 200
    # Three failures in the window from one address...
    for _ in range(3):
        r = attempt("127.0.0.4", "wrong password")
        assert (r.status_code, error_of(r)) == (401, "invalid_credentials")
    # ...and that address is refused, right password or not...
    r = attempt("127.0.0.4", PASSWORD)
    assert r.status_code == 429
    assert error_of(r) == "too_many_attempts"
    assert 0 < int(r.headers["Retry-After"]) <= 900
    # ...while the owner, from another address, logs in.
    assert attempt("127.0.0.7", PASSWORD).status_code == 200
