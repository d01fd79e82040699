"""Where the guard's CPU goes on the 50 ms route: py-spy under the bench's load.

``python -m bench.profile_guard [--workers N] [--seconds S]``: serves
``bench.host:gated`` (``/bench/io``: guarded, then 50 ms) and ``bench.host:plain``
(``/bench/sleep``: the same route without the guard) with N workers, as
``bench.run`` does, loads each with wrk (1 thread, 200 connections) and records
it with ``py-spy record --format raw`` meanwhile (every worker: ``--subprocesses``).
Each sample is put in the first group (below) that one of its frames belongs to;
a group's share of the samples times the measured CPU per request is its µs per
request. Needs py-spy (the [dev] extra) and root or ptrace rights.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import tempfile
import time
from pathlib import Path

from . import harness
from .harness import Process
from .run import access_token, start_app, start_storage, wrk

# (group, substrings of a frame "function (file)"); the first group that matches wins.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("guard: Redis call (pipelined client)", ("store/pipelined.py",)),
    ("guard: Redis call (redis-py)", ("redis/",)),
    ("guard: near checks", ("store/near.py",)),
    ("guard: session outcome", ("sessions/checking.py", "store/results.py")),
    ("guard: token read, claims cache, JWT", ("credentials/", "tokens.py", "jwt/")),
    ("guard: the rest of guard.py", ("service/guard.py",)),
    ("TokenGate hooks (timer, metrics, log)", ("service/observe.py", "service/cookies.py",
                                                "prometheus_client", "service/metrics.py")),
    ("TokenGate: other service code", ("/service/",)),
    ("asyncio.sleep (timer handle)", ("sleep (asyncio/tasks.py)",)),
    ("Quart / Werkzeug per-request machinery", ("quart/", "werkzeug/")),
    ("uvicorn, httptools, the event loop and the rest", ("",)),
]  # fmt: skip


def group_of(stack: str) -> str:
    frames = stack.split(";")
    for name, needles in GROUPS:
        for frame in frames:
            if any(n in frame for n in needles):
                return name
    return GROUPS[-1][0]


def profile(
    base: str, path: str, headers: dict[str, str], pid: int, seconds: float, out: Path
) -> tuple[harness.Load, float, collections.Counter[str], int]:
    url = base + path
    wrk(url, 2, 200, headers)  # warm-up
    spy = subprocess.Popen(
        ["py-spy", "record", "-r", "250", "-d", str(int(seconds) + 1), "--subprocesses",
         "--nonblocking", "--format", "raw", "-o", str(out), "--pid", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    before = harness.group_cpu_seconds(pid)
    load = wrk(url, seconds, 200, headers)
    cpu = (harness.group_cpu_seconds(pid) - before) / max(load.requests, 1) * 1e6
    spy.wait(seconds + 30)
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "idle" in stack or not n.isdigit():
            continue
        counts[group_of(stack)] += int(n)
        total += int(n)
    return load, cpu, counts, total


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_guard")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--raw", default="", help="keep py-spy's raw stacks in this folder")
    args = parser.parse_args()
    processes: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="tokengate-profile-") as name:
        tmp = Path(name)
        try:
            _, env = start_storage(tmp, processes)
            gated, gated_base = start_app(tmp, env, "bench.host:gated", "gated", args.workers)
            processes.append(gated)
            plain, plain_base = start_app(tmp, env, "bench.host:plain", "plain", args.workers)
            processes.append(plain)
            headers = {"Authorization": f"Bearer {access_token(gated_base)}"}
            results = {}
            for label, base, path, hdrs, pid in (
                ("guarded /bench/io", gated_base, "/bench/io", headers, gated.pid),
                ("unguarded /bench/sleep", plain_base, "/bench/sleep", {}, plain.pid),
            ):
                out = Path(args.raw or tmp) / f"{path.strip('/').replace('/', '-')}.txt"
                results[label] = profile(base, path, hdrs, pid, args.seconds, out)
        finally:
            for process in reversed(processes):
                process.stop()
    print(f"{args.workers} worker(s), wrk 1 thread, 200 connections, {args.seconds:g} s; "
          f"py-spy 250 Hz, every worker")  # fmt: skip
    groups = [g for g, _ in GROUPS]
    rows = []
    for label, (load, cpu, _, _) in results.items():
        rows.append([label, f"{load.rps:,.0f}", f"{load.p99_ms:.1f}", f"{cpu:.0f}",
                     str(load.errors)])  # fmt: skip
    print(harness.table(["route", "req/s", "p99 ms", "CPU us/req", "errors"], rows))
    print()
    rows = []
    for group in groups:
        cells = [group]
        for _, cpu, counts, total in results.values():
            share = counts[group] / max(total, 1)
            cells.append(f"{share * 100:.1f} % = {share * cpu:.0f} us")
        rows.append(cells)
    print(harness.table(["where (share of samples = us/req)", *results], rows))


if __name__ == "__main__":
    main()
