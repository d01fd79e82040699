"""The files in examples/ run as their docstrings say: the script against the real
service process, the app served by uvicorn and used over HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support import ROOT, SECRET, free_port, start_service, wait_for

EXAMPLES = ROOT / "examples"
PASSWORD = "correct horse"


def run_script(base_url: str, token_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    env.update(TOKENGATE_BASE_URL=base_url, TOKENGATE_USERNAME="alice", TOKENGATE_PASSWORD=PASSWORD)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "stay_logged_in.py"), "--token-file", str(token_file),
         "--times", "2", "--every", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_script_logs_in_keeps_its_tokens_and_logs_in_again(private_redis, tmp_path):
    service = start_service(tmp_path / "service", private_redis.url)
    try:
        r = httpx.post(
            service.base_url + "/auth/register", json={"username": "alice", "password": PASSWORD}
        )
        assert r.status_code == 201
        token_file = tmp_path / "tokens.json"

        # The README's client example, saved to a file as it stands, runs.
        readme = (ROOT / "README.md").read_text()
        (example,) = [
            block
            for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
            if "AsyncAuthClient(base_url=" in block
        ]
        script = tmp_path / "readme_example.py"
        script.write_text(example.replace("http://127.0.0.1:8000", service.base_url))
        r = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        assert "'username': 'alice'" in r.stdout

        # First run: no tokens, so it logs in through its credentials and keeps the pair.
        first = run_script(service.base_url, token_file)
        assert first.returncode == 0, first.stderr
        lines = first.stdout.splitlines()
        assert len(lines) == 2 and all(line.startswith("signed in as alice") for line in lines)
        session = lines[0].rsplit("session ", 1)[1].rstrip(")")
        assert lines[1].endswith(f"(session {session})")
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"

        # A later run goes on with the same session, read from the file.
        again = run_script(service.base_url, token_file)
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines()[0].endswith(f"(session {session})")

        # The session is ended behind its back: the next run logs in again by itself.
        pair = httpx.post(
            service.base_url + "/auth/login", json={"username": "alice", "password": PASSWORD}
        ).json()
        r = httpx.post(
            service.base_url + "/auth/logout-all",
            headers={"Authorization": f"Bearer {pair['access_token']}"},
        )
        assert r.status_code == 204
        third = run_script(service.base_url, token_file)
        assert third.returncode == 0, third.stderr
        new_session = third.stdout.splitlines()[0].rsplit("session ", 1)[1].rstrip(")")
        assert new_session not in (session, pair["session_id"])
    finally:
        service.stop()


def test_the_app_that_embeds_the_extension(private_redis, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    # The embedded SQLite default, empty: the extension migrates it itself.
    env.update(
        TOKENGATE_SECRET_KEY=SECRET,
        TOKENGATE_REDIS_URL=private_redis.url,
        TOKENGATE_INSTANCE_DIR=str(tmp_path / "instance"),
    )
    log = tmp_path / "app.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "notes_app:app", "--port", str(port)],
            cwd=EXAMPLES, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, log.read_text()  # it exited: say why at once
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        try:
            wait_for(answers, timeout=120, interval=0.05, what="the notes app's /healthz")
        except TimeoutError as exc:
            raise AssertionError(log.read_text()) from exc
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/").json()["app"] == "notes"
            r = http.get("/notes")
            assert r.status_code == 401 and r.json()["error"] == "missing_token"
            http.post("/auth/register", json={"username": "alice", "password": PASSWORD})
            pair = http.post("/auth/login", json={"username": "alice", "password": PASSWORD}).json()
            auth = {"Authorization": f"Bearer {pair['access_token']}"}
            r = http.post("/notes", json={"text": "buy milk"}, headers=auth)
            assert r.status_code == 201
            assert http.get("/notes", headers=auth).json() == {
                "owner": "alice",
                "notes": ["buy milk"],
            }
            assert http.post("/notes", json={}, headers=auth).status_code == 400
            http.post("/auth/logout", headers=auth)
            assert http.get("/notes", headers=auth).json()["error"] == "token_revoked"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    assert (tmp_path / "instance" / "tokengate.db").is_file()
