"""Clients for ``make bench``'s P5, each run as its own process, printing one JSON line.

``python -m bench.clients logins URL --concurrency 20 --duration S``: that many
login loops, loop ``i`` as user ``<username>-<i>``, counting successes.

``python -m bench.clients probe URL --token T --duration S --rate R``: one
``GET /auth/me`` every 1/R seconds (one at a time), and its latency p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def logins(url: str, username: str, password: str, concurrency: int, duration: float) -> dict:
    """``concurrency`` loops, loop ``i`` logging in as ``<username>-<i>`` (one account each:
    one account's checks take turns by design)."""
    done = errors = 0
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as http:

        async def loop(i: int) -> None:
            nonlocal done, errors
            body = {"username": f"{username}-{i}", "password": password}
            while time.monotonic() < deadline:
                try:
                    r = await http.post("/auth/login", json=body)
                except httpx.HTTPError:
                    errors += 1
                    continue
                if r.status_code == 200:
                    done += 1
                else:
                    errors += 1

        started = time.monotonic()
        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"logins": done, "errors": errors, "per_second": done / elapsed}


async def probe(url: str, token: str, duration: float, rate: float) -> dict:
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=10.0, headers=headers) as http:
        await http.get("/auth/me")  # the connection, opened before the clock starts
        deadline = time.monotonic() + duration
        next_at = time.monotonic()
        while next_at < deadline:
            started = time.perf_counter()
            r = await http.get("/auth/me")
            latencies.append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                errors += 1
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.clients")
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("logins")
    a.add_argument("url")
    a.add_argument("--username", required=True)
    a.add_argument("--password", required=True)
    a.add_argument("--concurrency", type=int, default=20)
    a.add_argument("--duration", type=float, default=10.0)
    b = sub.add_parser("probe")
    b.add_argument("url")
    b.add_argument("--token", required=True)
    b.add_argument("--duration", type=float, default=10.0)
    b.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    if args.command == "logins":
        result = asyncio.run(
            logins(args.url, args.username, args.password, args.concurrency, args.duration)
        )
    else:
        result = asyncio.run(probe(args.url, args.token, args.duration, args.rate))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
