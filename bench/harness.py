"""What both benchmarks share: processes stopped by PID, the load generator, tables.

Everything listens on and targets 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = 64
WARMUP = 2
DURATION = 6


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Process:
    """A child started in its own process group, so that stopping it (by its PID,
    which is also the group's id) takes its own workers with it."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log: Path,
    ) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.popen = subprocess.Popen(
            list(args),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        """Whether the child still runs; an exited child is left unreaped until ``stop``,
        so its PID (the group's id) cannot be reused while we may still signal it."""
        if self.popen.returncode is not None:
            return False
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    def tail(self, lines: int = 20) -> str:
        self._log_file.flush()
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM to the child's group (id = the child's PID), then SIGKILL to what is left."""
        try:
            if self.popen.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while self.alive() and time.monotonic() < deadline:
                    time.sleep(0.05)
                # The child is not reaped yet, so the group id is still ours: workers
                # that outlived their parent go too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        finally:
            self._log_file.close()


def wait_http(url: str, process: Process, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers with a status below 500, or fail with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited early:\n{process.tail()}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} did not answer {url} in {timeout:.0f} s:\n{process.tail()}")


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def wrk_path() -> str | None:
    """wrk's path, or None when it is missing or ``BENCH_LOADER=python`` asks for the fallback."""
    if os.environ.get("BENCH_LOADER") == "python":
        return None
    return shutil.which("wrk")


def loader_description() -> str:
    if wrk_path():
        return f"wrk, 1 thread, {CONNECTIONS} connections, {WARMUP} s warm-up + {DURATION} s"
    return (
        f"python -m bench.loader (asyncio + httpx), {CONNECTIONS} connections, "
        f"{WARMUP} s warm-up + {DURATION} s"
    )


def announce_loader() -> None:
    if wrk_path():
        print(f"load generator: {loader_description()}")
    elif os.environ.get("BENCH_LOADER") == "python":
        print(f"load generator (BENCH_LOADER=python): {loader_description()}")
    else:
        print(
            "load generator: wrk NOT FOUND on PATH (apt-get install wrk); falling back to "
            "the Python loader, which is far slower than wrk and may itself be the limit.\n"
            f"load generator: {loader_description()}",
        )


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"cannot read wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _find(pattern: str, output: str) -> str:
    match = re.search(pattern, output, re.M)
    if match is None:
        raise ValueError(f"wrk output without {pattern!r}:\n{output}")
    return match.group(1)


def parse_wrk(output: str) -> Load:
    rps = float(_find(r"Requests/sec:\s+([\d.]+)", output))
    p50 = _ms(_find(r"^\s+50%\s+(\S+)", output))
    p99 = _ms(_find(r"^\s+99%\s+(\S+)", output))
    total = int(_find(r"(\d+) requests in", output))
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    return Load(rps=rps, p50_ms=p50, p99_ms=p99, requests=total, errors=errors)


def _wrk(url: str, seconds: int, headers: Mapping[str, str]) -> str:
    wrk = wrk_path()
    assert wrk is not None
    args = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=seconds + 30, check=True
    )
    return done.stdout


def group_cpu_seconds(group: int) -> float:
    """User + system CPU seconds used so far by the live processes of process group ``group``."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # After "pid (comm) ": state ppid pgrp ... utime is field 14 of stat, stime 15.
        if int(fields[2]) == group:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _python_loader(url: str, seconds: int, headers: Mapping[str, str]) -> Load:
    args = [sys.executable, "-m", "bench.loader", url, f"--connections={CONNECTIONS}"]
    args += ["--warmup=0", f"--duration={seconds}"]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    done = subprocess.run(
        args, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 60, check=True
    )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return Load(
        rps=data["rps"],
        p50_ms=data["p50_ms"],
        p99_ms=data["p99_ms"],
        requests=int(data["requests"]),
        errors=int(data["errors"]),
    )


def measure(
    url: str,
    headers: Mapping[str, str] | None = None,
    cpu_groups: Sequence[int] = (),
    window: Callable[[str], None] | None = None,
) -> tuple[Load, list[float]]:
    """Warm up, then load ``url`` for ``DURATION`` seconds from a separate process.

    Also returns, for each process group in ``cpu_groups``, the CPU time it
    spent per request (microseconds) during the measured seconds: unlike req/s,
    that figure moves less when other work competes for the cores. ``window``,
    if given, is called with ``"start"`` and ``"end"`` around the measured seconds.
    """
    headers = dict(headers or {})
    # One request first: a benchmark of error responses is worth nothing.
    first = httpx.get(url, headers=headers, timeout=5.0)
    if first.status_code != 200:
        raise RuntimeError(f"GET {url} answered {first.status_code}: {first.text[:200]}")
    if wrk_path():
        _wrk(url, WARMUP, headers)
    else:
        _python_loader(url, WARMUP, headers)
    if window is not None:
        window("start")
    before = [group_cpu_seconds(g) for g in cpu_groups]
    if wrk_path():
        load = parse_wrk(_wrk(url, DURATION, headers))
    else:
        load = _python_loader(url, DURATION, headers)
    after = [group_cpu_seconds(g) for g in cpu_groups]
    if window is not None:
        window("end")
    requests = max(load.requests, 1)
    cpu = [(a - b) / requests * 1e6 for a, b in zip(after, before, strict=True)]
    return load, cpu


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, padded so it also reads well in a terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "| "
        + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths))
        + " |"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def machine() -> str:
    model = "unknown CPU"
    try:
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            if text_line.startswith("model name"):
                model = text_line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for text_line in Path("/proc/meminfo").read_text().splitlines():
            if text_line.startswith("MemTotal:"):
                memory = f", {int(text_line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}){memory}, Python {sys.version.split()[0]}"
