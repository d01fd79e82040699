"""The real service process, over HTTP, for end-to-end tests.

``service_factory(**settings)`` starts ``python -m quart_tokengate.service serve``
on a free port with a fresh SQLite database, a redis-server private to the
test (each service its own database number on it) and the given
``TOKENGATE_*`` settings (lower-case names, e.g. ``access_ttl=2``); every
process is stopped at the end of the test. Never the shared Redis: a test
elsewhere may be using any other database number of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import PrivateRedis, ServiceProcess, service_env

ServiceFactory = Callable[..., ServiceProcess]


@pytest.fixture
def service_factory(private_redis: PrivateRedis, tmp_path: Path) -> Iterator[ServiceFactory]:
    started: list[ServiceProcess] = []

    def start(workers: int = 1, file_limit: int | None = None, **settings: Any) -> ServiceProcess:
        url = f"redis://127.0.0.1:{private_redis.port}/{len(started)}"
        workdir = tmp_path / f"service{len(started)}"
        env = service_env(workdir, url, **settings)
        service = ServiceProcess(env, workdir, workers=workers, file_limit=file_limit)
        started.append(service)
        service.start()
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def module_redis() -> Iterator[PrivateRedis]:
    """A private redis-server for the services a module's tests share."""
    server = PrivateRedis()
    server.start()
    yield server
    server.close()


@pytest.fixture
def service(service_factory: ServiceFactory) -> ServiceProcess:
    """The service on its defaults (but a fixed key and the test Redis)."""
    return service_factory()
