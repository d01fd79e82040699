"""Two service processes on one database and one Redis, with no TOKENGATE_SECRET_KEY:
started together, they sign and verify alike with nothing copied between them."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import jwt

from tests.e2e.session_helpers import TIMEOUT, login, me, new_name, refresh, register
from tests.support import PrivateRedis, ServiceProcess, service_env


def start_together(services: list[ServiceProcess]) -> None:
    errors: list[BaseException] = []

    def start(service: ServiceProcess) -> None:
        try:
            service.start()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_instances_without_a_secret_key_accept_each_others_tokens(
    private_redis: PrivateRedis, tmp_path: Path
):
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    redis_url = f"redis://127.0.0.1:{private_redis.port}/0"
    services = []
    for name in ("a", "b"):
        env = service_env(tmp_path / name, redis_url, database_url=database)
        del env["TOKENGATE_SECRET_KEY"]
        services.append(ServiceProcess(env, tmp_path / name))
    try:
        start_together(services)
        a, b = (httpx.Client(base_url=s.base_url, timeout=TIMEOUT) for s in services)
        with a, b:
            user = new_name()
            register(a, user)
            pair = login(a, user)
            assert me(b, pair) == 200

            renewed = refresh(b, pair["refresh_token"])
            assert isinstance(renewed, dict)
            assert me(a, renewed) == 200
            kid_a = jwt.get_unverified_header(pair["access_token"])["kid"]
            kid_b = jwt.get_unverified_header(renewed["access_token"])["kid"]
            assert kid_a == kid_b

            assert (
                b.post(
                    "/auth/logout", headers={"Authorization": "Bearer " + renewed["access_token"]}
                ).status_code
                == 204
            )
            assert me(a, renewed) == "token_revoked"
    finally:
        for service in services:
            service.stop()
