"""Client-credentials token fetches per second per worker: ``python -m bench.client_credentials``.

One service worker (``bench.host:gated`` under uvicorn, as ``bench.run`` serves
it) on SQLite and a private redis-server; one service account's client,
registered with ``tokengate clients create``; wrk (one thread, 64
connections) posting ``grant_type=client_credentials`` with the secret in
HTTP Basic, for ``--seconds`` per round. Every fetch after the first reuses the
client's session (one SQL read, one Redis script, one token minted), so this
measures the endpoint itself. Prints req/s, latency and the server's CPU
per fetch; stops every process it started (by PID) before it exits.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from . import harness
from .harness import Process

GOAL = 500  # fetches per second per worker (Ory Hydra's published figure: 513/s on 2 vCPU)
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
"""


def register_client(env: dict[str, str], cwd: Path) -> tuple[str, str]:
    """A new client, through the command line an operator uses."""
    done = subprocess.run(
        [sys.executable, "-m", "quart_tokengate.service", "clients", "create", "bench"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    found = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    return found["client_id"], found["client_secret"]


def fetch_load(url: str, seconds: float, auth: str, script: Path) -> harness.Load:
    wrk_bin = harness.wrk_path()
    if wrk_bin is None:
        raise SystemExit("this benchmark needs wrk on PATH (apt-get install wrk)")
    args = [
        wrk_bin, "-t1", "-c64", f"-d{seconds:g}s", "--latency", "--timeout", "5s",
        "-s", str(script), "-H", f"Authorization: {auth}", url,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return harness.parse_wrk(done.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client_credentials", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=6.0, help="per round (default 6)")
    args = parser.parse_args(argv)
    from .run import start_app, start_storage  # run.py imports this module

    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds >= 1, --seconds > 0")
    print(f"machine: {harness.machine()}; load average {os.getloadavg()[0]:.1f} at start")
    processes: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="tokengate-bench-cc-") as name:
        tmp = Path(name)
        try:
            _, env = start_storage(tmp, processes)
            process, base = start_app(tmp, env, "bench.host:gated", "gated1")
            processes.append(process)
            client_id, secret = register_client(env, tmp)
            auth = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
            url = base + "/oauth/token"
            r = httpx.post(
                url, data={"grant_type": "client_credentials"}, headers={"Authorization": auth}
            )
            if r.status_code != 200:
                raise RuntimeError(f"the token endpoint answered {r.status_code}: {r.text[:200]}")
            script = tmp / "fetch.lua"
            script.write_text(WRK_SCRIPT)
            fetch_load(url, 2, auth, script)  # warm-up, thrown away
            rows: list[tuple[harness.Load, float]] = []
            for number in range(1, args.rounds + 1):
                before = harness.group_cpu_seconds(process.pid)
                load = fetch_load(url, args.seconds, auth, script)
                cpu = (harness.group_cpu_seconds(process.pid) - before) / max(load.requests, 1)
                rows.append((load, cpu * 1e6))
                print(
                    f"round {number}: {load.rps:,.0f} fetches/s, p50 {load.p50_ms:.1f} ms, "
                    f"p99 {load.p99_ms:.1f} ms, {cpu * 1e6:,.0f} CPU us/fetch, "
                    f"{load.errors} errors; load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                time.sleep(0.5)
        finally:
            for started in reversed(processes):
                started.stop()
    rps = [load.rps for load, _ in rows]
    cpu_us = [cpu for _, cpu in rows]
    print(
        harness.table(
            ["route", "fetches/s median (range)", "CPU us/fetch median", "goal", "errors"],
            [
                [
                    "POST /oauth/token (client_credentials, Basic), 1 worker, 64c",
                    f"{statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f})",
                    f"{statistics.median(cpu_us):,.0f}",
                    f">= {GOAL}/s; CPU-bound ceiling {1e6 / statistics.median(cpu_us):,.0f}/s",
                    str(sum(load.errors for load, _ in rows)),
                ]
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
