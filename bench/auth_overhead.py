"""What the guard costs: ``python -m bench.auth_overhead`` (``make bench``).

One run, one process tree, loopback only:

1. a private redis-server (the binary the service itself would use) on a free
   127.0.0.1 port, a temporary SQLite database migrated to head, a temporary
   instance folder;
2. the service, under uvicorn (uvloop, httptools, one worker) as ``serve``
   runs it, built by ``bench.app:create``: the real app plus one unauthenticated
   route, ``GET /bench/bare``;
3. a user registered and logged in over HTTP;
4. ``GET /bench/bare`` and ``GET /auth/me`` (Bearer token: JWT check plus one
   Redis ``EVALSHA``) measured with the same load generator; then 1,000,000
   ended sessions written into Redis in the service's key layout, spread over
   100,000 users, and both routes measured again. Each route is measured
   ``--repeat`` times (default 2), alternating with the other, and the run
   with the most req/s is kept: other work on the machine only ever slows a
   run down.

It prints req/s, p50 and p99 for each, the me/bare ratio and Redis memory, and
stops every process it started (by PID) whatever happens.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from . import harness
from .harness import HOST, ROOT, Load, Process

SESSIONS = 1_000_000
USERS = 100_000
# Far from the ids SQLite gives real users (1, 2, ...), so nothing collides.
FIRST_UID = 10_000_000
BATCH = 10_000
USERNAME, PASSWORD = "bench-user", "bench-password-1234"


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
        }
    )
    return env


def start_service(tmp: Path, env: dict[str, str]) -> tuple[Process, str]:
    port = harness.free_port()
    args = [
        sys.executable, "-m", "uvicorn", "bench.app:create", "--factory",
        "--host", HOST, "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--lifespan", "on", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    # The working directory is the temporary folder, so no stray .env is read.
    process = Process("service", args, env=env, cwd=tmp, log=tmp / "service.log")
    base = f"http://{HOST}:{port}"
    harness.wait_http(f"{base}/healthz", process)
    return process, base


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


@dataclass
class RouteResult:
    """The kept (fastest) run of one route, plus the errors of all its runs."""

    load: Load
    cpu_us: list[float]  # per request: service, redis-server
    calls: dict[str, float]  # Redis commandstats calls per HTTP request, by command
    evalsha_us: float  # Redis's own time per EVALSHA (commandstats usec / calls)
    errors: int = 0

    def calls_text(self) -> str:
        """EVALSHA first, then what the script ran inside it (Redis counts those too)."""
        if not self.calls:
            return "none"
        names = sorted(self.calls, key=lambda n: (n != "evalsha", n))
        return ", ".join(f"{n.upper()} {self.calls[n]:.2f}" for n in names)


class RedisCounters:
    """``INFO commandstats`` read around a measured window (the probe's own INFO left out)."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(host=HOST, port=port)
        self.marks: dict[str, dict[str, tuple[int, int]]] = {}

    def __call__(self, mark: str) -> None:
        stats = self.client.info("commandstats")
        self.marks[mark] = {
            name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()
            if name != "cmdstat_info"
        }

    def delta(self, requests: int) -> tuple[dict[str, float], float]:
        """Calls per request by command (those that moved) and µs per EVALSHA."""
        start, end = self.marks["start"], self.marks["end"]
        calls: dict[str, float] = {}
        for name, (count, _) in end.items():
            per_request = (count - start.get(name, (0, 0))[0]) / max(requests, 1)
            # Rarer than one call per 200 requests: a new pooled connection's HELLO
            # and CLIENT SETINFO, not something each request does.
            if per_request >= 0.005:
                calls[name] = per_request
        evalsha_calls = end.get("evalsha", (0, 0))[0] - start.get("evalsha", (0, 0))[0]
        evalsha_usec = end.get("evalsha", (0, 0))[1] - start.get("evalsha", (0, 0))[1]
        return calls, evalsha_usec / evalsha_calls if evalsha_calls else 0.0

    def close(self) -> None:
        self.client.close()


def measure_routes(
    base: str, bearer: dict[str, str], groups: list[int], redis_port: int, count: int, repeat: int
) -> dict[str, RouteResult]:
    """Both routes, alternating, ``repeat`` times each; per route the run with the
    most req/s is kept (with the errors of all runs)."""
    kept: dict[str, RouteResult] = {}
    counters = RedisCounters(redis_port)
    try:
        for attempt in range(1, repeat + 1):
            for route, headers in (("/bench/bare", {}), ("/auth/me", bearer)):
                print(f"  {count:,} ended sessions: GET {route} #{attempt} ...", flush=True)
                load, cpu = harness.measure(base + route, headers, groups, counters)
                calls, evalsha_us = counters.delta(load.requests)
                result = RouteResult(load=load, cpu_us=cpu, calls=calls, evalsha_us=evalsha_us)
                print(
                    f"    {load.rps:,.0f} req/s, p50 {load.p50_ms:.2f} ms, "
                    f"p99 {load.p99_ms:.2f} ms; CPU/request: service {cpu[0]:.0f} µs, "
                    f"redis {cpu[1]:.0f} µs; Redis calls/request: {result.calls_text()}; "
                    f"{load.errors} errors",
                    flush=True,
                )
                previous = kept.get(route)
                result.errors = load.errors + (previous.errors if previous else 0)
                if previous is None or load.rps > previous.load.rps:
                    kept[route] = result
                else:
                    previous.errors = result.errors
    finally:
        counters.close()
    return kept


def report(
    counts: list[int],
    results: dict[int, dict[str, RouteResult]],
    memory: dict[int, tuple[int, int]],
) -> str:
    header = ["", *(f"{c:,} ended sessions" for c in counts)]
    rows: list[list[str]] = []

    def row(label: str, cell: Callable[[int], str]) -> None:
        rows.append([label, *(cell(c) for c in counts)])

    for route in ("/bench/bare", "/auth/me"):
        row(f"GET {route} req/s", lambda c, r=route: f"{results[c][r].load.rps:,.0f}")
        row(
            f"GET {route} p50 / p99 ms",
            lambda c, r=route: f"{results[c][r].load.p50_ms:.2f} / {results[c][r].load.p99_ms:.2f}",
        )
        row(
            f"GET {route} CPU µs/req: service + redis",
            lambda c, r=route: f"{results[c][r].cpu_us[0]:.0f} + {results[c][r].cpu_us[1]:.0f}",
        )
    row(
        "me / bare, req/s",
        lambda c: f"{results[c]['/auth/me'].load.rps / results[c]['/bench/bare'].load.rps:.2f}",
    )
    row(
        "me - bare, service CPU µs/req",
        lambda c: f"{results[c]['/auth/me'].cpu_us[0] - results[c]['/bench/bare'].cpu_us[0]:.0f}",
    )
    row("Redis calls per /auth/me", lambda c: results[c]["/auth/me"].calls_text())
    row("Redis calls per /bench/bare", lambda c: results[c]["/bench/bare"].calls_text())
    row("Redis µs per EVALSHA", lambda c: f"{results[c]['/auth/me'].evalsha_us:.1f}")
    row("errors (all runs)", lambda c: str(sum(r.errors for r in results[c].values())))
    row("Redis keys", lambda c: f"{memory[c][1]:,}")
    row("Redis used_memory", lambda c: mib(memory[c][0]))
    return harness.table(header, rows)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.auth_overhead", description=__doc__)
    parser.add_argument(
        "--sessions",
        type=int,
        default=SESSIONS,
        help=f"ended sessions to add (default {SESSIONS:,})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="measure each route this many times, alternating, and keep the best (default 2)",
    )
    args = parser.parse_args()
    if args.sessions < 1 or args.repeat < 1:
        parser.error("--sessions and --repeat must be at least 1")
    started = time.monotonic()
    print(f"machine: {harness.machine()}")
    harness.announce_loader()
    print("service: uvicorn (uvloop, httptools), 1 worker; Redis and SQLite private, loopback")
    print("loader, service and redis-server share the same cores")
    counts = [0, args.sessions]
    results: dict[int, dict[str, RouteResult]] = {}
    memory: dict[int, tuple[int, int]] = {}
    processes: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="tokengate-bench-") as name:
        tmp = Path(name)
        try:
            redis_process, redis_port = start_redis(tmp)
            processes.append(redis_process)
            database_url = f"sqlite+aiosqlite:///{tmp / 'tokengate.db'}"
            from quart_tokengate.service.db.migrate import upgrade

            upgrade(database_url)
            env = service_env(tmp, redis_port, database_url)
            service, base = start_service(tmp, env)
            processes.append(service)
            bearer = {"Authorization": f"Bearer {access_token(base)}"}
            groups = [service.pid, redis_process.pid]

            memory[0] = redis_memory(redis_port)
            results[0] = measure_routes(base, bearer, groups, redis_port, 0, args.repeat)
            print(f"  writing {args.sessions:,} ended sessions ...", flush=True)
            took = fill(redis_port, args.sessions)
            print(f"  written in {took:.1f} s", flush=True)
            memory[args.sessions] = redis_memory(redis_port)
            results[args.sessions] = measure_routes(
                base, bearer, groups, redis_port, args.sessions, args.repeat
            )
        finally:
            for process in reversed(processes):
                process.stop()
    print()
    print(report(counts, results, memory))
    print(f"\n(took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
