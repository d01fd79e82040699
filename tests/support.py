"""Real servers for the tests: the service process (private redis-servers: ``PrivateRedis``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import jwt
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from quart_tokengate.service.testing import PrivateRedis

__all__ = [
    "ROOT",
    "SECRET",
    "PrivateRedis",
    "ServiceProcess",
    "free_port",
    "start_service",
    "wait_for",
]

ROOT = Path(__file__).resolve().parents[1]
SECRET = "test-signing-key-" + "k" * 40


def bearer(token: str | Mapping[str, Any]) -> dict[str, str]:
    """The ``Authorization`` header for an access token, or for a token pair's."""
    access = token if isinstance(token, str) else token["access_token"]
    return {"Authorization": f"Bearer {access}"}


def claims(token: str) -> dict[str, Any]:
    """A token's claims, unverified (to read ``exp``, ``sid``... in a test)."""
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return payload


def set_cookies(response: Any) -> dict[str, Morsel[str]]:
    """The cookies a response (httpx's or Quart's) sets or deletes, by name."""
    headers = response.headers
    values = headers.get_list("set-cookie") if hasattr(headers, "get_list") else None
    found: dict[str, Morsel[str]] = {}
    for header in values if values is not None else headers.getlist("Set-Cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        found.update(jar)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it is true (this is waiting for a server, not a sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


class ServiceProcess:
    """``python -m service serve`` in a child process, on a free port."""

    def __init__(self, env: dict[str, str], workdir: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.env = env
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "service.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            return httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 30.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to answer (see :meth:`wait_ready`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
        env.update(self.env)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "quart_tokengate.service",
                    "serve",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                ],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``/healthz`` answers 200; raise with the log if it exits or never does."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited at start:\n{self.log.read_text()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"service did not answer /healthz:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def service_env(workdir: Path, redis_url: str, **settings: Any) -> dict[str, str]:
    """The environment of a test service: fixed key, ``redis_url``, a fresh SQLite file.

    ``settings`` are lower-case ``TOKENGATE_*`` names (``access_ttl=2``).
    """
    env = {
        "TOKENGATE_SECRET_KEY": SECRET,
        "TOKENGATE_REDIS_URL": redis_url,
        "TOKENGATE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'tokengate.db'}",
        "TOKENGATE_INSTANCE_DIR": str(workdir / "instance"),
    }
    env.update({f"TOKENGATE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def start_service(workdir: Path, redis_url: str, **settings: Any) -> ServiceProcess:
    """Start ``python -m service serve`` with :func:`service_env`; the caller stops it.

    For a service that a module's tests share (it takes seconds to start).
    """
    service = ServiceProcess(service_env(workdir, redis_url, **settings), workdir)
    service.start()
    return service


async def postgres_admin(statement: str) -> None:
    """Run ``statement`` (``CREATE DATABASE``, ``DROP DATABASE``) on the server of
    ``TOKENGATE_TEST_DATABASE_URL``, from its maintenance database."""
    base = make_url(os.environ["TOKENGATE_TEST_DATABASE_URL"])
    engine = create_async_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()
