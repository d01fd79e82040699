"""API keys as programs use them: made by the operator's command line, sent by the real
clients (``AsyncAuthClient``, ``AuthClient``, ``tokengate-client``) to the real service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from quart_tokengate.client import AsyncAuthClient, AuthClient, LoginRequired, RateLimited
from tests.support import ROOT, SECRET, PrivateRedis, ServiceProcess

from .session_helpers import register
from .test_admin_cli import Admin

KEY = re.compile(r"^tgk_[0-9A-Za-z]{38}$")


@pytest.fixture
def deployment(
    private_redis: PrivateRedis, tmp_path: Path
) -> Iterator[tuple[ServiceProcess, Admin]]:
    env = {
        "TOKENGATE_SECRET_KEY": SECRET,
        "TOKENGATE_REDIS_URL": private_redis.url,
        "TOKENGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'tokengate.db'}",
        "TOKENGATE_INSTANCE_DIR": str(tmp_path / "instance"),
        "TOKENGATE_RATE_LIMIT": "3/1",
    }
    service = ServiceProcess(env, tmp_path / "service")
    service.start()
    try:
        yield service, Admin(env, tmp_path)
    finally:
        service.stop()


def client_cli(*args: str, key: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    env.update(XDG_CONFIG_HOME=str(home), TOKENGATE_API_KEY=key)
    return subprocess.run(
        [sys.executable, "-m", "quart_tokengate.client", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip


async def test_an_operators_key_works_in_every_client_until_revoked(deployment, tmp_path):
    service, admin = deployment
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        register(http, "robot")
    made = admin("api-keys", "create", "robot", "--name", "nightly", "--expires-in", "3600")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert KEY.match(key), "the key alone on standard output"
    assert key not in made.stderr and "shown this once" in made.stderr
    listed = admin.json("api-keys", "list", "robot")
    assert [(k["name"], k["revoked_at"]) for k in listed] == [("nightly", None)]

    async with AsyncAuthClient(base_url=service.base_url, api_key=key) as api:
        r = await api.get("/auth/me")
        assert r.status_code == 200 and r.json()["api_key_id"] == listed[0]["id"]
    with AuthClient(base_url=service.base_url, api_key=key) as api:
        assert api.get("/auth/me").json()["username"] == "robot"
    done = client_cli(
        "request", "GET", "/auth/me", "--base-url", service.base_url, key=key, home=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert '"username": "robot"' in done.stdout

    assert f"revoked API key {listed[0]['id']}" in admin.ok("api-keys", "revoke", listed[0]["id"])
    async with AsyncAuthClient(base_url=service.base_url, api_key=key) as api:
        with pytest.raises(LoginRequired) as refused:
            await api.get("/auth/me")
        assert refused.value.code == "token_revoked"
    done = client_cli(
        "request", "GET", "/auth/me", "--base-url", service.base_url, key=key, home=tmp_path
    )
    assert done.returncode == 3 and "token_revoked" in done.stderr
    assert admin.json("api-keys", "list", "robot")[0]["revoked_why"] == "revoked"
    r = admin("api-keys", "revoke", "nosuchkeyatall00")
    assert r.returncode == 1 and r.stderr.strip() == "tokengate: No such API key."
    r = admin("api-keys", "create", "robot", "--name", "x", "--scope", "admin")
    assert r.returncode == 1 and r.stdout == ""


def test_the_client_waits_out_a_short_rate_limit_or_raises(deployment):
    service, admin = deployment
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        register(http, "robot")
    key = admin.ok("api-keys", "create", "robot", "--name", "busy").strip()
    with AuthClient(base_url=service.base_url, api_key=key) as api:
        with pytest.raises(RateLimited) as limited:
            for _ in range(4):
                assert api.get("/auth/me").status_code == 200
        assert limited.value.code == "rate_limited" and limited.value.retry_after == 1
    # A client that may wait a second does, and the request goes through.
    with AuthClient(base_url=service.base_url, api_key=key, rate_limit_wait=1) as api:
        for _ in range(4):
            assert api.get("/auth/me").status_code == 200
