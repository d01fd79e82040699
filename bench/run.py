"""``make bench`` (``python -m bench.run``): one table, from interleaved rounds in one run.

One process tree on 127.0.0.1, stopped by PID whatever happens:

- a private redis-server, a temporary SQLite database migrated to head;
- ``bench.host:plain`` (a Quart app with two bare routes) and ``bench.host:gated``
  (the same app with ``TokenGate`` mounted, plus ``/auth/me``, ``/bench/io``) under
  uvicorn (uvloop, httptools) as ``serve`` runs it, with 1 worker, and ``gated``
  again with 2 workers;
- the peer, Flask-JWT-Extended with a Redis blocklist (``bench/peers/flask_jwt``),
  under gunicorn from its own venv (``bench/peers/.venv``, which ``make bench``
  installs): sync workers x1 and x2, gthread workers (8 threads) x1 and x2.

Every measurement is wrk (1 thread) against one route for ``--seconds``; a
round measures every pair once, in a fixed order, and rounds repeat
``--rounds`` times, so that a noisy minute on a shared machine hurts every
figure alike. Ratios are computed within a round, then summarised as the median
and the range over rounds. Then P5 (a login storm against the gated app while a
probe measures a guarded request and the app measures its loop lag), then
1,000,000 ended sessions written into Redis and ``/auth/me`` measured again.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from quart_tokengate.client._dpop import generate_key, make_proof

from . import client_credentials as cc_bench
from . import dpop as dpop_bench
from . import harness
from .harness import HOST, ROOT, Load, Process

PEER_DIR = ROOT / "bench" / "peers" / "flask_jwt"
PEER_VENV = ROOT / "bench" / "peers" / ".venv"
# The other peers: each in bench/peers/<name>/, run from its own venv there.
ASYNC_PEERS = ("fastapi_users_redis", "authx_redis")
DJANGO_PEER = "simplejwt"
PEER_EMAIL = "bench-user@example.com"
# How each library checks revocation on the protected route (the table says it).
EVERY_REQUEST = "every request: Redis"
REVOCATION = {
    "ours": "every request: Redis script",
    "key": "every request: Redis script",
    "peer": EVERY_REQUEST,
    "fau": "every request: Redis + SQL user row",
    "authx": EVERY_REQUEST,
    "sjwt": "refresh only (SQL user row)",
    "dpop": "every request: proof + Redis script",
    "cc": "client's secret: SQL + Redis script",
    "": "no guard",
}

SESSIONS = 1_000_000
USERS = 100_000
# Far from the ids SQLite gives real users (1, 2, ...), so nothing collides.
FIRST_UID = 10_000_000
BATCH = 10_000
USERNAME, PASSWORD = "bench-user", "bench-password-1234"
DEFAULT_PNG = ROOT / "bench" / "results.png"


def start_redis(tmp: Path) -> tuple[Process, int]:
    from quart_tokengate.service.store.embedded import redis_server_binary

    port = harness.free_port()
    data = tmp / "redis"
    data.mkdir()
    args = [
        redis_server_binary(),
        "--port", str(port), "--bind", HOST, "--protected-mode", "yes",
        "--save", "", "--appendonly", "no", "--dir", str(data),
    ]  # fmt: skip
    process = Process("redis-server", args, log=tmp / "redis.log")
    client = redis.Redis(host=HOST, port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if not process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{process.tail()}") from None
            time.sleep(0.05)
        finally:
            client.close()
    return process, port


def start_storage(tmp: Path, processes: list[Process]) -> tuple[int, dict[str, str]]:
    """A private redis-server (added to ``processes``, to be stopped) and a migrated
    SQLite file in ``tmp``: the Redis port, and the service's environment on them."""
    redis_process, redis_port = start_redis(tmp)
    processes.append(redis_process)
    database_url = f"sqlite+aiosqlite:///{tmp / 'tokengate.db'}"
    from quart_tokengate.service.db.migrate import upgrade

    upgrade(database_url)
    return redis_port, service_env(tmp, redis_port, database_url)


def service_env(tmp: Path, redis_port: int, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "TOKENGATE_SECRET_KEY": secrets.token_urlsafe(36),  # 48 characters
            "TOKENGATE_REDIS_URL": f"redis://{HOST}:{redis_port}/0",
            "TOKENGATE_DATABASE_URL": database_url,
            "TOKENGATE_INSTANCE_DIR": str(tmp / "instance"),
            "TOKENGATE_ACCESS_TTL": "3600",
            # The bench registers 21 accounts from 127.0.0.1 (the default allows 10 an hour).
            "TOKENGATE_ADDRESS_MAX_REGISTRATIONS": "1000",
        }
    )
    return env


def start_app(
    tmp: Path, env: dict[str, str], factory: str, name: str, workers: int = 1
) -> tuple[Process, str]:
    if name == "legacy":
        env = {**env, "BENCH_HASHING": "default-executor"}
    if name.startswith("without-"):
        env = {**env, "BENCH_WITHOUT": name.removeprefix("without-")}
    if name.startswith("wait"):  # near checks off: every request waits for Redis
        env = {**env, "TOKENGATE_NEAR_CACHE": "false"}
    port = harness.free_port()
    args = [
        sys.executable, "-m", "uvicorn", factory, "--factory", "--workers", str(workers),
        "--host", HOST, "--port", str(port), "--loop", "bench.loop:new_event_loop",
        "--http", "httptools", "--lifespan", "on", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    # The working directory is the temporary folder, so no stray .env is read.
    process = Process(name, args, env=env, cwd=tmp, log=tmp / f"{name}.log")
    base = f"http://{HOST}:{port}"
    harness.wait_http(f"{base}/bench/dict", process)
    return process, base


def start_peer(
    tmp: Path, redis_port: int, secret: str, name: str, workers: int, threads: int
) -> tuple[Process, str]:
    port = harness.free_port()
    gunicorn = PEER_VENV / "bin" / "gunicorn"
    worker_class = ["-k", "gthread", "--threads", str(threads)] if threads > 1 else ["-k", "sync"]
    args = [
        str(gunicorn), "--chdir", str(PEER_DIR), "-w", str(workers), *worker_class,
        "-b", f"{HOST}:{port}", "--log-level", "warning", "--backlog", "2048", "app:app",
    ]  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PEER_SECRET_KEY": secret,
        "PEER_REDIS_URL": f"redis://{HOST}:{redis_port}/1",
    }
    process = Process(name, args, env=env, cwd=tmp, log=tmp / f"{name}.log")
    base = f"http://{HOST}:{port}"
    harness.wait_http(f"{base}/protected", process)
    return process, base


def peer_token(base: str) -> str:
    r = httpx.post(base + "/login", timeout=10.0)
    r.raise_for_status()
    token: str = r.json()["access_token"]
    return token


def peer_venv(name: str) -> Path:
    return ROOT / "bench" / "peers" / name / ".venv"


def peer_env(redis_port: int, secret: str, db: int, database: Path | None = None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PEER_SECRET_KEY": secret,
        "PEER_REDIS_URL": f"redis://{HOST}:{redis_port}/{db}",
    }
    if database is not None:
        env["PEER_DB"] = str(database)
    return env


def peer_setup(name: str, args: Sequence[str], env: dict[str, str], tmp: Path) -> None:
    """One command of a peer's own set-up (tables, migrations, its user), from its venv."""
    done = subprocess.run(
        [str(peer_venv(name) / "bin" / "python"), *args],
        cwd=ROOT / "bench" / "peers" / name, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{name} set-up {args[:2]} failed:\n{done.stdout}{done.stderr}")


def start_uvicorn_peer(
    tmp: Path, name: str, env: dict[str, str], server: str, workers: int
) -> tuple[Process, str]:
    """A FastAPI peer as its docs deploy it: uvicorn[standard] (uvloop, httptools)."""
    port = harness.free_port()
    args = [
        str(peer_venv(name) / "bin" / "uvicorn"), "app:app",
        "--app-dir", str(ROOT / "bench" / "peers" / name), "--workers", str(workers),
        "--host", HOST, "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    process = Process(server, args, env=env, cwd=tmp, log=tmp / f"{server}.log")
    base = f"http://{HOST}:{port}"
    harness.wait_http(f"{base}/protected", process)
    return process, base


def start_django_peer(
    tmp: Path, env: dict[str, str], server: str, workers: int, threads: int
) -> tuple[Process, str]:
    port = harness.free_port()
    worker_class = ["-k", "gthread", "--threads", str(threads)] if threads > 1 else ["-k", "sync"]
    args = [
        str(peer_venv(DJANGO_PEER) / "bin" / "gunicorn"),
        "--chdir", str(ROOT / "bench" / "peers" / DJANGO_PEER), "-w", str(workers),
        *worker_class, "-b", f"{HOST}:{port}", "--log-level", "warning", "--backlog", "2048",
        "benchsite.wsgi",
    ]  # fmt: skip
    process = Process(server, args, env=env, cwd=tmp, log=tmp / f"{server}.log")
    base = f"http://{HOST}:{port}"
    harness.wait_http(f"{base}/protected", process)
    return process, base


def fastapi_users_token(base: str) -> str:
    """Register the bench user through fastapi-users' router, then log in (RedisStrategy)."""
    with httpx.Client(base_url=base, timeout=30.0) as http:
        r = http.post("/auth/register", json={"email": PEER_EMAIL, "password": PASSWORD})
        if r.status_code != 201:
            raise RuntimeError(f"fastapi-users register answered {r.status_code}: {r.text[:200]}")
        r = http.post("/auth/redis/login", data={"username": PEER_EMAIL, "password": PASSWORD})
        if r.status_code != 200:
            raise RuntimeError(f"fastapi-users login answered {r.status_code}: {r.text[:200]}")
        token: str = r.json()["access_token"]
        return token


def simplejwt_token(base: str) -> str:
    """An access token from simplejwt's TokenObtainPairView (its refresh token is recorded
    as outstanding by the blacklist app)."""
    r = httpx.post(
        base + "/api/token/", json={"username": USERNAME, "password": PASSWORD}, timeout=30.0
    )
    if r.status_code != 200:
        raise RuntimeError(f"simplejwt /api/token/ answered {r.status_code}: {r.text[:200]}")
    token: str = r.json()["access"]
    return token


def register_storm_users(base: str, count: int = 20) -> None:
    """The accounts P5's login loops use, one each."""
    with httpx.Client(base_url=base, timeout=60.0) as http:
        for i in range(count):
            r = http.post(
                "/auth/register", json={"username": f"{USERNAME}-{i}", "password": PASSWORD}
            )
            if r.status_code != 201:
                raise RuntimeError(f"register answered {r.status_code}: {r.text[:200]}")


def access_token(base: str) -> str:
    with httpx.Client(base_url=base, timeout=30.0) as http:
        credentials = {"username": USERNAME, "password": PASSWORD}
        r = http.post("/auth/register", json=credentials)
        if r.status_code != 201:
            raise RuntimeError(f"register answered {r.status_code}: {r.text[:200]}")
        r = http.post("/auth/login", json={**credentials, "device": "bench"})
        if r.status_code != 200:
            raise RuntimeError(f"login answered {r.status_code}: {r.text[:200]}")
        token: str = r.json()["access_token"]
        return token


def api_key(base: str, token: str) -> str:
    """An API key of the bench user, made with its (fresh) access token."""
    r = httpx.post(
        base + "/auth/api-keys", json={"name": "bench"},
        headers={"Authorization": f"Bearer {token}"}, timeout=30.0,
    )  # fmt: skip
    if r.status_code != 201:
        raise RuntimeError(f"POST /auth/api-keys answered {r.status_code}: {r.text[:200]}")
    key: str = r.json()["key"]
    return key


def ids(count: int) -> list[str]:
    """``count`` random 22-character url-safe ids, like ``secrets.token_urlsafe(16)``."""
    raw = base64.urlsafe_b64encode(os.urandom(count * 17)).decode()
    return [raw[i * 22 : i * 22 + 22] for i in range(count)]


def _bulk(value: str) -> str:
    return f"${len(value)}\r\n{value}\r\n"


def _commands(first: int, count: int, now: float, expire_at: int) -> bytes:
    """RESP for ``count`` sessions: ``HSET`` of the session hash, then ``EXPIREAT``,
    as ``LOGIN`` and ``END`` leave an ended session (``tg:{u<uid>}:s:<sid>``)."""
    random_ids = ids(count * 4)
    expire = _bulk(str(expire_at))
    ended = _bulk("st") + _bulk("ended") + _bulk("why") + _bulk("revoked")
    out: list[str] = []
    for i in range(count):
        number = first + i
        uid = FIRST_UID + number % USERS
        sid, aj, rj, pj = random_ids[i * 4 : i * 4 + 4]
        cr = now - 86_400 + (number % 3_600)
        seen = repr(cr + 60)
        key = _bulk(f"tg:{{u{uid}}}:s:{sid}")
        out.append(
            f"*22\r\n$4\r\nHSET\r\n{key}{ended}$2\r\ncr\r\n{_bulk(repr(cr))}"
            f"$2\r\nls\r\n{_bulk(seen)}$2\r\nsy\r\n{_bulk(seen)}$2\r\naj\r\n{_bulk(aj)}"
            f"$2\r\nrj\r\n{_bulk(rj)}$2\r\npj\r\n{_bulk(pj)}$2\r\nia\r\n{_bulk(str(int(cr)))}"
            f"$2\r\nnm\r\n{_bulk(f'user{uid}')}"
            f"*3\r\n$8\r\nEXPIREAT\r\n{key}{expire}"
        )
    return "".join(out).encode()


def fill(port: int, sessions: int) -> float:
    """Write ``sessions`` ended sessions in the service's layout; return the seconds taken.

    Non-transactional pipelining of ``BATCH`` sessions (two commands each) at a
    time over a plain socket; the next batch is built while Redis runs the
    last one. Every reply is one integer line: they are counted, and an error
    line stops the run.
    """
    started = time.monotonic()
    now = time.time()
    expire_at = int(now) + 2_592_000 + 60
    with socket.create_connection((HOST, port), timeout=30) as conn:
        sent = received = 0
        last = b"\n"

        def read_until(target: int) -> None:
            nonlocal received, last
            while received < target:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    raise RuntimeError("redis-server closed the connection")
                if b"\n-" in last + chunk:
                    raise RuntimeError(f"redis-server refused a command: {chunk[:200]!r}")
                received += chunk.count(b"\n")
                last = chunk[-1:]

        done = 0
        while done < sessions:
            n = min(BATCH, sessions - done)
            payload = _commands(done, n, now, expire_at)
            read_until(sent)
            conn.sendall(payload)
            sent += 2 * n
            done += n
        read_until(sent)
    return time.monotonic() - started


def redis_memory(port: int) -> tuple[int, int]:
    """(used_memory in bytes, number of keys)."""
    client = redis.Redis(host=HOST, port=port)
    try:
        info = client.info("memory")
        return int(info["used_memory"]), int(client.dbsize())
    finally:
        client.close()


def mib(n: int) -> str:
    return f"{n / 1024 / 1024:,.1f} MiB"


# -- measurements ---------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One route of one server, loaded with ``connections`` connections."""

    key: str
    label: str
    server: str
    path: str
    connections: int = 64
    auth: str = ""  # "ours" | "key" | "dpop" | "cc" | "peer" | "fau" | "authx" | "sjwt" | ""


@dataclass
class Samples:
    loads: list[Load] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def targets(ablations: bool = False) -> list[Target]:
    t = [
        Target("plain-dict", "host app, dict route", "plain", "/bench/dict"),
        Target("plain-jsonify", "host app, jsonify route", "plain", "/bench/jsonify"),
        Target("gated-dict", "host app + TokenGate, dict route", "gated1", "/bench/dict"),
        Target("gated-jsonify", "host app + TokenGate, jsonify route", "gated1", "/bench/jsonify"),
        Target("me", "GET /auth/me", "gated1", "/auth/me", auth="ours"),
        Target("me-key", "GET /auth/me, API key", "gated1", "/auth/me", auth="key"),
        Target("me-dpop", "GET /auth/me, DPoP-bound token + proof", "gated1", "/auth/me",
               auth="dpop"),
        Target("cc-fetch", "POST /oauth/token (client credentials)", "gated1", "/oauth/token",
               auth="cc"),
    ]  # fmt: skip
    for workers in (1, 2):
        t += [
            Target(f"me{workers}-200", f"GET /auth/me, {workers}w, 200c", f"gated{workers}",
                   "/auth/me", 200, "ours"),
            Target(f"io{workers}-200", f"GET /bench/io (50 ms), {workers}w, 200c",
                   f"gated{workers}", "/bench/io", 200, "ours"),
            Target(f"peer-sync{workers}", f"peer sync x{workers}, protected, 200c",
                   f"sync{workers}", "/protected", 200, "peer"),
            Target(f"peer-gthread{workers}", f"peer gthread(8) x{workers}, protected, 200c",
                   f"gthread{workers}", "/protected", 200, "peer"),
            Target(f"peer-io{workers}", f"peer gthread(8) x{workers}, io (50 ms), 200c",
                   f"gthread{workers}", "/io", 200, "peer"),
            Target(f"sleep{workers}-200", f"host app, 50 ms route, no guard, {workers}w, 200c",
                   "plain" if workers == 1 else f"plain{workers}", "/bench/sleep", 200),
            Target(f"wait-me{workers}-200", f"GET /auth/me, near checks off, {workers}w, 200c",
                   f"wait{workers}", "/auth/me", 200, "ours"),
            Target(f"wait-io{workers}-200",
                   f"GET /bench/io (50 ms), near checks off, {workers}w, 200c",
                   f"wait{workers}", "/bench/io", 200, "ours"),
            Target(f"fau-me{workers}", f"fastapi-users (Redis) x{workers}, protected, 200c",
                   f"fau{workers}", "/protected", 200, "fau"),
            Target(f"fau-io{workers}", f"fastapi-users (Redis) x{workers}, io (50 ms), 200c",
                   f"fau{workers}", "/io", 200, "fau"),
            Target(f"authx-me{workers}", f"authx x{workers}, protected, 200c",
                   f"authx{workers}", "/protected", 200, "authx"),
            Target(f"authx-io{workers}", f"authx x{workers}, io (50 ms), 200c",
                   f"authx{workers}", "/io", 200, "authx"),
            Target(f"sjwt-sync{workers}", f"simplejwt sync x{workers}, protected, 200c",
                   f"sjwt-sync{workers}", "/protected", 200, "sjwt"),
            Target(f"sjwt-gthread{workers}", f"simplejwt gthread(8) x{workers}, protected, 200c",
                   f"sjwt-gthread{workers}", "/protected", 200, "sjwt"),
            Target(f"sjwt-io{workers}", f"simplejwt gthread(8) x{workers}, io (50 ms), 200c",
                   f"sjwt-gthread{workers}", "/io", 200, "sjwt"),
        ]  # fmt: skip
    if ablations:
        t += [
            Target("me-redis-py", "GET /auth/me, without the pipelined Redis path",
                   "without-pipelined-redis", "/auth/me", auth="ours"),
            Target("me-no-cache", "GET /auth/me, without the claims cache",
                   "without-claims-cache", "/auth/me", auth="ours"),
        ]  # fmt: skip
    return t


def wrk(
    url: str, seconds: float, connections: int, headers: dict[str, str],
    script: Sequence[str] = (),
) -> Load:  # fmt: skip
    """One wrk run; ``script`` is wrk's Lua script and its arguments, if the row has one."""
    wrk_bin = harness.wrk_path()
    if wrk_bin is None:
        raise SystemExit("make bench needs wrk on PATH (apt-get install wrk)")
    args = [wrk_bin, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    tail = [url]
    if script:
        args += ["-s", script[0]]
        tail += ["--", *script[1:]]
    done = subprocess.run(
        [*args, *tail], capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    return harness.parse_wrk(done.stdout)


@dataclass
class Scripts:
    """The rows whose requests wrk cannot repeat as they are: a DPoP proof is good once
    (signed here, fresh, before each run: bench/dpop.py), a token request is a form POST."""

    tmp: Path
    key: Any = None  # the DPoP key the "dpop" token is bound to
    bound: str = ""
    proofs: int = 40_000

    def for_target(self, target: Target, url: str) -> list[str]:
        if target.auth == "dpop":
            proofs = self.tmp / "proofs.txt"
            dpop_bench.sign_proofs(proofs, self.key, url, self.bound, self.proofs)
            lua = self.tmp / "dpop.lua"
            lua.write_text(dpop_bench.WRK_SCRIPT)
            return [str(lua), str(proofs)]
        if target.auth == "cc":
            lua = self.tmp / "fetch.lua"
            lua.write_text(cc_bench.WRK_SCRIPT)
            return [str(lua)]
        return []


def ratio_summary(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


@dataclass
class Bench:
    bases: dict[str, str]
    groups: dict[str, int]
    headers: dict[str, dict[str, str]]
    seconds: float
    scripts: Scripts | None = None  # rows whose requests wrk cannot repeat (DPoP, forms)
    samples: dict[str, Samples] = field(default_factory=dict)

    def measure(self, target: Target) -> Load:
        url = self.bases[target.server] + target.path
        headers = self.headers.get(target.auth, {})
        script = self.scripts.for_target(target, url) if self.scripts is not None else []
        group = self.groups[target.server]
        before = harness.group_cpu_seconds(group)
        load = wrk(url, self.seconds, target.connections, headers, script)
        cpu = (harness.group_cpu_seconds(group) - before) / max(load.requests, 1) * 1e6
        entry = self.samples.setdefault(target.key, Samples())
        entry.loads.append(load)
        entry.cpu_us.append(cpu)
        return load

    def per_round(self, key: str, attr: str = "rps") -> list[float]:
        if key not in self.samples:
            return []
        return [getattr(load, attr) for load in self.samples[key].loads]

    def ratios(self, top: str, bottom: str) -> list[float]:
        return self.ratios_of(top, bottom, "rps")

    def ratios_of(self, top: str, bottom: str, attr: str) -> list[float]:
        if top not in self.samples or bottom not in self.samples:
            return []
        a, b = self.per_round(top, attr), self.per_round(bottom, attr)
        return [x / y for x, y in zip(a, b, strict=True) if y > 0]

    def cpu_ratios(self, top: str, bottom: str) -> list[float]:
        """Per round, ``top``'s server CPU per request over ``bottom``'s."""
        if top not in self.samples or bottom not in self.samples:
            return []
        a, b = self.samples[top].cpu_us, self.samples[bottom].cpu_us
        return [x / y for x, y in zip(a, b, strict=True) if y > 0]

    def against_best(self, top: str, peers: Sequence[str], attr: str) -> list[float]:
        """Per round, ``top`` over the best of ``peers`` that round (the highest
        req/s, or the lowest p99)."""
        columns = [self.per_round(key, attr) for key in (top, *peers)]
        if not all(columns):
            return []
        pick = min if attr.startswith("p99") else max
        return [a / pick(rest) for a, *rest in zip(*columns, strict=True)]

    def row(self, target: Target) -> list[str]:
        s = self.samples[target.key]
        rps = [load.rps for load in s.loads]
        p99 = [load.p99_ms for load in s.loads]
        p50 = [load.p50_ms for load in s.loads]
        errors = sum(load.errors for load in s.loads)
        return [
            target.label,
            REVOCATION[target.auth],
            f"{statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f})",
            f"{statistics.median(p50):.1f}",
            f"{statistics.median(p99):.1f}",
            f"{statistics.median(s.cpu_us):.0f}",
            str(errors),
        ]


def first_request(bench: Bench, target: Target, url: str) -> httpx.Response:
    """The row's first request, as its load sends them."""
    headers = dict(bench.headers.get(target.auth, {}))
    if target.auth == "cc":
        return httpx.post(url, headers=headers, data={"grant_type": "client_credentials"})
    if target.auth == "dpop" and bench.scripts is not None:
        key, token = bench.scripts.key, bench.scripts.bound
        headers["DPoP"] = make_proof(key, "GET", url, now=time.time(), access_token=token)
    return httpx.get(url, headers=headers, timeout=10.0)


def warm(bench: Bench, all_targets: list[Target]) -> None:
    for target in all_targets:
        url = bench.bases[target.server] + target.path
        r = first_request(bench, target, url)
        if r.status_code != 200:
            # A row's first request must answer 200: a bench of errors is worth nothing.
            raise RuntimeError(
                f"{target.label}: {r.request.method} {url} answered {r.status_code}: {r.text[:200]}"
            )
        script = bench.scripts.for_target(target, url) if bench.scripts is not None else []
        wrk(url, 1, target.connections, bench.headers.get(target.auth, {}), script)


# -- P5: logins against the event loop ---------------------------------------------


def client_process(*args: str, timeout: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.clients", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout: float) -> dict[str, float]:
    out, _ = process.communicate(timeout=timeout + 60)
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def p5(base: str, token: str, seconds: float) -> dict[str, dict[str, float]]:
    """The guarded probe and the loop lag, alone and while 20 logins run."""
    out: dict[str, dict[str, float]] = {}
    httpx.post(base + "/bench/lag")  # the loop-lag watcher runs during P5 only
    for phase, with_logins in (("quiet", False), ("20 logins", True)):
        httpx.get(base + "/bench/lag")  # resets the lag record
        storm = None
        if with_logins:
            storm = client_process(
                "logins", base, "--username", USERNAME, "--password", PASSWORD,
                "--concurrency", "20", "--duration", str(seconds + 2), timeout=seconds + 60,
            )  # fmt: skip
            time.sleep(2)  # the storm is running before the probe starts
            httpx.get(base + "/bench/lag")
        probe = client_process(
            "probe", base, "--token", token, "--duration", str(seconds), "--rate", "50",
            timeout=seconds + 60,
        )  # fmt: skip
        result = finish(probe, seconds + 60)
        lag = httpx.get(base + "/bench/lag", timeout=30).json()
        result.update({f"lag_{k}": v for k, v in lag.items()})
        if storm is not None:
            result.update({f"logins_{k}": v for k, v in finish(storm, seconds + 60).items()})
        out[phase] = result
    httpx.delete(base + "/bench/lag")
    return out


# -- the report --------------------------------------------------------------------

COLUMNS = [
    "route", "revocation checked", "req/s median (range)", "p50 ms", "p99 ms", "CPU us/req",
    "errors",
]  # fmt: skip


def report(bench: Bench, all_targets: list[Target], p5_result: dict, sessions: dict) -> str:
    lines = [harness.table(COLUMNS, [bench.row(t) for t in all_targets]), ""]
    rows = [
        ["mounting: gated / plain, dict route", ">= 0.95",
         ratio_summary(bench.ratios("gated-dict", "plain-dict"))],
        ["mounting: gated / plain, jsonify route", ">= 0.95",
         ratio_summary(bench.ratios("gated-jsonify", "plain-jsonify"))],
        ["P1: /auth/me / bare jsonify route (same app)", ">= 0.80",
         ratio_summary(bench.ratios("me", "gated-jsonify"))],
        ["P1: /auth/me / bare dict route (same app)", ">= 0.80",
         ratio_summary(bench.ratios("me", "gated-dict"))],
    ]  # fmt: skip
    for w in (1, 2):
        peers = (f"peer-sync{w}", f"peer-gthread{w}")
        rows += [
            [f"P2: /auth/me / peer sync, {w} worker(s)", ">= 2",
             ratio_summary(bench.ratios(f"me{w}-200", f"peer-sync{w}"))],
            [f"P2: /auth/me / peer gthread(8), {w} worker(s)", ">= 2",
             ratio_summary(bench.ratios(f"me{w}-200", f"peer-gthread{w}"))],
            [f"P2: 50 ms route / peer gthread(8), {w} worker(s)", ">= 10",
             ratio_summary(bench.ratios(f"io{w}-200", f"peer-io{w}"))],
            [f"reference: 50 ms route, near checks off / peer gthread(8), {w} worker(s)", "",
             ratio_summary(bench.ratios(f"wait-io{w}-200", f"peer-io{w}"))],
            [f"reference: /auth/me, near checks off / peer's best, {w} worker(s)", "",
             ratio_summary(bench.against_best(f"wait-me{w}-200", peers, "rps"))],
            [f"reference: host app's 50 ms route, no guard / peer, {w} worker(s)", "",
             ratio_summary(bench.ratios(f"sleep{w}-200", f"peer-io{w}"))],
            [f"P2: p99 /auth/me / peer's best p99, {w} worker(s)", "<= 1",
             ratio_summary(bench.against_best(f"me{w}-200", peers, "p99_ms"))],
        ]  # fmt: skip
    for w in (1, 2):
        async_me, async_io = (f"fau-me{w}", f"authx-me{w}"), (f"fau-io{w}", f"authx-io{w}")
        rows += [
            [f"async peers: /auth/me / best async peer's protected, {w} worker(s)", ">= 1.5",
             ratio_summary(bench.against_best(f"me{w}-200", async_me, "rps"))],
            [f"async peers: p99 /auth/me / best async peer's p99, {w} worker(s)", "<= 1",
             ratio_summary(bench.against_best(f"me{w}-200", async_me, "p99_ms"))],
            [f"async peers: 50 ms route / best async peer's 50 ms route, {w} worker(s)", ">= 1",
             ratio_summary(bench.against_best(f"io{w}-200", async_io, "rps"))],
            [f"simplejwt: /auth/me / its best protected, {w} worker(s)", "",
             ratio_summary(bench.against_best(
                 f"me{w}-200", (f"sjwt-sync{w}", f"sjwt-gthread{w}"), "rps"))],
            [f"guard on a real route: 50 ms guarded / unguarded, {w} worker(s)", ">= 0.85",
             ratio_summary(bench.ratios(f"io{w}-200", f"sleep{w}-200"))],
            [f"guard on a real route: CPU us/req guarded / unguarded, {w} worker(s)", "",
             ratio_summary(bench.cpu_ratios(f"io{w}-200", f"sleep{w}-200"))],
            [f"reference: 50 ms guarded, near checks off / unguarded, {w} worker(s)", "",
             ratio_summary(bench.ratios(f"wait-io{w}-200", f"sleep{w}-200"))],
            [f"50 ms route, {w} worker(s) / Flask-JWT-Extended's best configuration", ">= 10",
             ratio_summary(bench.against_best(f"io{w}-200", ("peer-io1", "peer-io2"), "rps"))],
        ]  # fmt: skip
    rows += [
        ["fast path: /auth/me / same without the pipelined Redis path", "> 1",
         ratio_summary(bench.ratios("me", "me-redis-py"))],
        ["fast path: /auth/me / same without the claims cache", "> 1",
         ratio_summary(bench.ratios("me", "me-no-cache"))],
        ["API key: CPU us/req of /auth/me with a key / with a bearer token", "<= 1.1",
         ratio_summary(bench.cpu_ratios("me-key", "me"))],
        ["DPoP: CPU us/req of /auth/me with a bound token / with a bearer token", "<= 1.5",
         ratio_summary(bench.cpu_ratios("me-dpop", "me"))],
        ["client credentials: token fetches per second, 1 worker", ">= 500",
         ratio_summary(bench.per_round("cc-fetch"))],
    ]  # fmt: skip
    rows = [r for r in rows if "n/a" not in r[2]]
    if p5_result:
        rows += p5_rows(p5_result)
    if sessions:
        rows.append(
            [f"/auth/me req/s, 0 / {sessions['count']:,} ended sessions", "<= 1.1",
             ratio_summary(sessions["ratios"])]
        )  # fmt: skip
    if rows:
        lines.append(harness.table(["ratio", "target", "median (range over rounds)"], rows))
    return "\n".join(lines)


def p5_rows(p5_result: dict) -> list[list[str]]:
    quiet, storm, before = p5_result["quiet"], p5_result["20 logins"], p5_result["before"]
    return [
        ["P5: guarded p99 ms, 20 logins (no logins; hashing as before)", "< 20",
         f"{storm['p99_ms']:.1f} ({quiet['p99_ms']:.1f}; {before['p99_ms']:.1f})"],
        ["P5: loop lag p99 ms, 20 logins (no logins; hashing as before)", "< 20",
         f"{storm['lag_p99_ms']:.1f} ({quiet['lag_p99_ms']:.1f}; {before['lag_p99_ms']:.1f})"],
        ["P5: logins per second (hashing as before)", "",
         f"{storm['logins_per_second']:.1f} ({before['logins_per_second']:.1f})"],
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    parser.add_argument(
        "--sessions",
        type=int,
        default=SESSIONS,
        help=f"ended sessions for the last part; 0 skips it (default {SESSIONS:,})",
    )
    parser.add_argument("--only", default="", help="comma-separated target keys (for profiling)")
    parser.add_argument("--no-p5", action="store_true", help="skip P5")
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also /auth/me without the pipelined Redis path, and without the claims cache",
    )
    parser.add_argument(
        "--png",
        default=None,
        help=f"where to draw the picture (default: {DEFAULT_PNG.relative_to(ROOT)} "
        "unless --only is given)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.rounds < 1 or args.seconds <= 0 or args.sessions < 0:
        parser.error("--rounds >= 1, --seconds > 0, --sessions >= 0")
    for venv in (PEER_VENV, *(peer_venv(n) for n in (*ASYNC_PEERS, DJANGO_PEER))):
        if not (venv / ".installed").exists():
            raise SystemExit(f"a peer's venv is missing: run make bench (it builds {venv})")
    started = time.monotonic()
    print(f"machine: {harness.machine()}; load average {os.getloadavg()[0]:.1f} at start")
    all_targets = targets(args.ablations)
    if args.only:
        keep = set(args.only.split(","))
        all_targets = [t for t in all_targets if t.key in keep]
    processes: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="tokengate-bench-") as name:
        tmp = Path(name)
        try:
            redis_port, env = start_storage(tmp, processes)
            bases: dict[str, str] = {}
            groups: dict[str, int] = {}
            servers = {t.server for t in all_targets} | {"gated1"}
            if not args.no_p5:
                servers.add("legacy")
            for server, factory, workers in (
                ("plain", "bench.host:plain", 1),
                ("plain2", "bench.host:plain", 2),
                ("gated1", "bench.host:gated", 1),
                ("gated2", "bench.host:gated", 2),
                ("legacy", "bench.host:gated", 1),
                ("without-pipelined-redis", "bench.host:gated", 1),
                ("without-claims-cache", "bench.host:gated", 1),
                ("wait1", "bench.host:gated", 1),
                ("wait2", "bench.host:gated", 2),
            ):
                if server in servers:
                    process, bases[server] = start_app(tmp, env, factory, server, workers)
                    processes.append(process)
                    groups[server] = process.pid
            secret = env["TOKENGATE_SECRET_KEY"]
            for server, workers, threads in (
                ("sync1", 1, 1), ("sync2", 2, 1), ("gthread1", 1, 8), ("gthread2", 2, 8),
            ):  # fmt: skip
                if server in servers:
                    process, bases[server] = start_peer(
                        tmp, redis_port, secret, server, workers, threads
                    )
                    processes.append(process)
                    groups[server] = process.pid
            tokens: dict[str, str] = {}
            # fastapi-users: its tables first (once, so two workers never race), then
            # the user registered and logged in through its own routers.
            fau_env = peer_env(redis_port, secret, 2, tmp / "fastapi_users.db")
            if servers & {"fau1", "fau2"}:
                peer_setup("fastapi_users_redis", ["app.py"], fau_env, tmp)
            authx_env = peer_env(redis_port, secret, 3)
            # simplejwt: Django's migrations (auth, the blacklist's tables), then its user.
            sjwt_env = peer_env(redis_port, secret, 4, tmp / "simplejwt.db")
            if any(s.startswith("sjwt-") for s in servers):
                peer_setup(DJANGO_PEER, ["manage.py", "migrate", "--noinput"], sjwt_env, tmp)
                create = (
                    "from django.contrib.auth.models import User; "
                    f"User.objects.create_user({USERNAME!r}, password={PASSWORD!r})"
                )
                peer_setup(DJANGO_PEER, ["manage.py", "shell", "-c", create], sjwt_env, tmp)
            for server, kind, workers, threads in (
                ("fau1", "fastapi_users_redis", 1, 0), ("fau2", "fastapi_users_redis", 2, 0),
                ("authx1", "authx_redis", 1, 0), ("authx2", "authx_redis", 2, 0),
                ("sjwt-sync1", DJANGO_PEER, 1, 1), ("sjwt-sync2", DJANGO_PEER, 2, 1),
                ("sjwt-gthread1", DJANGO_PEER, 1, 8), ("sjwt-gthread2", DJANGO_PEER, 2, 8),
            ):  # fmt: skip
                if server not in servers:
                    continue
                if kind == DJANGO_PEER:
                    process, bases[server] = start_django_peer(
                        tmp, sjwt_env, server, workers, threads
                    )
                else:
                    kind_env = fau_env if kind == "fastapi_users_redis" else authx_env
                    process, bases[server] = start_uvicorn_peer(
                        tmp, kind, kind_env, server, workers
                    )
                processes.append(process)
                groups[server] = process.pid
            token = access_token(bases["gated1"])
            tokens["ours"] = token
            tokens["key"] = api_key(bases["gated1"], token)
            scripts = Scripts(tmp)
            if any(t.auth == "dpop" for t in all_targets):
                scripts.key = generate_key()
                scripts.bound = dpop_bench.login(bases["gated1"], scripts.key, USERNAME, PASSWORD)
            cc_auth = ""
            if any(t.auth == "cc" for t in all_targets):
                client_id, secret = cc_bench.register_client(env, tmp)
                cc_auth = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
            for auth, candidates, fetch in (
                ("peer", ("gthread1", "sync1", "gthread2", "sync2"), peer_token),
                ("fau", ("fau1", "fau2"), fastapi_users_token),
                ("authx", ("authx1", "authx2"), peer_token),
                ("sjwt", ("sjwt-gthread1", "sjwt-sync1", "sjwt-gthread2", "sjwt-sync2"),
                 simplejwt_token),
            ):  # fmt: skip
                base = next((bases[s] for s in candidates if s in bases), None)
                if base is not None:
                    tokens[auth] = fetch(base)
            headers = {k: {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}
            headers["dpop"] = {"Authorization": f"DPoP {scripts.bound}"}
            headers["cc"] = {"Authorization": cc_auth}
            bench = Bench(bases, groups, headers, args.seconds, scripts)
            print("warming up ...", flush=True)
            warm(bench, all_targets)
            load_averages: list[float] = []
            for number in range(1, args.rounds + 1):
                load_averages.append(os.getloadavg()[0])
                print(
                    f"round {number}/{args.rounds} (load average {load_averages[-1]:.1f})",
                    flush=True,
                )
                for target in all_targets:
                    load = bench.measure(target)
                    print(
                        f"  {target.label}: {load.rps:,.0f} req/s, p99 {load.p99_ms:.1f} ms"
                        + (f", {load.errors} errors" if load.errors else ""),
                        flush=True,
                    )
            load_averages.append(os.getloadavg()[0])
            # The rounds' table now, so that a failure in the parts below loses nothing.
            print(harness.table(COLUMNS, [bench.row(t) for t in all_targets]), flush=True)
            p5_result: dict = {}
            if not args.no_p5:
                print("P5: 20 logins against the loop ...", flush=True)
                register_storm_users(bases["gated1"])
                p5_result = p5(bases["gated1"], token, 8.0)
                print(f"  {json.dumps(p5_result)}", flush=True)
                print("P5, hashing as before (default executor) ...", flush=True)
                p5_result["before"] = p5(bases["legacy"], token, 8.0)["20 logins"]
                print(f"  {json.dumps(p5_result['before'])}", flush=True)
            sessions: dict = {}
            if args.sessions and "me" in {t.key for t in all_targets}:
                before = len(bench.samples["me"].loads)
                print(f"writing {args.sessions:,} ended sessions ...", flush=True)
                took = fill(redis_port, args.sessions)
                used, keys = redis_memory(redis_port)
                print(f"  written in {took:.1f} s: {keys:,} keys, {mib(used)}", flush=True)
                me = next(t for t in all_targets if t.key == "me")
                bare = next(t for t in all_targets if t.key == "gated-jsonify")
                full = Bench(bases, groups, headers, args.seconds, scripts)
                for _ in range(args.rounds):
                    full.measure(bare)
                    full.measure(me)
                # Each round's me/bare with none, over the same with a million.
                empty = [
                    a.rps / b.rps
                    for a, b in zip(
                        bench.samples["me"].loads[:before],
                        bench.samples["gated-jsonify"].loads[:before],
                        strict=True,
                    )
                ]
                filled = full.ratios("me", "gated-jsonify")
                sessions = {
                    "count": args.sessions,
                    "ratios": [statistics.median(empty) / r for r in filled],
                }
        finally:
            for process in reversed(processes):
                process.stop()
    print()
    print(report(bench, all_targets, p5_result, sessions))
    rounds = ", ".join(f"{x:.1f}" for x in load_averages[:-1])
    caption = (
        f"1-minute load average at the start of each round: {rounds}; "
        f"{load_averages[-1]:.1f} after the last"
    )
    print(
        f"\n(took {time.monotonic() - started:.0f} s; {caption}; "
        f"{os.getloadavg()[0]:.1f} at the end)"
    )
    png = args.png if args.png is not None else (None if args.only else DEFAULT_PNG)
    if png is not None:
        from . import plot

        plot.draw([(t.label, bench.samples[t.key]) for t in all_targets], caption, Path(png))
        print(f"wrote {png}")
    broken = [t.label for t in all_targets if sum(x.errors for x in bench.samples[t.key].loads)]
    if broken:
        # A row with errors measured error responses: not a result.
        print("BROKEN (errors in these rows, not results): " + "; ".join(broken))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
