"""The real service process, over HTTP, for end-to-end tests.

``service_factory(**settings)`` starts ``python -m service serve`` on a free
port with a fresh SQLite database, the test Redis (its own database number,
flushed first) and the given ``TOKENGATE_*`` settings (lower-case names,
e.g. ``access_ttl=2``); every process is stopped at the end of the test.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.support import RedisServer, ServiceProcess, service_env

_db_numbers = itertools.cycle(range(1, 16))

ServiceFactory = Callable[..., ServiceProcess]


def _with_db(url: str, number: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{number}"))


@pytest.fixture
def service_factory(redis_url: str, tmp_path: Path) -> Iterator[ServiceFactory]:
    started: list[ServiceProcess] = []

    def start(workers: int = 1, **settings: Any) -> ServiceProcess:
        url = _with_db(redis_url, next(_db_numbers))
        redis.Redis.from_url(url).flushdb()
        workdir = tmp_path / f"service{len(started)}"
        env = service_env(workdir, url, **settings)
        service = ServiceProcess(env, workdir, workers=workers)
        started.append(service)
        service.start()
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    """A private redis-server for the services a module's tests share."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def service(service_factory: ServiceFactory) -> ServiceProcess:
    """The service on its defaults (but a fixed key and the test Redis)."""
    return service_factory()
