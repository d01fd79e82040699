"""Quart under uvicorn, granian and hypercorn: ``python -m bench.servers``.

One run serves ``bench.hello:app`` (``GET /hello`` -> ``{"ok": true}``) under
each server in turn, each its own process on 127.0.0.1 with one worker, loads
it with the same generator (wrk when installed, else ``bench.loader``) from a
separate process, and prints req/s, p50 and p99. Every process it starts is
stopped by PID before the next server starts, and at the end whatever happens.

The loader and the server share the machine's cores: on a 2-core machine the
figures are a comparison between servers, not a capacity figure.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import tempfile
import time
from pathlib import Path

from . import harness
from .harness import HOST, ROOT, Load, Process

APP = "bench.hello:app"
SERVING = "quart_tokengate.service.serving"


def commands(port: int) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "uvicorn": [
            py, "-m", "uvicorn", APP, "--host", HOST, "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--lifespan", "on",
            "--no-access-log", "--log-level", "warning",
        ],
        "granian": [
            py, "-m", "granian", "--interface", "asgi", "--host", HOST, "--port", str(port),
            "--workers", "1", "--loop", "uvloop", "--log-level", "warning", APP,
        ],
        "hypercorn": [
            py, "-m", "hypercorn", "--bind", f"{HOST}:{port}", "--workers", "1",
            "--worker-class", "uvloop", "--log-level", "warning", APP,
        ],
        # uvicorn as ``serve`` runs it: its own loop and the bounded protocol
        # (deadlines on receiving, the connection limit), then the same without
        # the bounds, to show what they cost.
        "serve": [
            py, "-m", "uvicorn", APP, "--host", HOST, "--port", str(port),
            "--loop", f"{SERVING}:new_event_loop", "--http", f"{SERVING}:BoundedHttpProtocol",
            "--lifespan", "on", "--no-access-log", "--no-server-header", "--log-level", "warning",
        ],
        "serve-unbounded": [
            py, "-m", "uvicorn", APP, "--host", HOST, "--port", str(port),
            "--loop", f"{SERVING}:new_event_loop", "--http", "httptools",
            "--lifespan", "on", "--no-access-log", "--no-server-header", "--log-level", "warning",
        ],
    }  # fmt: skip


LABELS = {
    "uvicorn": "uvicorn (uvloop, httptools)",
    "granian": "granian (asgi, uvloop)",
    "hypercorn": "hypercorn (uvloop worker)",
    "serve": "serve: own loop, bounded httptools",
    "serve-unbounded": "serve without the bounds",
}


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def bench_server(name: str, logs: Path) -> tuple[Load, float]:
    port = harness.free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = Process(name, commands(port)[name], env=env, cwd=ROOT, log=logs / f"{name}.log")
    try:
        url = f"http://{HOST}:{port}/hello"
        harness.wait_http(url, process)
        load, (cpu,) = harness.measure(url, cpu_groups=[process.pid])
        return load, cpu
    finally:
        process.stop()


def row(label: str, load: Load, cpu: float, errors: int) -> list[str]:
    return [
        label,
        f"{load.rps:,.0f}",
        f"{load.p50_ms:.2f}",
        f"{load.p99_ms:.2f}",
        f"{cpu:,.0f}",
        str(errors),
    ]


HEADERS = ["server", "req/s", "p50 ms", "p99 ms", "server CPU µs/req", "errors"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="run the servers this many times, interleaved (default 2); the summary keeps "
        "each server's fastest round",
    )
    parser.add_argument(
        "--only", choices=sorted(LABELS), action="append", help="run only this server"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    names = args.only or ["uvicorn", "serve-unbounded", "serve", "granian", "hypercorn"]
    started = time.monotonic()
    print(f"machine: {harness.machine()}")
    print(
        "versions: "
        + ", ".join(f"{d} {version(d)}" for d in ("quart", "uvicorn", "granian", "hypercorn"))
    )
    harness.announce_loader()
    print("each server: 1 worker on 127.0.0.1; loader and server share the same cores")
    rounds: list[list[str]] = []
    best: dict[str, tuple[Load, float]] = {}
    errors: dict[str, int] = dict.fromkeys(names, 0)
    with tempfile.TemporaryDirectory(prefix="tokengate-bench-") as tmp:
        for round_no in range(1, args.rounds + 1):
            for name in names:
                print(f"  {LABELS[name]}, round {round_no} ...", flush=True)
                load, cpu = bench_server(name, Path(tmp))
                errors[name] += load.errors
                rounds.append(row(f"{LABELS[name]} #{round_no}", load, cpu, load.errors))
                if name not in best or load.rps > best[name][0].rps:
                    best[name] = (load, cpu)
    if args.rounds > 1:
        print("\nevery round:\n")
        print(harness.table(HEADERS, rounds))
        print(f"\nsummary: each server's fastest of {args.rounds} rounds (errors: all rounds)\n")
    else:
        print()
    summary = [row(LABELS[n], *best[n], errors[n]) for n in names]
    print(harness.table(HEADERS, summary))
    print(f"\n(took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
