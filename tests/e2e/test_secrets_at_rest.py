"""`tokengate serve` on its embedded defaults: a private instance folder, keys wrapped at rest,
tokens that verify after a restart and after `tokengate keys rewrap` moves them to a new KEK."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from quart_tokengate.service import sealing
from tests.e2e.session_helpers import login, me, register
from tests.support import KEK, ServiceProcess


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "quart_tokengate.service", *args],
        cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def modes(instance: Path) -> dict[str, int]:
    """The permission bits of everything in the instance folder, the folder itself as ``.``."""
    found = {".": stat.S_IMODE(instance.stat().st_mode)}
    for path in instance.rglob("*"):
        found[str(path.relative_to(instance))] = stat.S_IMODE(path.lstat().st_mode)
    return found


@pytest.fixture
def embedded(tmp_path: Path):
    """``tokengate serve`` with every embedded default: SQLite, Redis and KEK in the instance."""
    env = {"TOKENGATE_INSTANCE_DIR": str(tmp_path / "instance"), "TOKENGATE_ALGORITHM": "EdDSA"}
    services: list[ServiceProcess] = []

    def start(**extra: str) -> ServiceProcess:
        service = ServiceProcess({**env, **extra}, tmp_path)
        services.append(service)
        service.start()
        return service

    yield start
    for service in services:
        service.stop()


def test_serve_keeps_its_instance_private_and_tokens_survive_restart_and_rewrap(embedded, tmp_path):
    instance = tmp_path / "instance"
    service = embedded()
    with httpx.Client(base_url=service.base_url, timeout=10) as http:
        register(http, "alice")
        pair = login(http, "alice")
        r = http.post("/auth/password-reset/request", json={"username": "alice"})
        assert r.status_code == 202
        assert me(http, pair) == 200

    # The reset message is written after the answer (a background task): wait for it.
    deadline = time.monotonic() + 10
    while not list((instance / "outbox").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    found = modes(instance)
    for name in (
        "tokengate.db", "tokengate.db-wal", "tokengate.db-shm", sealing.KEK_FILE,
        "redis/redis.pid", "redis/owner.lock", "redis/redis.log",
    ):  # fmt: skip
        assert found.pop(name) == 0o600, name
    outbox = [name for name in found if name.startswith("outbox/")]
    assert outbox and all(found.pop(name) == 0o600 for name in outbox)
    for folder in (".", "redis", "outbox", "prometheus"):
        assert found.pop(folder) == 0o700, folder
    assert found.pop("redis/redis.sock") == 0o700  # redis-server's --unixsocketperm
    # Anything else there (metrics files): nothing for other users either.
    assert all(mode & 0o077 == 0 for mode in found.values()), found
    kek_before = sealing.KeyEncryptionKey.from_text((instance / sealing.KEK_FILE).read_text())

    # A restart: the same key, read with the same KEK file.
    service.stop()
    service = embedded()
    with httpx.Client(base_url=service.base_url, timeout=10) as http:
        assert me(http, pair) == 200

        # Moving to a new KEK while the service runs: it is not disturbed.
        new_kek = secrets.token_urlsafe(32)
        env = {**service.env, "TOKENGATE_KEY_ENCRYPTION_KEY": new_kek}
        r = cli(["keys", "rewrap", "--from-file", str(instance / sealing.KEK_FILE)], env, tmp_path)
        assert r.returncode == 0, r.stderr
        new_id = sealing.KeyEncryptionKey.from_text(new_kek).id
        said = f"wrapped under key-encryption key {new_id} (2 moved"
        assert "2 stored keys (signing keys, the API-key digest secret) " + said in r.stdout
        assert new_kek not in r.stdout + r.stderr
        assert me(http, pair) == 200
    service.stop()

    # Started with the new KEK alone, tokens from before still verify.
    service = embedded(TOKENGATE_KEY_ENCRYPTION_KEY=new_kek)
    with httpx.Client(base_url=service.base_url, timeout=10) as http:
        assert me(http, pair) == 200
        assert me(http, login(http, "alice")) == 200
    service.stop()
    assert new_kek not in service.log.read_text() and "PRIVATE KEY" not in service.log.read_text()

    # The old KEK file alone no longer reads the keys: start-up stops, saying why.
    with pytest.raises(RuntimeError, match=f"wrapped under key-encryption key {new_id}, which"):
        embedded()
    assert kek_before.id in service.log.read_text()


def test_keys_commands_on_a_database_of_its_own_without_a_kek_name_the_setting(tmp_path):
    env = {
        "TOKENGATE_INSTANCE_DIR": str(tmp_path / "instance"),
        "TOKENGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'own.db'}",
    }
    for command in (["keys", "rewrap"], ["keys", "rotate"], ["users", "list"]):
        r = cli(command, env, tmp_path)
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1
        assert r.stderr.startswith("tokengate: TOKENGATE_KEY_ENCRYPTION_KEY: must be set")
    r = cli(["keys", "rewrap"], {**env, "TOKENGATE_KEY_ENCRYPTION_KEY": KEK}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "0 stored keys (signing keys, the API-key digest secret) wrapped" in r.stdout
