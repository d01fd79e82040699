"""``for_client`` against the real service: one fetch for many requests, threads and processes,
a fetch before expiry, a fetch and one retry after a revoked token, ``InvalidClient``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from quart_tokengate.client import AsyncAuthClient, AuthClient, FileTokenStore, InvalidClient
from tests.e2e.test_admin_cli import Admin
from tests.support import PrivateRedis, ServiceProcess, run_together, service_env

from .test_client_concurrency import TIMEOUT, CountingTransport

PROCESSES = 3
REQUESTS_EACH = 10


@pytest.fixture(scope="module")
def deployment(
    module_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, Admin]]:
    workdir = tmp_path_factory.mktemp("service-accounts")
    env = service_env(workdir, module_redis.url)
    service = ServiceProcess(env, workdir)
    service.start()
    yield service, Admin(env, workdir)
    service.stop()


def new_client(admin: Admin, *args: str) -> dict[str, str]:
    out = admin.ok("clients", "create", "worker", *args)
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def fetches(transport: CountingTransport) -> int:
    return sum(n for (path, _), n in transport.answered.items() if path == "POST /oauth/token")


async def test_one_fetch_for_any_number_of_concurrent_requests(deployment):
    service, admin = deployment
    ids = new_client(admin, "--scope", "jobs")
    transport = CountingTransport()
    async with AsyncAuthClient.for_client(
        service.base_url, ids["client_id"], ids["client_secret"], transport=transport,
        timeout=TIMEOUT,
    ) as api:  # fmt: skip
        responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(50)))
        assert [r.status_code for r in responses] == [200] * 50
        assert api.tokens is not None and api.tokens.refresh_token == ""
    assert fetches(transport) == 1 and transport.unauthorized == 0


def test_one_fetch_for_many_threads(deployment):
    service, admin = deployment
    ids = new_client(admin)
    transport = CountingTransport()
    with (
        AuthClient.for_client(
            service.base_url, ids["client_id"], ids["client_secret"], transport=transport,
            timeout=TIMEOUT,
        ) as api,
        ThreadPoolExecutor(8) as pool,
    ):  # fmt: skip
        statuses = list(pool.map(lambda _: api.get("/auth/me").status_code, range(40)))
    assert statuses == [200] * 40
    assert fetches(transport) == 1


def worker(base_url: str, client_id: str, secret: str, path: str, start: Any, results: Any) -> None:
    """One process: wait for the others, then send concurrent requests with the shared file."""

    async def run() -> dict[str, Any]:
        transport = CountingTransport()
        async with AsyncAuthClient.for_client(
            base_url, client_id, secret, transport=transport, token_store=FileTokenStore(path),
            timeout=TIMEOUT,
        ) as api:  # fmt: skip
            start.wait()
            responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(REQUESTS_EACH)))
        return {"statuses": [r.status_code for r in responses], "fetches": fetches(transport)}

    try:
        results.put(asyncio.run(run()))
    except BaseException as exc:  # report, so the test fails with a reason and never hangs
        results.put({"error": repr(exc)})


def test_processes_sharing_a_token_file_fetch_once_between_them(deployment, tmp_path):
    service, admin = deployment
    ids = new_client(admin)
    path = str(tmp_path / "tokens.json")
    reports, _ = run_together(
        PROCESSES, worker, service.base_url, ids["client_id"], ids["client_secret"], path
    )
    assert not [r for r in reports if "error" in r], reports
    assert [r["statuses"] for r in reports] == [[200] * REQUESTS_EACH] * PROCESSES
    assert sum(r["fetches"] for r in reports) == 1


async def test_a_new_token_is_fetched_before_the_old_one_expires(deployment):
    service, admin = deployment
    ids = new_client(admin)
    offset = [0.0]
    transport = CountingTransport()
    async with AsyncAuthClient.for_client(
        service.base_url, ids["client_id"], ids["client_secret"], transport=transport,
        refresh_margin=30, clock=lambda: time.time() + offset[0], timeout=TIMEOUT,
    ) as api:  # fmt: skip
        assert (await api.get("/auth/me")).status_code == 200
        first = api.tokens
        offset[0] = 271.0  # within 30 s of the 300 s token's expiry, by the client's clock
        assert (await api.get("/auth/me")).status_code == 200
        assert api.tokens != first
    assert fetches(transport) == 2 and transport.unauthorized == 0


async def test_a_revoked_token_is_fetched_again_once_and_the_request_retried_once(deployment):
    service, admin = deployment
    ids = new_client(admin)
    transport = CountingTransport()
    async with AsyncAuthClient.for_client(
        service.base_url, ids["client_id"], ids["client_secret"], transport=transport,
        timeout=TIMEOUT,
    ) as api:  # fmt: skip
        assert (await api.get("/auth/me")).status_code == 200
        admin.ok("clients", "disable", ids["client_id"])
        admin.ok("clients", "enable", ids["client_id"])
        assert (await api.get("/auth/me")).status_code == 200
        # Disabled now: the retry's fetch is refused, with a clear error.
        admin.ok("clients", "disable", ids["client_id"])
        with pytest.raises(InvalidClient) as raised:
            await api.get("/auth/me")
        assert raised.value.code == "invalid_client"
        assert ids["client_id"] in str(raised.value)
        assert ids["client_secret"] not in str(raised.value)
    assert fetches(transport) == 3 and transport.unauthorized == 3


def test_a_wrong_secret_raises_invalid_client(deployment):
    service, admin = deployment
    ids = new_client(admin)
    with AuthClient.for_client(service.base_url, ids["client_id"], "tgcs_wrong") as api:
        with pytest.raises(InvalidClient):
            api.get("/auth/me")
        assert api.tokens is None


async def test_for_client_with_a_private_key(deployment, tmp_path: Path):
    service, admin = deployment
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "main"}]}))
    ids = new_client(admin, "--scope", "a", "--jwks-file", str(jwks))
    async with AsyncAuthClient.for_client(
        service.base_url, ids["client_id"], private_key=key, key_id="main", scope="a",
        timeout=TIMEOUT,
    ) as api:  # fmt: skip
        r = await api.get("/auth/me")
        assert r.status_code == 200, r.text
        claims = jwt.decode(api.tokens.access_token, options={"verify_signature": False})
        assert claims["client_id"] == ids["client_id"] and claims["scope"] == "a"
    with httpx.Client(base_url=service.base_url) as http:
        assert http.get("/auth/me").status_code == 401
