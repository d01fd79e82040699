"""The hot path, Redis losing its data, and outages, against the real service process.

The Redis tests share one service on a redis-server private to this module,
which they flush, stop and start; the service is never restarted. The
database outage runs the service on a private PostgreSQL server that the test
stops and starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.support import (
    PrivateRedis,
    ServiceProcess,
    assert_unavailable,
    commandstats,
    timed,
)

from .session_helpers import (
    PASSWORD,
    TIMEOUT,
    bearer,
    login,
    me,
    new_name,
    refresh,
    register,
    start_service,
)


# -- a service on a private redis-server, shared by the Redis tests --
@pytest.fixture(scope="module")
def module_service(
    module_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """Two sessions per user, so that a third login replaces the oldest."""
    service = start_service(tmp_path_factory.mktemp("resilient"), module_redis.url, max_sessions=2)
    yield service
    service.stop()


@pytest.fixture
def module_redis_running(module_redis: PrivateRedis) -> Iterator[PrivateRedis]:
    """The module's redis-server, running at the start and at the end of each test."""
    if module_redis.process is None:
        module_redis.start()
    yield module_redis
    if module_redis.process is None:
        module_redis.start()


@pytest.fixture
def service(module_service: ServiceProcess, module_redis_running: PrivateRedis) -> ServiceProcess:
    assert module_service.process is not None and module_service.process.poll() is None
    return module_service


@pytest.fixture
def http(service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.base_url, timeout=TIMEOUT) as client:
        yield client


# -- 6. the hot path: one EVALSHA per authenticated request, nothing else --
async def test_one_script_call_per_request_and_nothing_else(service, module_redis_running):
    with httpx.Client(base_url=service.base_url, timeout=TIMEOUT) as http:
        name = new_name()
        register(http, name)
        auth = bearer(login(http, name))
    limits = httpx.Limits(max_connections=60)
    async with httpx.AsyncClient(
        base_url=service.base_url, timeout=TIMEOUT, limits=limits
    ) as client:

        async def batch() -> None:
            responses = await asyncio.gather(
                *(client.get("/auth/me", headers=auth) for _ in range(25))
            )
            assert [r.status_code for r in responses] == [200] * 25

        # Warm up: the script loaded, the service's connection pool filled.
        for _ in range(2):
            await batch()
        stats_client = redis.Redis(port=module_redis_running.port, socket_timeout=5)
        try:
            stats_client.config_resetstat()
            for _ in range(25):
                r = await client.get("/auth/me", headers=auth)
                assert r.status_code == 200
            await batch()
            stats = commandstats(stats_client)
        finally:
            stats_client.close()
    # One EVALSHA per request; inside it, one EXISTS, one HMGET, one HSET. Near
    # checks are on (the default) and answer none of it without a check behind;
    # besides, their heartbeats run lease.lua (one ZADD each) four times a second.
    beats = stats.get("zadd", 0)
    lease = ("time", "zadd", "zremrangebyscore", "pexpire", "publish")
    assert stats == {
        "evalsha": 50 + beats, "exists": 50, "hmget": 50, "hset": 50,
        **({name: beats for name in lease} if beats else {}),
    }  # fmt: skip


# -- 7. Redis losing its data --
def test_sessions_keep_their_state_when_redis_loses_its_data(service, http, module_redis_running):
    alice, bob = new_name("alice"), new_name("bob")
    register(http, alice)
    register(http, bob)
    replaced = login(http, alice)
    live = login(http, alice)
    logged_out = login(http, alice)  # the third of two: ``replaced`` is pushed out
    assert http.post("/auth/logout", headers=bearer(logged_out)).status_code == 204
    rotated = refresh(http, live["refresh_token"])
    assert isinstance(rotated, dict), rotated
    other = login(http, bob)

    def states() -> dict[str, Any]:
        listed = http.get("/auth/sessions", headers=bearer(rotated)).json()["sessions"]
        return {
            "live": me(http, rotated),
            "other user": me(http, other),
            "logged out": me(http, logged_out),
            "logged out, refresh": refresh(http, logged_out["refresh_token"]),
            "replaced": me(http, replaced),
            "replaced, refresh": refresh(http, replaced["refresh_token"]),
            "listed": [s["id"] for s in listed],
        }

    expected = {
        "live": 200,
        "other user": 200,
        "logged out": "token_revoked",
        "logged out, refresh": "token_revoked",
        "replaced": "session_replaced",
        "replaced, refresh": "session_replaced",
        "listed": [live["session_id"]],
    }
    assert states() == expected

    # The service's database on the module's own redis-server loses everything.
    service_redis = redis.Redis.from_url(service.env["TOKENGATE_REDIS_URL"], socket_timeout=5)
    try:
        service_redis.flushdb()
        assert service_redis.dbsize() == 0
    finally:
        service_redis.close()
    assert states() == expected
    # The retired refresh token, within the grace window, still gets the same successor.
    again = refresh(http, live["refresh_token"])
    assert isinstance(again, dict) and again["refresh_token"] == rotated["refresh_token"]

    module_redis_running.stop()  # no persistence: everything is gone
    module_redis_running.start()
    assert states() == expected
    # The per-user limit still counts the sessions the database knows are live.
    newest = login(http, alice)
    assert me(http, rotated) == 200
    newer = login(http, alice)
    assert me(http, rotated) == "session_replaced"
    assert (me(http, newest), me(http, newer)) == (200, 200)
    # The service was never restarted.
    assert service.process is not None and service.process.poll() is None


# -- 8. outages --
def test_redis_down_every_auth_route_answers_503_fast_then_recovers(
    service, http, module_redis_running
):
    name = new_name()
    register(http, name)
    pair = login(http, name)
    auth = bearer(pair)
    assert me(http, pair) == 200

    module_redis_running.stop()
    calls: dict[str, Callable[[], httpx.Response]] = {
        "me": lambda: http.get("/auth/me", headers=auth),
        "sessions": lambda: http.get("/auth/sessions", headers=auth),
        "login": lambda: http.post("/auth/login", json={"username": name, "password": PASSWORD}),
        "refresh": lambda: http.post(
            "/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        ),
        "logout": lambda: http.post("/auth/logout", headers=auth),
    }
    for call in calls.values():
        assert_unavailable(*timed(call))
    r = http.get("/healthz")
    assert r.status_code == 503
    assert r.json()["redis"] == "unavailable"

    module_redis_running.start()
    # The next requests succeed, and the logout that failed did not half happen.
    assert me(http, pair) == 200
    assert http.get("/healthz").status_code == 200
    fresh = refresh(http, pair["refresh_token"])
    assert isinstance(fresh, dict), fresh
    assert me(http, fresh) == 200
    assert me(http, login(http, name)) == 200
    assert http.post("/auth/logout", headers=bearer(fresh)).status_code == 204
    assert me(http, fresh) == "token_revoked"
    assert service.process is not None and service.process.poll() is None


def test_database_down_fails_closed_fast_then_recovers(service_factory, postgres):
    # Near checks off: with them, the session checked just before the flush below
    # may be answered near once more within its second (test_hung_backends).
    svc = service_factory(database_url=postgres.url, near_cache="false")
    service_redis = redis.Redis.from_url(svc.env["TOKENGATE_REDIS_URL"], socket_timeout=5)
    with httpx.Client(base_url=svc.base_url, timeout=TIMEOUT) as http:
        name = new_name()
        register(http, name)
        pair = login(http, name)
        auth = bearer(pair)
        assert me(http, pair) == 200

        postgres.stop()
        try:
            for call in [
                lambda: http.post("/auth/login", json={"username": name, "password": PASSWORD}),
                lambda: http.post(
                    "/auth/register", json={"username": new_name(), "password": PASSWORD}
                ),
            ]:
                assert_unavailable(*timed(call))
            # While Redis holds the session, the guard needs no database at all.
            assert me(http, pair) == 200
            # Once Redis has lost it, the session cannot be checked: closed, not open.
            service_redis.flushdb()
            assert_unavailable(*timed(lambda: http.get("/auth/me", headers=auth)))
            assert_unavailable(
                *timed(
                    lambda: http.post(
                        "/auth/refresh", json={"refresh_token": pair["refresh_token"]}
                    )
                )
            )
            assert_unavailable(*timed(lambda: http.post("/auth/logout", headers=auth)))
            r = http.get("/healthz")
            assert r.status_code == 503
            assert r.json()["database"] == "unavailable"
        finally:
            postgres.start()

        # Back: the next requests succeed, without restarting the service.
        assert me(http, pair) == 200
        assert http.get("/healthz").status_code == 200
        fresh = refresh(http, pair["refresh_token"])
        assert isinstance(fresh, dict), fresh
        assert me(http, login(http, name)) == 200
        assert http.post("/auth/logout", headers=bearer(fresh)).status_code == 204
        assert me(http, fresh) == "token_revoked"
    service_redis.close()
    assert svc.process is not None and svc.process.poll() is None
