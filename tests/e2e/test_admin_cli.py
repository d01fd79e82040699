"""Account administration: the real ``tokengate`` command line, in a subprocess,
against the running service's database (SQLite and PostgreSQL) and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import SECRET, PrivateRedis, ServiceProcess

from .session_helpers import login, login_attempt, me, register


class Admin:
    """Runs ``python -m quart_tokengate.service ...`` with the service's settings."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
        env.update(self.env)
        return subprocess.run(
            [sys.executable, "-m", "quart_tokengate.service", *args],
            cwd=self.workdir,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        r = self(*args, stdin=stdin)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))


@pytest.fixture
def deployment(
    database_url: str, private_redis: PrivateRedis, tmp_path: Path
) -> Iterator[tuple[ServiceProcess, Admin]]:
    """The service on the test database and a private Redis, and the command line on the same."""
    env = {
        "TOKENGATE_SECRET_KEY": SECRET,
        "TOKENGATE_REDIS_URL": private_redis.url,
        "TOKENGATE_DATABASE_URL": database_url,
        "TOKENGATE_INSTANCE_DIR": str(tmp_path / "instance"),
    }
    service = ServiceProcess(env, tmp_path / "service")
    service.start()
    try:
        yield service, Admin(env, tmp_path)
    finally:
        service.stop()


def test_sessions_list_and_end(deployment):
    service, admin = deployment
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        register(http, "alice")
        first = login(http, "alice")
        second = login(http, "alice", device="laptop")
        sessions = admin.json("sessions", "list", "alice")
        assert {s["id"] for s in sessions} == {first["session_id"], second["session_id"]}
        assert {s["device"] for s in sessions} == {None, "laptop"}
        # The one ended is refused at once; the other lives.
        assert "ended session" in admin.ok("sessions", "end", first["session_id"])
        assert me(http, first) == "token_revoked"
        assert me(http, second) == 200
        assert "already ended" in admin.ok("sessions", "end", first["session_id"])
        r = admin("sessions", "end", "no-such-session-id")
        assert r.returncode == 1 and r.stderr.strip() == (
            "tokengate: no such session: no-such-session-id"
        )


def test_users_list_grant_and_ungrant(deployment):
    service, admin = deployment
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        register(http, "alice")
        register(http, "bob")
        login(http, "alice")
        login(http, "alice")
        out = admin.ok("users", "list")
        assert "alice" in out and "bob" in out and "argon2" not in out
        assert "read write" in admin.ok("users", "grant", "alice", "read", "write", "read")
        assert "write" not in admin.ok("users", "ungrant", "alice", "write")
        listed = {u["username"]: u for u in admin.json("users", "list")}
        assert listed["alice"]["scopes"] == ["read"] and listed["bob"]["scopes"] == []
        assert listed["alice"]["live_sessions"] == 2 and listed["bob"]["live_sessions"] == 0
        assert listed["alice"]["disabled"] is False
        r = admin("users", "grant", "alice", 'bad"scope')
        assert r.returncode == 1 and "not a valid scope" in r.stderr


def test_disable_ends_every_session_and_refuses_logins(deployment):
    service, admin = deployment
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        register(http, "alice")
        register(http, "bob")
        pairs = [login(http, "alice") for _ in range(2)]
        bob = login(http, "bob")
        assert "disabled alice" in admin.ok("users", "disable", "alice")
        for pair in pairs:
            assert me(http, pair) == "token_revoked"
        r = http.post("/auth/refresh", json={"refresh_token": pairs[0]["refresh_token"]})
        assert r.status_code == 401
        # The right password no longer logs in, with the answer of a wrong one.
        r = login_attempt(http, "alice")
        wrong = login_attempt(http, "alice", "wrong password")
        assert r.status_code == 401 and r.json() == wrong.json()
        listed = {u["username"]: u for u in admin.json("users", "list")}
        assert listed["alice"]["disabled"] is True and listed["alice"]["live_sessions"] == 0
        assert me(http, bob) == 200
        admin.ok("users", "enable", "alice")
        assert login_attempt(http, "alice").status_code == 200
        r = admin("users", "disable", "nobody")
        assert r.returncode == 1 and r.stderr.strip() == "tokengate: no such user: nobody"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_set_password_ends_every_session(deployment):
    service, admin = deployment
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        register(http, "carol")
        pairs = [login(http, "carol") for _ in range(2)]
        r = admin("users", "set-password", "carol", "--password-stdin", stdin="short\n")
        assert r.returncode == 1 and "at least 8" in r.stderr
        assert me(http, pairs[0]) == 200
        out = admin.ok("users", "set-password", "carol", "--password-stdin", stdin="new horse 42\n")
        assert "new horse" not in out
        for pair in pairs:
            assert me(http, pair) == "token_revoked"
        assert login_attempt(http, "carol").status_code == 401
        assert login_attempt(http, "carol", "new horse 42").status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unlock_clears_the_login_throttle(database_url, private_redis, tmp_path):
    env = {
        "TOKENGATE_SECRET_KEY": SECRET,
        "TOKENGATE_REDIS_URL": private_redis.url,
        "TOKENGATE_DATABASE_URL": database_url,
        "TOKENGATE_INSTANCE_DIR": str(tmp_path / "instance"),
        "TOKENGATE_LOGIN_MAX_FAILURES": "2",
    }
    service = ServiceProcess(env, tmp_path / "service")
    service.start()
    admin = Admin(env, tmp_path)
    try:
        with httpx.Client(base_url=service.base_url, timeout=30) as http:
            register(http, "dave")
            for _ in range(2):
                assert login_attempt(http, "dave", "wrong password").status_code == 401
            locked = login_attempt(http, "dave")
            assert locked.status_code == 429 and "Retry-After" in locked.headers
            assert "unlocked dave" in admin.ok("users", "unlock", "dave")
            assert login_attempt(http, "dave").status_code == 200
    finally:
        service.stop()
