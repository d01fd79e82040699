"""``tokengate-client login --device`` against the real service process, as a real command.

The command prints the address and the code and waits; the test confirms the
code as a person would, through the confirmation page's routes over HTTP
(log in on /account/login, then POST /account/device/approve with the CSRF
header); the command stores the tokens and exits 0. Ctrl-C (a real SIGINT)
ends the wait with a line and no traceback.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
from playwright.sync_api import expect

from quart_tokengate.client import FileTokenStore
from tests.support import ROOT, PrivateRedis, ServiceProcess, start_service

from .session_helpers import PASSWORD, new_user
from .test_account_page import AccountPage, browser, contexts

__all__ = ["browser", "contexts"]  # fixtures, used by name

CODE_LINE = re.compile(r"^\s+([BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4})\s*$")
WAIT = 30


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    redis = PrivateRedis()
    redis.start()
    # One second between polls: the command's wait after the approval stays short.
    started = start_service(
        tmp_path_factory.mktemp("device-cli"), redis.url, device_poll_interval=1
    )
    yield started
    started.stop()
    redis.stop()


class Command:
    """``python -m quart_tokengate.client login --device`` running, its output read by lines."""

    def __init__(self, base_url: str, config: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
        env["XDG_CONFIG_HOME"] = str(config)
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quart_tokengate.client", "login", "--device",
             "--base-url", base_url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def code(self) -> str:
        """The user code, once the command has printed it."""
        while True:
            line = self.lines.get(timeout=WAIT)
            assert line is not None, (self.seen, self.process.stderr)
            self.seen.append(line)
            found = CODE_LINE.match(line)
            if found:
                return found.group(1)

    def line_with(self, text: str) -> str:
        """The next line the command prints that contains ``text``."""
        while True:
            line = self.lines.get(timeout=WAIT)
            assert line is not None, (self.seen, text)
            self.seen.append(line)
            if text in line:
                return line

    def finish(self) -> tuple[int, str, str]:
        # Standard output belongs to the reader thread; standard error is a line or two.
        self.process.wait(timeout=WAIT)
        assert self.process.stderr is not None
        err = self.process.stderr.read()
        rest: list[str] = []
        while (line := self.lines.get(timeout=WAIT)) is not None:
            rest.append(line)
        return self.process.returncode, "".join(self.seen + rest), err


def approve_on_the_page(base_url: str, username: str, code: str) -> None:
    """What a person does in the browser, over HTTP: log in, approve the code."""
    with httpx.Client(base_url=base_url) as page:
        r = page.post("/account/login", json={"username": username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        csrf = {"X-CSRF-Token": page.cookies["account_csrf"]}
        r = page.post("/account/device/lookup", json={"user_code": code}, headers=csrf)
        assert r.status_code == 200, r.text
        assert r.json()["device"].startswith("tokengate-client on ")
        r = page.post("/account/device/approve", json={"user_code": code}, headers=csrf)
        assert r.status_code == 200 and r.json()["status"] == "approved", r.text


def test_login_device_prints_the_code_waits_and_stores_the_tokens(service, tmp_path):
    name = new_user(service.base_url)
    command = Command(service.base_url, tmp_path)
    code = command.code()
    assert any(f"{service.base_url}/account/device" in line for line in command.seen)
    approve_on_the_page(service.base_url, name, code)
    status, out, err = command.finish()
    assert status == 0, (out, err)
    assert f"logged in as {name}" in out
    assert "Traceback" not in err

    tokens = FileTokenStore(tmp_path / "tokengate" / "tokens.json").load()
    assert tokens is not None and tokens.access_token not in out + err
    r = httpx.get(
        service.base_url + "/auth/sessions",
        headers={"Authorization": f"Bearer {tokens.access_token}"},
    )
    current = [s for s in r.json()["sessions"] if s["current"]]
    assert current[0]["device"].endswith("(device login)")
    # The stored session works for the other commands.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "quart_tokengate.client", "status"], capture_output=True,
        text=True, cwd=ROOT, env={**env, "XDG_CONFIG_HOME": str(tmp_path)}, timeout=WAIT,
    )  # fmt: skip
    assert done.returncode == 0 and f"logged in as {name}" in done.stdout, done.stderr


def test_ctrl_c_while_waiting_exits_cleanly(service, tmp_path):
    command = Command(service.base_url, tmp_path)
    command.code()
    command.process.send_signal(signal.SIGINT)
    status, out, err = command.finish()
    assert status == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "tokengate" / "tokens.json").exists()


def test_the_whole_loop_command_browser_command(service, tmp_path, contexts):
    """The real command waits; a real browser opens the complete address and approves."""
    name = new_user(service.base_url)
    command = Command(service.base_url, tmp_path)
    code = command.code()
    complete = command.line_with("?user_code=").split()[-1]
    assert complete.endswith(f"?user_code={code}")

    tab = AccountPage(contexts(), service.base_url)
    tab.page.goto(complete)
    tab.page.fill("#username", name)
    tab.page.fill("#password", PASSWORD)
    tab.page.click("#login-form button[type=submit]")
    expect(tab.page.locator("#req-code")).to_have_text(code)
    expect(tab.page.locator("#req-agent")).to_contain_text("python-httpx")
    tab.page.click("#approve")
    expect(tab.page.locator("#done")).to_contain_text("You can close this page")

    status, out, err = command.finish()
    assert status == 0, (out, err)
    assert f"logged in as {name}" in out
    assert FileTokenStore(tmp_path / "tokengate" / "tokens.json").load() is not None
    assert tab.errors == []
