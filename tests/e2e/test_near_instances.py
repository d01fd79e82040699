"""Near checks across real service processes, as they are by default (nothing set).

Instances A (one worker) and B (two workers, each with its own near
checks) share one Redis and one database. Whatever A ends, B refuses on the
very next request: with B's subscriptions working, right after Redis
dropped them, and while B is frozen (A's end waits for B's leases to run
out, so B wakes up to find them over).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from quart_tokengate.service.store.near import LEASE, LEASE_KEY
from tests.support import PrivateRedis, ServiceProcess, service_env, wait_for

from .session_helpers import TIMEOUT, bearer, login, me, new_name, register

ROUNDS = 20


@pytest.fixture
def ab(
    private_redis: PrivateRedis, sqlite_template: Path, tmp_path: Path
) -> Iterator[tuple[httpx.Client, httpx.Client, ServiceProcess]]:
    database = tmp_path / "shared.db"
    shutil.copy(sqlite_template, database)
    started: list[ServiceProcess] = []
    try:
        for name, workers in (("a", 1), ("b", 2)):
            workdir = tmp_path / name
            # No TOKENGATE_NEAR_CACHE: the default (auto) turns them on here.
            env = service_env(
                workdir, private_redis.url, database_url=f"sqlite+aiosqlite:///{database}"
            )
            service = ServiceProcess(env, workdir, workers=workers)
            started.append(service)
            service.start()
        leases = redis.Redis.from_url(private_redis.url)
        # Three lease holders: A's worker and B's two.
        wait_for(lambda: leases.zcard(LEASE_KEY) == 3, what="every worker's first heartbeat")
        a, b = started
        with (
            httpx.Client(base_url=a.base_url, timeout=TIMEOUT) as http_a,
            httpx.Client(base_url=b.base_url, timeout=TIMEOUT) as http_b,
        ):
            yield http_a, http_b, b
    finally:
        for service in started:
            service.stop()


def new_session(a: httpx.Client, b: httpx.Client) -> dict:
    name = new_name()
    register(a, name)
    pair = login(a, name)
    for _ in range(4):  # both of B's workers see it live, and answer it near
        assert me(b, pair) == 200
    return pair


def test_a_logout_on_one_is_refused_by_the_other_on_the_very_next_request(ab):
    a, b, _ = ab
    for round_ in range(ROUNDS):
        pair = new_session(a, b)
        assert a.post("/auth/logout", headers=bearer(pair)).status_code == 204
        assert me(b, pair) == "token_revoked", f"round {round_}"


def test_logout_all_reaches_every_worker_of_the_other(ab):
    a, b, _ = ab
    name = new_name()
    register(a, name)
    pairs = [login(a, name) for _ in range(3)]
    for pair in pairs:
        for _ in range(4):
            assert me(b, pair) == 200
    assert a.post("/auth/logout-all", headers=bearer(pairs[0])).status_code == 204
    assert [me(b, pair) for pair in pairs] == ["token_revoked"] * 3


def test_dropped_subscriptions_never_let_an_ended_session_through(ab, private_redis):
    a, b, _ = ab
    client = redis.Redis.from_url(private_redis.url)
    for _ in range(5):
        pair = new_session(a, b)
        killed = [
            c["id"] for c in client.client_list() if c.get("name", "").startswith("tokengate-near-")
        ]
        assert len(killed) == 3
        for client_id in killed:
            client.execute_command("CLIENT", "KILL", "ID", client_id)
        assert a.post("/auth/logout", headers=bearer(pair)).status_code == 204
        assert me(b, pair) == "token_revoked"
    # They come back.
    wait_for(
        lambda: sum(
            c.get("name", "").startswith("tokengate-near-") for c in client.client_list()
        ) == 3,
        what="the subscriptions again",
    )  # fmt: skip


def test_a_frozen_instance_is_waited_out_and_wakes_up_to_the_end(ab):
    a, b, b_process = ab
    pair = new_session(a, b)
    assert b_process.process is not None
    group = b_process.process.pid
    os.killpg(group, signal.SIGSTOP)  # B and its workers stop: no heartbeat, no acknowledgement
    try:
        started = time.monotonic()
        assert a.post("/auth/logout", headers=bearer(pair)).status_code == 204
        waited = time.monotonic() - started
    finally:
        os.killpg(group, signal.SIGCONT)
    # A waited for B's leases to run out, and no longer than that.
    assert 0.3 < waited < LEASE + 1.0, waited
    assert me(b, pair) == "token_revoked"
    assert [me(b, new_session(a, b)) for _ in range(2)] == [200, 200]
