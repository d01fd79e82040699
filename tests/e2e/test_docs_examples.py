"""Every Python block of the README and docs/*.md runs as written.

A block is one of four kinds, named by an HTML comment on the line before it
(``<!-- example: KIND ... -->``; no comment means ``script``):

- ``script``: a program for the client. Saved to a file and run with Python
  against the real service process, where user ``alice`` exists (its address
  put for ``http://127.0.0.1:8000``). It must exit 0 with no error printed.
- ``app``: a whole app (``app = Quart(...)``). Saved as ``app.py`` and served by
  plain ``uvicorn app:app`` on the embedded defaults, no other set-up; then
  ``probe=NAME`` says which checks of this module use it over HTTP.
- ``pytest``: a test module for the test kit. Saved beside docs/testing.md's
  ``conftest.py`` (and examples/own_users.py) and run by pytest in a child
  process: every test in it must pass.
- ``fragment: why``: an excerpt that cannot run alone (another service's code,
  a protocol's shape, a piece of an app that runs elsewhere): compiled only,
  and it must say why. They are few, and a test keeps them few.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, PrivateRedis, ServiceProcess, free_port, start_service, wait_for

DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- example: (?P<mark>.*?) -->\n)?```python\n(?P<code>.*?)```", re.DOTALL)
KINDS = ("script", "app", "pytest", "fragment")
# Five excerpts of other services' code, and the two device logins, which wait for a person.
MAX_FRAGMENTS = 7
PASSWORD = "correct horse"
SERVICE_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Example:
    doc: str
    number: int
    mark: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc}#{self.number}"

    @property
    def kind(self) -> str:
        return re.split(r"[\s:]", self.mark, maxsplit=1)[0]

    @property
    def probe(self) -> str | None:
        found = re.search(r"probe=(\w+)", self.mark)
        return found.group(1) if found else None

    @property
    def filename(self) -> str:
        first = self.code.split("\n", 1)[0]
        found = re.fullmatch(r"# (\w+\.py)\b.*", first)
        return (
            found.group(1) if found else f"test_{self.doc.replace('/', '_')[:-3]}_{self.number}.py"
        )


def examples() -> list[Example]:
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for number, match in enumerate(BLOCK.finditer(text), 1):
            found.append(Example(doc, number, match["mark"] or "script", match["code"]))
    return found


EXAMPLES = examples()


def of_kind(kind: str) -> list[pytest.param]:
    return [pytest.param(e, id=e.id) for e in EXAMPLES if e.kind == kind]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


# -- the catalogue -------------------------------------------------------------
def test_every_block_has_a_known_kind_and_fragments_are_few_and_say_why():
    assert len(EXAMPLES) > 15
    for example in EXAMPLES:
        assert example.kind in KINDS, example.id
        if example.kind == "fragment":
            assert len(example.mark) > len("fragment: ") + 20, f"{example.id}: say why"
        if example.kind == "app":
            assert example.probe in PROBES, f"{example.id}: probe={example.probe} is not known"
        # A block that makes an app, or holds tests, is run as one: a script would only
        # define it and exit.
        if re.search(r"^app = Quart\(", example.code, re.MULTILINE):
            assert example.kind in ("app", "fragment"), f"{example.id} is an app"
        if re.search(r"^(async )?def test_", example.code, re.MULTILINE):
            assert example.kind in ("pytest", "fragment"), f"{example.id} holds tests"
    fragments = [e.id for e in EXAMPLES if e.kind == "fragment"]
    assert len(fragments) <= MAX_FRAGMENTS, fragments


@pytest.mark.parametrize("example", of_kind("fragment"))
def test_a_fragment_compiles(example):
    compile(example.code, example.id, "exec")


# -- scripts against the real service -------------------------------------------
@pytest.fixture(scope="module")
def service(module_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory):
    # docs/dpop.md's resource server introspects as this client.
    running = start_service(
        tmp_path_factory.mktemp("service"), module_redis.url,
        introspection_clients="reports:reports-secret",
    )  # fmt: skip
    try:
        r = httpx.post(
            running.base_url + "/auth/register", json={"username": "alice", "password": PASSWORD}
        )
        assert r.status_code == 201
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("example", of_kind("script"))
def test_a_script_runs(example, service: ServiceProcess, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(example.code.replace(SERVICE_URL, service.base_url))
    env = clean_env(
        HOME=str(tmp_path),
        ALICE_PASSWORD=PASSWORD,
        REPORT_USER="alice",
        REPORT_PASSWORD=PASSWORD,
    )
    r = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "'error'" not in r.stdout, r.stdout  # a printed answer that is an error


# -- test modules for the test kit ------------------------------------------------
def the_conftest() -> Example:
    (conftest,) = [e for e in EXAMPLES if e.kind == "pytest" and e.filename == "conftest.py"]
    return conftest


@pytest.mark.parametrize(
    "example", [p for p in of_kind("pytest") if p.values[0].filename != "conftest.py"]
)
def test_a_test_module_passes(example, tmp_path):
    # docs/testing.md's conftest.py (its tokengate_app serves the notes app) runs
    # with every one of them.
    (tmp_path / "conftest.py").write_text(the_conftest().code)
    (tmp_path / "own_users.py").write_text((ROOT / "examples" / "own_users.py").read_text())
    (tmp_path / example.filename).write_text(example.code)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
         "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function",
         "-W", "ignore::DeprecationWarning", example.filename],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    summary = r.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary


# -- whole apps under plain uvicorn ------------------------------------------------
@dataclass
class Uvicorn:
    """``python -m uvicorn app:app`` in ``workdir``, its output in ``log``."""

    workdir: Path
    env: dict[str, str]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "uvicorn.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def launch(self) -> None:
        self.port = free_port()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app:app", "--port", str(self.port)],
                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"uvicorn exited:\n{self.output()}")
        try:
            return httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


@pytest.fixture
def uvicorn_app(tmp_path) -> Iterator[Callable[..., Uvicorn]]:
    started: list[Uvicorn] = []

    def start(code: str, **env: str) -> Uvicorn:
        (tmp_path / "app.py").write_text(code)
        server = Uvicorn(tmp_path, clean_env(**env))
        started.append(server)
        server.launch()
        wait_for(server.healthy, timeout=60, what="the app's /healthz")
        return server

    yield start
    for server in started:
        server.stop()


def login(http: httpx.Client, username: str = "alice", password: str = PASSWORD) -> dict:
    r = http.post("/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


def register(http: httpx.Client, username: str = "alice", password: str = PASSWORD) -> None:
    r = http.post("/auth/register", json={"username": username, "password": password})
    assert r.status_code == 201, r.text


def bearer(pair: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def mailed_token(server: Uvicorn, to: str) -> str:
    """The token in the last line the app printed for ``to`` (its stand-in mailer)."""
    pattern = re.compile(rf"^to {re.escape(to)}: \S+#token=(\S+)$", re.MULTILINE)
    wait_for(lambda: pattern.search(server.output()), timeout=30, what=f"a mail to {to}")
    return pattern.findall(server.output())[-1]


def probe_notes(server: Uvicorn) -> None:
    """The README's app: each route answers as its comments say; the security log shows."""
    with httpx.Client(base_url=server.base_url) as http:
        register(http)
        pair = login(http)
        r = http.get("/notes", headers=bearer(pair))
        assert (r.status_code, r.json()) == (200, {"owner": "alice", "notes": []})
        r = http.post("/notes", json={"text": "milk"}, headers=bearer(pair))
        assert (r.status_code, r.json()["error"]) == (403, "insufficient_scope")
        grant = subprocess.run(
            [sys.executable, "-m", "quart_tokengate.service", "users", "grant", "alice",
             "notes:write"],
            cwd=server.workdir, env=server.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert grant.returncode == 0, grant.stderr
        pair = login(http)  # scopes are read at login
        r = http.post("/notes", json={"text": "milk"}, headers=bearer(pair))
        assert (r.status_code, r.json()) == (201, {"count": 1})
        r = http.post("/notes", content=b"[1]", headers=bearer(pair))
        assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
        assert http.get("/notes", headers=bearer(pair)).json()["notes"] == ["milk"]
        r = http.delete("/notes", headers=bearer(pair))  # a password login just now: fresh
        assert r.status_code == 204
        assert http.get("/notes", headers=bearer(pair)).json()["notes"] == []
        assert http.get("/feed").json() == {"for": "everyone"}
        assert http.get("/feed", headers=bearer(pair)).json() == {"for": "alice"}
        r = http.get("/account")  # the account page keeps its path
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        r = http.post("/auth/login", json={"username": "alice", "password": "wrong password"})
        assert r.status_code == 401
    wait_for(
        lambda: "tokengate.security: login_failed username=alice" in server.output(),
        timeout=30,
        what="the security log line",
    )


def probe_email_verify(server: Uvicorn) -> None:
    """docs/browser.md's purpose-token app: a token mailed, used once."""
    with httpx.Client(base_url=server.base_url) as http:
        register(http)
        pair = login(http)
        r = http.post("/email/verify/send", json={"email": "a@example.com"}, headers=bearer(pair))
        assert r.status_code == 202
        token = mailed_token(server, "a@example.com")
        assert http.post("/email/verify", json={"token": token}).status_code == 204
        r = http.post("/email/verify", json={"token": token})
        assert (r.status_code, r.json()["error"]) == (401, "invalid_token")
        r = http.post("/email/verify", json={"nothing": 1})
        assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


def probe_sender(server: Uvicorn) -> None:
    """docs/browser.md's sender: the reset token goes to it, and it resets the password."""
    with httpx.Client(base_url=server.base_url) as http:
        register(http)
        assert http.post("/auth/password-reset/request", json={"username": "alice"}).status_code
        token = mailed_token(server, "alice")
        body = {"token": token, "new_password": "a new password"}
        assert http.post("/auth/password-reset/confirm", json=body).status_code == 204
        login(http, password="a new password")
    assert not (server.workdir / "instance" / "outbox").exists()  # the default sender is unused


def probe_claims(server: Uvicorn) -> None:
    """docs/keys-and-claims.md's claims hook: its claim is in every access token."""
    with httpx.Client(base_url=server.base_url) as http:
        register(http)
        assert claims_of(login(http)["access_token"])["plan"] == "free"


PROBES: dict[str, Callable[[Uvicorn], None]] = {
    "notes": probe_notes,
    "email_verify": probe_email_verify,
    "sender": probe_sender,
    "claims": probe_claims,
}


@pytest.mark.parametrize("example", of_kind("app"))
def test_an_app_serves_under_plain_uvicorn(example, uvicorn_app, tmp_path):
    server = uvicorn_app(example.code, TOKENGATE_INSTANCE_DIR=str(tmp_path / "instance"))
    PROBES[example.probe](server)


def test_the_readme_app_on_a_database_without_the_schema_stops_with_one_line(tmp_path):
    (readme_app,) = [e for e in EXAMPLES if e.probe == "notes"]
    (tmp_path / "app.py").write_text(readme_app.code)
    env = clean_env(
        TOKENGATE_INSTANCE_DIR=str(tmp_path / "instance"),
        TOKENGATE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}",
    )
    r = subprocess.run(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode != 0
    output = r.stdout + r.stderr
    assert "Traceback" not in output, output
    said = [line for line in output.splitlines() if "tokengate db upgrade" in line]
    assert len(said) == 1, output
    assert "is empty" in said[0] and "TOKENGATE_DATABASE_URL" in said[0]
