"""The command line: serve on the embedded defaults, db upgrade, users create, bad settings."""

import json
import os
import sqlite3
import subprocess
import sys

import httpx
import jwt

from tests.support import ServiceProcess


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    env.update(extra)
    return env


def run(args, cwd, stdin=None, **env):
    return subprocess.run(
        [sys.executable, "-m", "quart_tokengate.service", *args],
        cwd=cwd,
        env=clean_env(**env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_on_embedded_defaults_answers_healthz(tmp_path):
    """What `make run` does on a fresh machine: no Redis, no database configured."""
    service = ServiceProcess({}, tmp_path)
    # Start-up time is no promise of the product: wait for /healthz, generously,
    # and fail with the service's log if it never answers.
    service.start(timeout=120)
    try:
        r = httpx.get(service.base_url + "/healthz")
        assert r.json() == {
            "status": "ok",
            "database": "ok",
            "redis": "ok",
            "schema": "ok",
        }
        instance = tmp_path / "instance"
        assert (instance / "tokengate.db").is_file()
        assert (instance / "redis" / "redis.sock").exists()
        # The signing key is made once and kept in the database, shared by
        # every instance on it; no key file, and the key is never logged.
        assert not (instance / "secret.key").exists()
        with sqlite3.connect(instance / "tokengate.db") as db:
            rows = db.execute("SELECT kid, algorithm, secret FROM signing_keys").fetchall()
        [(kid, algorithm, secret)] = rows
        assert algorithm == "HS256" and len(secret) >= 32
        assert secret not in service.log.read_text()
        httpx.post(
            service.base_url + "/auth/register",
            json={"username": "alice", "password": "correct horse"},
        )
        pair = httpx.post(
            service.base_url + "/auth/login",
            json={"username": "alice", "password": "correct horse"},
        ).json()
        assert jwt.get_unverified_header(pair["access_token"])["kid"] == kid
    finally:
        service.stop()
    assert not (tmp_path / "instance" / "redis" / "redis.sock").exists()


def test_db_upgrade_and_users_create(tmp_path):
    r = run(["db", "upgrade"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "instance" / "tokengate.db").is_file()
    r = run(["users", "create", "alice", "--password-stdin"], tmp_path, stdin="correct horse\n")
    assert r.returncode == 0, r.stderr
    assert "alice" in r.stdout and "correct horse" not in r.stdout + r.stderr
    r = run(["users", "create", "alice", "--password-stdin"], tmp_path, stdin="correct horse\n")
    assert r.returncode == 1 and "taken" in r.stderr
    service = ServiceProcess({}, tmp_path)
    service.start(timeout=120)
    try:
        login = httpx.post(
            service.base_url + "/auth/login",
            json={"username": "alice", "password": "correct horse"},
        )
        assert login.status_code == 200
    finally:
        service.stop()


def test_users_create_applies_the_one_username_definition(tmp_path):
    assert run(["db", "upgrade"], tmp_path).returncode == 0

    def create(name: str) -> subprocess.CompletedProcess[str]:
        return run(["users", "create", name, "--password-stdin"], tmp_path, stdin="pw-123456\n")

    r = create("\uff21lice")  # full-width capital A: kept as plain, lower-case alice
    assert r.returncode == 0, r.stderr
    assert "created user alice " in r.stdout
    for look_alike in ("\u0430lice", "ALICE", "alice"):  # Cyrillic a, another case
        r = create(look_alike)
        assert r.returncode == 1 and "taken" in r.stderr, look_alike
    for bad in ("a\u200dlice", "a b"):
        r = create(bad)
        assert r.returncode == 1 and "username" in r.stderr and "Traceback" not in r.stderr, bad
    r = run(["users", "list", "--json"], tmp_path)
    assert [user["username"] for user in json.loads(r.stdout)] == ["alice"]


def test_bad_settings_stop_start_up_with_one_line_each(tmp_path):
    r = run(
        ["serve"],
        tmp_path,
        TOKENGATE_ACCESS_TTL="soon",
        TOKENGATE_SECRET_KEY="short",
        TOKENGATE_TOKEN_LOCATION="url",
        TOKENGATE_COOKIE_SAMESITE="None",
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 4, r.stderr
    for name in [
        "TOKENGATE_ACCESS_TTL", "TOKENGATE_SECRET_KEY", "TOKENGATE_TOKEN_LOCATION",
        "TOKENGATE_COOKIE_SAMESITE",
    ]:  # fmt: skip
        assert sum(name in line for line in lines) == 1
    assert "Traceback" not in r.stderr and "short" not in r.stderr.replace("shorter", "")


def redis_servers_on(socket_path):
    """Running redis-server processes whose command line names ``socket_path``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = fh.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        # redis-server retitles itself "redis-server unixsocket:<path>".
        if "redis-server" in args[0] and str(socket_path) in " ".join(args):
            found.append(int(entry))
    return found


def test_workers_share_one_embedded_redis(tmp_path):
    service = ServiceProcess({}, tmp_path, workers=2)
    service.start(timeout=30)
    try:
        sock = (tmp_path / "instance" / "redis" / "redis.sock").resolve()
        assert len(redis_servers_on(sock)) == 1
        with httpx.Client(base_url=service.base_url, headers={"Connection": "close"}) as http:
            r = http.post("/auth/register", json={"username": "alice", "password": "correct horse"})
            assert r.status_code == 201
            pair = http.post(
                "/auth/login", json={"username": "alice", "password": "correct horse"}
            ).json()
            auth = {"Authorization": f"Bearer {pair['access_token']}"}
            assert [http.get("/auth/me", headers=auth).status_code for _ in range(10)] == [200] * 10
        assert len(redis_servers_on(sock)) == 1
    finally:
        service.stop()
    assert redis_servers_on(sock) == []
