"""The fallback load generator (used when ``wrk`` is not installed): asyncio + httpx.

Run as its own process (``python -m bench.loader URL ...``) so that it never
shares an interpreter with the server it measures. It keeps ``--connections``
requests in flight for ``--warmup`` seconds (not recorded), then for
``--duration`` seconds, and prints one JSON object: requests, errors, rps,
p50_ms, p99_ms. It is much slower than wrk: on a small machine it, not the
server, may be the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(
    url: str, connections: int, warmup: float, duration: float, headers: dict[str, str]
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def worker() -> None:
        # One client (one keep-alive connection) per worker: a single shared pool
        # of 64 connections spends more time in its own bookkeeping than in I/O.
        nonlocal errors
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    response = await client.get(url, headers=headers)
                    ok = 200 <= response.status_code < 400
                except httpx.HTTPError:
                    ok = False
                t1 = time.perf_counter()
                if t0 >= measure_from and t1 <= stop_at:
                    latencies.append(t1 - t0)
                    if not ok:
                        errors += 1

    await asyncio.gather(*(worker() for _ in range(connections)))
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / duration,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loader")
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    coro = run(args.url, args.connections, args.warmup, args.duration, headers)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
