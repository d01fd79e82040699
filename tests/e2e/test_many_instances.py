"""Two service processes on one Redis Cluster and one PostgreSQL (CONTRACT section 8).

The cluster is real: three masters with a replica each, started on loopback
ports for this module. A session ended on one instance is refused by the
other on its very next request; the session limit and refresh rotation hold
across them; a master killed under load gives only 200 and 503 answers, and
everything recovers once its replica has taken over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults import RedisCluster
from tests.support import PostgresServer, ServiceProcess, claims, service_env, wait_for_async

from .session_helpers import (
    PASSWORD,
    TIMEOUT,
    bearer,
    error_of,
    login,
    me,
    new_name,
    refresh,
    register,
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    servers = RedisCluster(masters=3)
    servers.start()
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def shared_postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def instances(
    cluster: RedisCluster, shared_postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Instances A and B: same cluster, same database, two sessions per user.

    B's refresh grace is 0 where A's is 10 s: the same rotated session then
    shows both sides of the grace window without waiting for it to pass.
    """
    started: list[ServiceProcess] = []
    try:
        for name, grace in (("a", 10), ("b", 0)):
            workdir: Path = tmp_path_factory.mktemp(f"instance-{name}")
            env = service_env(
                workdir, cluster.url, redis_cluster="true", database_url=shared_postgres.url,
                max_sessions=2, refresh_grace=grace,
            )  # fmt: skip
            service = ServiceProcess(env, workdir)
            started.append(service)
            service.start()  # one after the other: the first one migrates the database
        yield started[0], started[1]
    finally:
        for service in started:
            service.stop()


@pytest.fixture
def ab(instances) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    a, b = instances
    with (
        httpx.Client(base_url=a.base_url, timeout=TIMEOUT) as http_a,
        httpx.Client(base_url=b.base_url, timeout=TIMEOUT) as http_b,
    ):
        yield http_a, http_b


def test_both_instances_are_healthy_on_the_cluster(ab):
    for http in ab:
        r = http.get("/healthz")
        body = r.json()
        assert r.status_code == 200, body
        assert (body["status"], body["database"], body["redis"]) == ("ok", "ok", "ok")


def test_logout_on_one_is_refused_by_the_other_on_the_very_next_request(ab):
    a, b = ab
    # Many users, so that their sessions land on every master's slots.
    for _ in range(6):
        name = new_name()
        register(a, name)
        pair = login(a, name)
        assert me(b, pair) == 200
        assert b.post("/auth/logout", headers=bearer(pair)).status_code == 204
        assert me(a, pair) == "token_revoked"
        assert refresh(a, pair["refresh_token"]) == "token_revoked"


def test_an_api_key_revoked_on_one_is_refused_by_the_other_on_the_cluster(ab):
    """A key's state and its rate counter share one slot: its one script runs on the cluster."""
    a, b = ab
    name = new_name()
    register(a, name)
    pair = login(a, name)
    for n in range(6):  # keys whose digests land on every master's slots
        r = a.post("/auth/api-keys", json={"name": f"key {n}"}, headers=bearer(pair))
        assert r.status_code == 201, r.text
        made = r.json()
        key = {"Authorization": f"Bearer {made['key']}"}
        assert b.get("/auth/me", headers=key).status_code == 200
        assert a.delete(f"/auth/api-keys/{made['id']}", headers=bearer(pair)).status_code == 204
        assert error_of(b.get("/auth/me", headers=key)) == "token_revoked"


def test_logout_all_and_the_sessions_list_agree_across_instances(ab):
    a, b = ab
    name = new_name()
    register(b, name)
    first, second = login(a, name), login(b, name)
    listed = a.get("/auth/sessions", headers=bearer(first)).json()["sessions"]
    assert {s["id"] for s in listed} == {first["session_id"], second["session_id"]}
    assert b.post("/auth/logout-all", headers=bearer(second)).status_code == 204
    assert (me(a, first), me(a, second)) == ("token_revoked", "token_revoked")


def test_the_session_limit_holds_across_instances(ab):
    a, b = ab
    name = new_name()
    register(a, name)
    oldest = login(a, name)
    middle = login(b, name)
    newest = login(a, name)  # the third of two: the oldest is pushed out
    assert me(b, oldest) == "session_replaced"
    assert (me(b, middle), me(a, newest)) == (200, 200)


async def test_concurrent_logins_on_both_instances_keep_the_limit(instances):
    a, b = instances
    name = new_name()
    with httpx.Client(base_url=a.base_url, timeout=TIMEOUT) as http:
        register(http, name)
    body = {"username": name, "password": PASSWORD}
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=TIMEOUT) as http_a,
        httpx.AsyncClient(base_url=b.base_url, timeout=TIMEOUT) as http_b,
    ):
        responses = await asyncio.gather(
            *(http.post("/auth/login", json=body) for http in [http_a, http_b] * 4)
        )
        pairs = [r.json() for r in responses if r.status_code == 200]
        checks = await asyncio.gather(*(http_b.get("/auth/me", headers=bearer(p)) for p in pairs))
    assert {r.status_code for r in responses} <= {200, 401}
    assert sum(r.status_code == 200 for r in checks) == 2


def test_rotation_and_grace_are_seen_by_both_instances(ab):
    a, b = ab  # A: 10 s of grace; B: none
    name = new_name()
    register(a, name)
    r0 = login(a, name)
    r1 = refresh(a, r0["refresh_token"])
    assert isinstance(r1, dict)
    # Within A's grace window, the retired token gives the same successor, on A.
    again = refresh(a, r0["refresh_token"])
    assert isinstance(again, dict) and again["refresh_token"] == r1["refresh_token"]
    # B rotates A's successor, and A recognises B's rotation.
    r2 = refresh(b, r1["refresh_token"])
    assert isinstance(r2, dict) and me(a, r2) == 200
    # r0 is now two steps back: reuse, whichever instance sees it, ends the session.
    assert refresh(a, r0["refresh_token"]) == "refresh_reused"
    assert (me(b, r2), refresh(b, r2["refresh_token"])) == ("token_revoked", "token_revoked")


def test_past_the_grace_window_on_the_other_instance_is_reuse(ab):
    a, b = ab
    name = new_name()
    register(a, name)
    r0 = login(a, name)
    r1 = refresh(a, r0["refresh_token"])
    assert isinstance(r1, dict)
    assert refresh(b, r0["refresh_token"]) == "refresh_reused"  # B's grace is 0
    assert me(a, r1) == "token_revoked"


async def test_a_master_killed_under_load_gives_only_200_and_503_then_recovers(instances, cluster):
    a, b = instances
    users = []
    with httpx.Client(base_url=a.base_url, timeout=TIMEOUT) as http:
        for _ in range(12):
            name = new_name()
            register(http, name)
            users.append(login(http, name))
        logging_in = new_name("logs-in")  # logs in again and again during the outage
        register(http, logging_in)
    # The master that holds the first user's session: someone is always hit.
    victim = cluster.primary_for(f"{{u{claims(users[0]['access_token'])['sub']}}}")
    statuses: dict[str, list[int]] = {"me": [], "login": [], "healthz": []}
    limits = httpx.Limits(max_connections=10)
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=TIMEOUT, limits=limits) as http_a,
        httpx.AsyncClient(base_url=b.base_url, timeout=TIMEOUT, limits=limits) as http_b,
    ):

        async def round_of_requests() -> list[int]:
            responses = await asyncio.gather(
                *(
                    http.get("/auth/me", headers=bearer(pair))
                    for pair, http in zip(users, [http_a, http_b] * len(users), strict=False)
                )
            )
            codes = [r.status_code for r in responses]
            statuses["me"] += codes
            return codes

        async def recovered() -> bool:
            """One round of load; true once both instances and the cluster are whole again."""
            codes = await round_of_requests()
            health = await asyncio.gather(http_a.get("/healthz"), http_b.get("/healthz"))
            statuses["healthz"] += [r.status_code for r in health]
            body = {"username": logging_in, "password": PASSWORD}
            r = await http_b.post("/auth/login", json=body)
            statuses["login"].append(r.status_code)
            healthy = set(codes) == {200} and all(h.status_code == 200 for h in health)
            return healthy and cluster.healthy()

        assert set(await round_of_requests()) == {200}
        cluster.kill(victim)
        killed_at = time.monotonic()
        try:
            # Round after round of load (0.1 s apart) until the failover is over:
            # how long that takes is the cluster's business, so the limit is wide.
            await wait_for_async(
                recovered, timeout=180, interval=0.1, what="recovery from the killed master"
            )
        finally:
            took = time.monotonic() - killed_at
            answers = ", ".join(f"{k} {sorted(set(v))} x{len(v)}" for k, v in statuses.items())
            print(f"after {took:.1f} s; answers: {answers}")
    assert set(statuses["me"]) <= {200, 503}
    assert set(statuses["login"]) <= {200, 503}
    assert set(statuses["healthz"]) <= {200, 503}
    assert 503 in statuses["healthz"], "healthz never noticed the dead master"
    # Every session survived: those on the dead master's slots were rebuilt from SQL.
    with httpx.Client(base_url=b.base_url, timeout=TIMEOUT) as http:
        assert [me(http, pair) for pair in users] == [200] * len(users)
        assert error_of(http.get("/auth/me")) == "missing_token"


async def test_a_plain_client_on_a_cluster_node_is_unhealthy_and_never_500(
    cluster, shared_postgres, tmp_path
):
    """The mistake of the issue: ``redis://`` to one node without TOKENGATE_REDIS_CLUSTER."""
    from quart_tokengate.service import Settings, create_app
    from tests.support import SECRET

    settings = Settings(
        secret_key=SECRET, redis_url=cluster.url, database_url=shared_postgres.url,
        instance_dir=tmp_path / "instance",
    )  # fmt: skip
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()
        r = await client.get("/healthz")
        assert r.status_code == 503 and (await r.get_json())["redis"] == "unavailable"
        statuses = set()
        for _ in range(9):
            name = new_name()
            r = await client.post("/auth/register", json={"username": name, "password": PASSWORD})
            r = await client.post("/auth/login", json={"username": name, "password": PASSWORD})
            statuses.add(r.status_code)
        assert statuses <= {200, 503} and 503 in statuses, statuses
