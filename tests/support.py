"""Real servers for the tests: the service process, private redis-servers and PostgreSQL servers."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import inspect
import math
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
import redis
import redis.asyncio
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from quart_tokengate.service.testing import PrivateRedis

__all__ = [
    "ROOT",
    "SECRET",
    "PostgresServer",
    "PrivateRedis",
    "ServiceProcess",
    "assert_unavailable",
    "commandstats",
    "commandstats_async",
    "free_port",
    "mann_whitney_p",
    "refresh_waiters",
    "start_service",
    "timed",
    "timed_async",
    "wait_for",
    "wait_for_async",
]

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
SECRET = "test-signing-key-" + "k" * 40
# The key-encryption key of test services and apps whose signing keys are stored.
KEK = "test-key-encryption-key-" + "K" * 18 + "A"


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


def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> None:
    """Poll ``predicate`` until it is true, at most ``timeout`` seconds.

    Waiting on a condition (a server up, a key in use), not a guessed delay:
    it returns as soon as the condition holds, and fails if it never does.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"not within {timeout}s: {what or 'condition'}")


async def wait_for_async(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.0, what: str = ""
) -> None:
    """:func:`wait_for` on an event loop: the other tasks run between two looks.

    With ``interval`` 0 it only yields to the loop, so a condition that other
    tasks make true is seen as soon as they have run. ``predicate`` may be a
    coroutine function (a look that asks Redis or a server): it is awaited.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holds = predicate()
        if inspect.isawaitable(holds):
            holds = await holds
        if holds:
            return
        await asyncio.sleep(interval)
    raise TimeoutError(f"not within {timeout}s: {what or 'condition'}")


async def redis_up_a_while(client: Any) -> None:
    """Wait until Redis has been up ``RESTART_S`` seconds: before that, every end waits
    out any near-check lease (a restart may have lost them), which a test that counts
    an end's commands or times it does not mean to see."""
    from quart_tokengate.service.store.redis_store import RESTART_S

    async def up() -> bool:
        return int((await client.info("server"))["uptime_in_seconds"]) >= RESTART_S

    await wait_for_async(up, timeout=RESTART_S + 10, what="Redis up a while")


def refresh_waiters(api: Any) -> int:
    """How many requests of an ``AsyncAuthClient`` wait for the refresh under way.

    Read from the client's single flight (private state: nothing public tells
    it), for the tests that hold a refresh until every request meant to share
    it waits for it, instead of a delay that hopes they do.
    """
    flight = api.auth._single_flight._flight
    return 0 if flight is None else len(flight._waiters)


# -- failing closed, timed -----------------------------------------------------
def timed(call: Callable[[], T]) -> tuple[T, float]:
    """``call()``'s result and the seconds it took (the request alone, nothing around it)."""
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


async def timed_async(call: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    """:func:`timed` for a coroutine function: ``await call()`` and the seconds it took."""
    start = time.monotonic()
    result = await call()
    return result, time.monotonic() - start


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sided p-value of a Mann-Whitney U test of ``a`` against ``b``.

    The U statistic from the ranks of the pooled samples (ties share their mean
    rank), compared with its normal approximation: the mean ``n1*n2/2``, the
    variance corrected for ties, and a continuity correction of 1/2. Good for
    samples of twenty or more each; no scipy needed.
    """
    n1, n2 = len(a), len(b)
    pooled = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    r1 = sum(rank for rank, (_, group) in zip(ranks, pooled, strict=True) if group == 0)
    u1 = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    mean = n1 * n2 / 2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    z = max(0.0, abs(u1 - mean) - 0.5) / math.sqrt(variance)
    return math.erfc(z / math.sqrt(2))


def assert_unavailable(r: Any, elapsed: float, body: Mapping[str, Any] | None = None) -> None:
    """Failed closed and fast: ``503 auth_unavailable`` with ``Retry-After``, within a second.

    The second is the contract's promise (section 3), so it is asserted as is.
    ``r`` is an httpx response, or a Quart one with its JSON ``body`` passed
    in (reading it is awaited).
    """
    if body is None:
        body = r.json()
    where = r.request.url.path if isinstance(r, httpx.Response) else ""
    assert r.status_code == 503, (where, r.status_code, body)
    assert body["error"] == "auth_unavailable" and body["error_description"], (where, body)
    assert int(r.headers["Retry-After"]) >= 1, where
    assert elapsed < 1.0, (where, elapsed)


# -- counting Redis commands ---------------------------------------------------
# Not per request: our own CONFIG RESETSTAT and INFO, and the handshake of a
# pooled connection opened for the first time.
NOT_PER_REQUEST = {"config", "config|resetstat", "info", "hello", "client", "client|setinfo"}


def _calls(info: Mapping[str, Any]) -> dict[str, int]:
    calls = {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in info.items()}
    return {name: n for name, n in calls.items() if name not in NOT_PER_REQUEST}


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT``, on a server of the test's own.

    Redis counts the commands a script runs as well as the EVALSHA itself;
    with exact counts for those, any extra command on the path would show.
    """
    return _calls(client.info("commandstats"))


async def commandstats_async(client: redis.asyncio.Redis) -> dict[str, int]:
    """:func:`commandstats` with an asyncio client."""
    return _calls(await client.info("commandstats"))


class PostgresServer:
    """A private PostgreSQL server on a loopback port, that a test may stop and start."""

    def __init__(self) -> None:
        # Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<n>/bin.
        found = [shutil.which("postgres"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))]
        postgres = next((p for p in found if p), None)
        if postgres is None:
            pytest.fail(
                "PostgreSQL's server is not installed (no postgres binary on PATH or under "
                "/usr/lib/postgresql/*/bin): apt-get install postgresql",
                pytrace=False,
            )
        self.bin = Path(postgres).resolve().parent
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tg-postgres-"))
        # PostgreSQL refuses to run as root: then it runs as the postgres user.
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            shutil.chown(self.dir, self.user)
        self.process: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [
                str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                "--auth=trust", "--no-sync", "--no-instructions", "-E", "UTF8",
            ],
            user=self.user, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=60,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Create the empty database ``name`` on the running server; its URL."""
        create = [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port)]
        subprocess.run([*create, "-U", "postgres", name], check=True, timeout=30)
        return self.database_url(name)

    def ready(self) -> bool:
        check = [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(check, timeout=5, check=False).returncode == 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(self.bin / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                "-c", "fsync=off",
            ],
            user=self.user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self.ready, timeout=20, interval=0.05)

    def _processes(self) -> list[int]:
        """The postmaster and its children (each backend leads its own process group)."""
        assert self.process is not None
        found = [self.process.pid]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(stat) as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid:
                    found.append(int(stat.split("/")[2]))
        return found

    def freeze(self) -> None:
        """Stop every process of the server (SIGSTOP): connections stay open, nothing answers."""
        for pid in self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        """Fast shutdown: the server ends its clients' connections and exits."""
        if self.process is not None:
            self.thaw()
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=20)
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        """Started; removed (stopped, its files deleted) at the end of the ``with``."""
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()


class ServiceProcess:
    """``python -m service serve`` in a child process, on a free port."""

    def __init__(
        self, env: dict[str, str], workdir: Path, workers: int = 1, file_limit: int | None = None
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.env = env
        self.workers = workers
        # RLIMIT_NOFILE (soft and hard) of the service, as a small machine might have it.
        self.file_limit = file_limit
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
                preexec_fn=self._limit_files if self.file_limit else None,
            )

    def _limit_files(self) -> None:
        assert self.file_limit is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.file_limit, self.file_limit))

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
        "TOKENGATE_KEY_ENCRYPTION_KEY": KEK,
        "TOKENGATE_REDIS_URL": redis_url,
        "TOKENGATE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'tokengate.db'}",
        "TOKENGATE_INSTANCE_DIR": str(workdir / "instance"),
        # Tests register users and ask for resets from 127.0.0.1 by the dozen; the
        # per-address limits on those have tests of their own (test_throttle).
        "TOKENGATE_ADDRESS_MAX_REGISTRATIONS": "0",
        "TOKENGATE_ADDRESS_MAX_RESETS": "0",
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


async def postgres_answers(url: str) -> None:
    """Connect to the database at ``url`` and run ``SELECT 1``; raises when it cannot."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


async def postgres_admin(url: str, statement: str) -> None:
    """Run ``statement`` (``CREATE DATABASE``, ``DROP DATABASE``) on the server of
    the database at ``url``, from its maintenance database."""
    base = make_url(url)
    engine = create_async_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def run_together(
    count: int, target: Callable[..., None], *args: Any, counter: bool = False
) -> tuple[list[dict[str, Any]], int]:
    """Run ``count`` spawned processes of ``target(*args, start, results[, met])`` that
    all set off at once (``start``, a barrier), and collect the report (a dict) each puts
    on ``results``; with ``counter``, ``met`` is a shared integer they may count in, and
    its final value comes back too. A process still running at the end is killed."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(count + 1)
    results = context.Queue()
    met = context.Value("i", 0) if counter else None
    extra = () if met is None else (met,)
    processes = [
        context.Process(target=target, args=(*args, start, results, *extra)) for _ in range(count)
    ]
    for process in processes:
        process.start()
    try:
        start.wait(timeout=60)
        reports = [results.get(timeout=60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return reports, 0 if met is None else met.value
