"""``python -m client login | request | logout`` against the real service."""

from __future__ import annotations

import getpass
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from quart_tokengate.client import FileTokenStore
from quart_tokengate.client.__main__ import main
from tests.support import ROOT, PrivateRedis, ServiceProcess

from .session_helpers import PASSWORD, new_user
from .test_client_concurrency import expired, start_service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    redis = PrivateRedis()
    redis.start()
    started = start_service(tmp_path_factory.mktemp("client-cli"), redis.url)
    yield started
    started.stop()
    redis.stop()


def cli(*args: str, config: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    env["XDG_CONFIG_HOME"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "quart_tokengate.client", *args],
        input=stdin, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip


def test_login_then_request_with_the_token_file_in_the_config_dir(service, tmp_path):
    name = new_user(service.base_url)
    done = cli(
        "login", "--base-url", service.base_url, "--username", name, "--password-stdin",
        config=tmp_path, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"logged in as {name}" in done.stdout

    path = tmp_path / "tokengate" / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["base_url"] == service.base_url
    tokens = FileTokenStore(path).load()
    assert tokens is not None
    assert tokens.access_token not in done.stdout + done.stderr

    done = cli("request", "GET", "/auth/me", config=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["username"] == name

    # An expired access token is refreshed on the way, and the file keeps the new pair.
    FileTokenStore(path).save(expired(tokens))
    body = json.dumps({"current_password": PASSWORD, "new_password": PASSWORD})
    done = cli("request", "POST", "/auth/password", "--json", body, config=tmp_path)
    assert done.returncode == 0, done.stderr
    refreshed = FileTokenStore(path).load()
    assert refreshed is not None and refreshed.refresh_token != tokens.refresh_token

    done = cli("logout", config=tmp_path)
    assert done.returncode == 0 and FileTokenStore(path).load() is None
    done = cli("request", "GET", "/auth/me", config=tmp_path)
    assert done.returncode == 3, done
    assert done.stdout == ""
    assert done.stderr == "tokengate-client: not logged in: run `tokengate-client login`\n"


def test_a_wrong_password_and_no_login_fail_with_a_message(service, tmp_path):
    name = new_user(service.base_url)
    done = cli(
        "login", "--base-url", service.base_url, "--username", name, "--password-stdin",
        config=tmp_path, stdin="wrong password\n",
    )  # fmt: skip
    assert done.returncode == 1 and "username or password is wrong" in done.stderr
    done = cli("request", "GET", "/auth/me", config=tmp_path / "empty")
    assert done.returncode == 3 and "not logged in: run `tokengate-client login`" in done.stderr


def test_token_file_option_and_password_prompt(service, tmp_path, monkeypatch, capsys):
    name = new_user(service.base_url)
    path = tmp_path / "elsewhere.json"
    monkeypatch.setattr(getpass, "getpass", lambda prompt: PASSWORD)
    argv = ["login", "--token-file", str(path), "--base-url", service.base_url, "--username", name]
    assert main(argv) == 0
    assert FileTokenStore(path).base_url == service.base_url
    assert main(["request", "--token-file", str(path), "GET", "/auth/sessions"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["sessions"][0]["current"] is True


def login_cli(service: ServiceProcess, config: Path, *extra: str) -> tuple[str, Any]:
    name = new_user(service.base_url)
    done = cli(
        "login", "--base-url", service.base_url, "--username", name, "--password-stdin",
        *extra, config=config, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return name, done


def test_status_says_who_until_when_and_where_in_text_and_json(service, tmp_path):
    name, done = login_cli(service, tmp_path, "--json")
    logged_in = json.loads(done.stdout)
    assert logged_in["username"] == name and logged_in["server"] == service.base_url

    done = cli("status", config=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"logged in as {name} (user " in done.stdout
    assert f"on {service.base_url}" in done.stdout
    assert "refreshable until 20" in done.stdout and "access token valid until 20" in done.stdout

    done = cli("status", "--json", config=tmp_path)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    tokens = FileTokenStore(tmp_path / "tokengate" / "tokens.json").load()
    assert tokens is not None
    assert status["logged_in"] is True and status["username"] == name
    assert status["server"] == service.base_url and status["session_id"] == tokens.session_id
    assert status["refresh_expires_at"] > status["access_expires_at"]
    assert status["access_expires_at"].endswith("Z")
    assert tokens.access_token not in done.stdout and tokens.refresh_token not in done.stdout

    # The session ended on the server: status asks it, and says so.
    r = httpx.post(
        service.base_url + "/auth/logout-all",
        headers={"Authorization": f"Bearer {tokens.access_token}"},
    )
    assert r.status_code == 204
    done = cli("status", "--json", config=tmp_path)
    assert done.returncode == 3
    assert json.loads(done.stdout) == {
        "logged_in": False, "server": service.base_url, "reason": "token_revoked",
    }  # fmt: skip
    assert "not logged in: run `tokengate-client login` (the session ended" in done.stderr
    done = cli("status", config=tmp_path)
    assert done.returncode == 3 and done.stdout == ""


def test_a_closed_output_pipe_ends_quietly(service, tmp_path):
    login_cli(service, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    # The reader is gone before the first byte is written, as with `| head -1`
    # once head has its line: every write fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "quart_tokengate.client", "request", "GET", "/auth/sessions"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""
