"""API keys across real service processes sharing one Redis and one database.

Instances A (one worker) and B (two workers) run with near checks on
(``TOKENGATE_NEAR_CACHE=true``), a rate limit, and no ``TOKENGATE_SECRET_KEY``:
the digest secret is made by whichever needs it first and kept in the
database, and the other digests alike. A key revoked on A is refused by B on
the very next request (key checks never answer near); N requests of 3N pass
across both; Redis down is a 503 within a second, and a key cannot be half made.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import PrivateRedis, ServiceProcess, assert_unavailable, service_env, wait_for

from .session_helpers import TIMEOUT, bearer, login, new_name, register

ROUNDS = 10
LIMIT = 10


@pytest.fixture
def ab(
    private_redis: PrivateRedis, sqlite_template: Path, tmp_path: Path
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    database = tmp_path / "shared.db"
    shutil.copy(sqlite_template, database)
    started: list[ServiceProcess] = []
    try:
        for name, workers in (("a", 1), ("b", 2)):
            workdir = tmp_path / name
            env = service_env(
                workdir, private_redis.url, near_cache="true", rate_limit=f"{LIMIT}/3600",
                database_url=f"sqlite+aiosqlite:///{database}",
            )  # fmt: skip
            del env["TOKENGATE_SECRET_KEY"]  # the digest secret and signing keys live in SQL
            service = ServiceProcess(env, workdir, workers=workers)
            started.append(service)
            service.start()
        a, b = started
        with (
            httpx.Client(base_url=a.base_url, timeout=TIMEOUT) as http_a,
            httpx.Client(base_url=b.base_url, timeout=TIMEOUT) as http_b,
        ):
            yield http_a, http_b
    finally:
        for service in started:
            service.stop()


def new_key(http: httpx.Client, pair: dict, name: str = "ci") -> dict:
    r = http.post("/auth/api-keys", json={"name": name}, headers=bearer(pair))
    assert r.status_code == 201, r.text
    return r.json()


def status(http: httpx.Client, key: str) -> int | str:
    r = http.get("/auth/me", headers={"Authorization": f"Bearer {key}"})
    return r.status_code if r.status_code == 200 else str(r.json()["error"])


def test_a_key_revoked_on_one_is_refused_by_the_other_on_the_very_next_request(ab):
    a, b = ab
    name = new_name()
    register(a, name)
    pair = login(a, name)
    for round_ in range(ROUNDS):
        made = new_key(a, pair, f"key {round_}")
        # Made on A, known to every worker of B (and its near checks warmed).
        assert [status(b, made["key"]) for _ in range(4)] == [200] * 4
        assert status(b, pair["access_token"]) == 200
        r = a.delete(f"/auth/api-keys/{made['id']}", headers=bearer(pair))
        assert r.status_code == 204
        assert status(b, made["key"]) == "token_revoked", f"round {round_}"
        assert status(a, made["key"]) == "token_revoked"


def test_leaked_keys_reported_to_one_are_refused_by_the_other(ab):
    a, b = ab
    name = new_name()
    register(a, name)
    pair = login(a, name)
    made = new_key(a, pair)
    assert status(b, made["key"]) == 200
    r = b.post("/auth/api-keys/leaked", json={"keys": [made["key"]]})
    assert r.json() == {"revoked": 1}
    # Revoked at once, off the answer's path: listed so on the other instance.
    wait_for(
        lambda: (
            a.get("/auth/api-keys", headers=bearer(pair)).json()["api_keys"][0]["revoked_why"]
            == "leaked"
        ),
        what="the leaked key's revocation",
    )
    assert status(a, made["key"]) == "token_revoked"


def test_exactly_n_of_3n_concurrent_requests_pass_across_instances(ab):
    a, b = ab
    name = new_name()
    register(a, name)
    pair = login(a, name)
    key = new_key(a, pair)["key"]

    async def burst() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            httpx.AsyncClient(base_url=str(a.base_url), timeout=TIMEOUT) as http_a,
            httpx.AsyncClient(base_url=str(b.base_url), timeout=TIMEOUT) as http_b,
        ):
            calls = [
                (http_a if n % 2 else http_b).get("/auth/me", headers=headers)
                for n in range(3 * LIMIT)
            ]
            return await asyncio.gather(*calls)

    answers = asyncio.run(burst())
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * LIMIT + [429] * (2 * LIMIT)
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"] == "rate_limited"
    assert 3500 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["RateLimit-Policy"] == f'"credential";q={LIMIT};w=3600'
    # Another key has its own count; a person's session none at all.
    assert status(b, new_key(a, pair, "other")["key"]) == 200
    assert status(b, pair["access_token"]) == 200


def test_redis_down_is_503_within_a_second_and_no_key_is_half_made(ab, private_redis):
    a, b = ab
    name = new_name()
    register(a, name)
    pair = login(a, name)
    key = new_key(a, pair)["key"]
    assert status(b, key) == 200
    private_redis.stop()
    try:
        for http in (a, b):
            started = time.monotonic()
            r = http.get("/auth/me", headers={"Authorization": f"Bearer {key}"})
            assert_unavailable(r, time.monotonic() - started)
        started = time.monotonic()
        r = a.post("/auth/api-keys", json={"name": "during"}, headers=bearer(pair))
        assert_unavailable(r, time.monotonic() - started)
    finally:
        private_redis.start()
    # Redis came back empty: the key's state is rebuilt from SQL; the one
    # asked for during the outage was never made.
    assert status(b, key) == 200
    listed = a.get("/auth/api-keys", headers=bearer(pair)).json()["api_keys"]
    assert [k["name"] for k in listed] == ["ci"]
