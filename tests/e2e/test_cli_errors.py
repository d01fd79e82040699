"""The command line says what is wrong first, in one line: help, usage, start-up, prompts.

Each case runs the real ``tokengate`` program in a child process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import redis
from alembic.script import ScriptDirectory

from quart_tokengate.service.db.migrate import alembic_config
from tests.support import PrivateRedis, ServiceProcess, wait_for

from .test_cli import clean_env, run

SERVER_EXTRA = 'pip install "quart-tokengate[server]"'


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_help_lists_every_command_and_serve_help_every_option_with_its_default(tmp_path):
    r = run(["--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    for command in ("serve", "db", "users", "sessions", "keys"):
        assert command in r.stdout
    r = run(["serve", "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    for option, default in (("--host", "127.0.0.1"), ("--port", "8000"), ("--workers", "1")):
        [line] = [line for line in r.stdout.splitlines() if line.strip().startswith(option)]
        assert f"(default: {default})" in line, r.stdout


def test_help_imports_none_of_the_service():
    """Building the parser and printing help loads no Quart, SQLAlchemy, redis or alembic."""
    script = (
        "import contextlib, io, sys\n"
        "from quart_tokengate.service.__main__ import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['serve', '--help'])\n"
        "heavy = {'quart', 'sqlalchemy', 'redis', 'alembic', 'uvicorn', 'argon2', 'jwt'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_without_the_server_extra_every_command_names_it_in_one_line():
    """A base install (the client alone): ``tokengate`` says which extra to install, exit 2."""
    for args in (["--help"], ["serve"], ["db", "upgrade"]):
        script = (
            "import sys\n"
            "sys.modules['quart'] = None  # as if not installed: find_spec sees no quart\n"
            "from quart_tokengate.service.__main__ import main\n"
            f"raise SystemExit(main({args!r}))\n"
        )
        r = subprocess.run(
            [sys.executable, "-c", script],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, (args, r.stderr)
        assert SERVER_EXTRA in one_line(r.stderr) and "quart" in r.stderr, r.stderr
        assert r.stdout == ""


def test_without_the_server_extra_importing_the_service_names_it():
    script = (
        "import sys\n"
        "sys.modules['quart'] = None\n"
        "import quart_tokengate.service as service  # the package itself imports nothing\n"
        "try:\n"
        "    service.TokenGate\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc.name, exc, sep='|')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    name, message = one_line(r.stdout).split("|")
    assert name == "quart" and SERVER_EXTRA in message, r.stdout


def test_a_bad_port_is_one_line(tmp_path):
    for value in ("99999", "0", "http"):
        r = run(["serve", "--port", value], tmp_path)
        assert r.returncode == 2, r.stderr
        line = one_line(r.stderr)
        assert "--port" in line and value in line, line
    r = run(["serve", "--workers", "0"], tmp_path)
    assert r.returncode == 2 and "--workers" in one_line(r.stderr)
    assert not (tmp_path / "instance").exists()


def test_a_port_in_use_is_said_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run(["serve", "--port", str(port)], tmp_path)
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr)
    assert f"127.0.0.1:{port}" in line and "address already in use" in line, line
    # Checked first: no migration ran, no key was made, no Redis was started.
    assert not (tmp_path / "instance").exists()


def test_users_create_with_no_terminal_and_no_input_is_one_line(tmp_path):
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    # A new session: no controlling terminal for getpass to open, stdin at its end.
    r = subprocess.run(
        [sys.executable, "-m", "quart_tokengate.service", "users", "create", "carol"],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert r.returncode == 1, r.stderr
    assert "--password-stdin" in one_line(r.stderr)
    r = run(["users", "create", "carol", "--password-stdin"], tmp_path, stdin="")
    assert r.returncode == 1, r.stderr
    assert "no password" in one_line(r.stderr)
    r = run(["users", "list"], tmp_path)
    assert "carol" not in r.stdout


def test_db_upgrade_names_the_revisions_it_applied(tmp_path):
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    revisions = [script.revision for script in scripts.walk_revisions()][::-1]  # oldest first
    r = run(["db", "upgrade"], tmp_path)
    assert r.returncode == 0, r.stderr
    applied = [line.split()[2].rstrip(":") for line in r.stdout.splitlines() if "applied" in line]
    assert applied == revisions, r.stdout
    assert "already" not in r.stdout and revisions[-1] in r.stdout.splitlines()[-1]
    r = run(["db", "upgrade"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "already at the latest revision" in one_line(r.stdout)


def test_an_unreachable_redis_is_one_warning_at_start_then_503_until_it_answers(
    tmp_path: Path,
) -> None:
    server = PrivateRedis()  # its port, not started yet
    password = "s3cret-redis-pw"
    service = ServiceProcess(
        {"TOKENGATE_REDIS_URL": f"redis://:{password}@127.0.0.1:{server.port}/0"}, tmp_path
    )
    service.launch()
    try:
        wait_for(
            lambda: "Application startup complete" in service.log.read_text(),
            timeout=120,
            what="start-up",
        )
        log = service.log.read_text()
        warnings = [line for line in log.splitlines() if "cannot be reached" in line]
        assert len(warnings) == 1, log
        assert "WARNING" in warnings[0] and "Redis" in warnings[0], warnings
        assert f"redis://:***@127.0.0.1:{server.port}/0" in warnings[0], warnings
        body = {"username": "dora", "password": "correct horse"}
        r = httpx.get(service.base_url + "/healthz", timeout=10)
        assert r.status_code == 503 and r.json()["redis"] == "unavailable", r.text
        r = httpx.post(service.base_url + "/auth/login", json=body, timeout=10)
        assert r.status_code == 503 and r.json()["error"] == "auth_unavailable", r.text

        server.start()
        redis.Redis(port=server.port).config_set("requirepass", password)
        wait_for(service.healthy, timeout=30, what="/healthz 200 once Redis answers")
        r = httpx.post(service.base_url + "/auth/register", json=body, timeout=30)
        assert r.status_code == 201, r.text
        r = httpx.post(service.base_url + "/auth/login", json=body, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        service.stop()
        server.close()
    assert password not in service.log.read_text()
    assert "Traceback" not in service.log.read_text()
