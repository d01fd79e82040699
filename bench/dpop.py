"""``GET /auth/me`` with a DPoP-bound token beside the same route with a bearer one:
``python -m bench.dpop``.

One service worker (``bench.host:gated`` under uvicorn, as ``bench.run`` serves it) on
SQLite and a private redis-server; user ``bench`` logged in twice, once with a proof (a
bound pair) and once without. wrk (one thread, 64 connections) loads each in turn, in
interleaved rounds. A proof is good once, so the DPoP rounds cannot replay one header:
before each round this process signs a fresh proof for every request wrk may send (with
the token's ``ath``), and wrk's script hands out the next one per request; signing costs
this process, not the server. Prints req/s, p50, p99, the server's CPU per request, the
Redis commands per request (``INFO commandstats``: the hot path is one ``EVALSHA``) and
the DPoP/bearer CPU ratio; stops every process it started (by PID) before it exits.

``--alg`` picks the client key's algorithm: ``ES256`` (P-256, the client's default),
``EdDSA`` (Ed25519) or ``RS256`` (RSA-2048, which the client does not make: signed here,
and accepted by the service with ``TOKENGATE_DPOP_ALGORITHMS`` naming it). The proof's
signature check is most of what DPoP costs the service, and its cost is the algorithm's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from quart_tokengate.client._dpop import ProofKey, generate_key, make_proof
from quart_tokengate.service.dpop import b64url, thumbprint

from . import harness
from .harness import HOST, Process

GOAL = 1.5  # DPoP CPU per request at most 1.5x the bearer check's (issue 23)
PASSWORD = "correct horse battery"
# Each connection takes the next proof of the file; wrk runs one thread, so one counter.
WRK_SCRIPT = """
local proofs, n = {}, 0
init = function(args)
  for line in io.lines(args[1]) do proofs[#proofs + 1] = line end
end
request = function()
  n = n + 1
  wrk.headers["DPoP"] = proofs[n] or "exhausted"
  return wrk.format("GET", nil)
end
"""


ALGORITHMS = ("ES256", "EdDSA", "RS256")


class _RS256Signer:
    """An RSA private key that signs as the client's ``make_proof`` asks a key to
    (``sign(data)``): RSASSA-PKCS1-v1_5 with SHA-256."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self.private_key = private_key

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def new_key(algorithm: str) -> ProofKey:
    """A key for ``algorithm`` (one of ``ALGORITHMS``). The client makes P-256 and Ed25519
    keys; an RSA-2048 one (RS256) is made here, for this benchmark only, and signs its
    proofs through the client's own ``make_proof``."""
    if algorithm != "RS256":
        return generate_key(algorithm)
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = private_key.public_key().public_numbers()
    jwk = {"kty": "RSA", "e": b64url(numbers.e.to_bytes(3, "big")),
           "n": b64url(numbers.n.to_bytes(256, "big"))}  # fmt: skip
    return ProofKey("RS256", _RS256Signer(private_key), jwk, thumbprint(jwk))


def login(
    base: str, key: ProofKey | None, username: str = "bench", password: str = PASSWORD
) -> str:
    """An access token of ``username``: bound to ``key``, or a bearer one with ``None``."""
    headers = {}
    if key is not None:
        headers["DPoP"] = make_proof(key, "POST", base + "/auth/login", now=time.time())
    r = httpx.post(
        base + "/auth/login", json={"username": username, "password": password}, headers=headers
    )
    r.raise_for_status()
    pair = r.json()
    if pair["token_type"] != ("DPoP" if key is not None else "Bearer"):
        raise RuntimeError(f"login answered token_type {pair['token_type']}")
    return str(pair["access_token"])


def wrk(url: str, seconds: float, auth: str, script: Path | None, proofs: Path | None) -> str:
    wrk_bin = harness.wrk_path()
    if wrk_bin is None:
        raise SystemExit("this benchmark needs wrk on PATH (apt-get install wrk)")
    args = [
        wrk_bin, "-t1", "-c64", f"-d{seconds:g}s", "--latency", "--timeout", "5s",
        "-H", f"Authorization: {auth}",
    ]  # fmt: skip
    if script is not None:
        args += ["-s", str(script)]
    args.append(url)
    if proofs is not None:
        args += ["--", str(proofs)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return done.stdout


def sign_proofs(path: Path, key: ProofKey, url: str, token: str, count: int) -> None:
    now = time.time()
    path.write_text(
        "\n".join(make_proof(key, "GET", url, now=now, access_token=token) for _ in range(count))
        + "\n"
    )


def evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dpop", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=6.0, help="per round (default 6)")
    parser.add_argument(
        "--proofs", type=int, default=40_000, help="proofs signed per DPoP round (default 40,000)"
    )
    parser.add_argument(
        "--alg", choices=ALGORITHMS, default="ES256",
        help="the client key's algorithm (default ES256, the client's own default)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    from .run import start_app, start_storage  # run.py imports this module

    if args.rounds < 1 or args.seconds <= 0 or args.proofs < 1:
        parser.error("--rounds >= 1, --seconds > 0, --proofs >= 1")
    print(f"machine: {harness.machine()}; load average {os.getloadavg()[0]:.1f} at start")
    processes: list[Process] = []
    results: dict[str, list[tuple[harness.Load, float, float, float]]] = {"bearer": [], "dpop": []}
    with tempfile.TemporaryDirectory(prefix="tokengate-bench-dpop-") as name:
        tmp = Path(name)
        try:
            redis_port, env = start_storage(tmp, processes)
            if args.alg == "RS256":  # not among the service's default algorithms
                env = {**env, "TOKENGATE_DPOP_ALGORITHMS": "ES256 EdDSA RS256"}
            process, base = start_app(tmp, env, "bench.host:gated", "gated1")
            processes.append(process)
            user = {"username": "bench", "password": PASSWORD}
            httpx.post(base + "/auth/register", json=user).raise_for_status()
            url = base + "/auth/me"
            key = new_key(args.alg)
            bearer, bound = login(base, None), login(base, key)
            first = httpx.get(
                url, headers={
                    "Authorization": f"DPoP {bound}",
                    "DPoP": make_proof(key, "GET", url, now=time.time(), access_token=bound),
                },
            )  # fmt: skip
            if first.status_code != 200:
                raise RuntimeError(f"/auth/me with DPoP answered {first.status_code}: {first.text}")
            script, proofs = tmp / "dpop.lua", tmp / "proofs.txt"
            script.write_text(WRK_SCRIPT)
            counter = redis.Redis(host=HOST, port=redis_port)
            rows = [
                ("bearer", f"Bearer {bearer}", None, None),
                ("dpop", f"DPoP {bound}", script, proofs),
            ]
            for _, auth, lua, file in rows:  # warm-up, thrown away
                if file is not None:
                    sign_proofs(file, key, url, bound, args.proofs)
                wrk(url, 2, auth, lua, file)
            for number in range(1, args.rounds + 1):
                for row, auth, lua, file in rows:
                    if file is not None:
                        sign_proofs(file, key, url, bound, args.proofs)
                    time.sleep(0.5)
                    calls = evalsha_calls(counter)
                    before = harness.group_cpu_seconds(process.pid)
                    load = harness.parse_wrk(wrk(url, args.seconds, auth, lua, file))
                    cpu = (harness.group_cpu_seconds(process.pid) - before) / max(load.requests, 1)
                    per_request = (evalsha_calls(counter) - calls) / max(load.requests, 1)
                    average = os.getloadavg()[0]
                    results[row].append((load, cpu * 1e6, per_request, average))
                    print(
                        f"round {number} {row}: {load.rps:,.0f} req/s, p50 {load.p50_ms:.1f} ms, "
                        f"p99 {load.p99_ms:.1f} ms, {cpu * 1e6:,.0f} CPU us/req, "
                        f"{per_request:.2f} EVALSHA/req, {load.errors} errors; "
                        f"load average {average:.1f}",
                        flush=True,
                    )
                    if load.requests >= args.proofs and file is not None:
                        print("  (more requests than proofs: raise --proofs)")
        finally:
            for started in reversed(processes):
                started.stop()
    cpu = {row: statistics.median(c for _, c, _, _ in found) for row, found in results.items()}
    ratios = [d[1] / b[1] for b, d in zip(results["bearer"], results["dpop"], strict=True)]
    table_rows = []
    dpop_label = f"GET /auth/me, DPoP + {args.alg} proof"
    for row, label in (("bearer", "GET /auth/me, Bearer"), ("dpop", dpop_label)):
        found = results[row]
        rps = [load.rps for load, _, _, _ in found]
        table_rows.append([
            label,
            f"{statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f})",
            f"{statistics.median(load.p50_ms for load, _, _, _ in found):.1f}",
            f"{statistics.median(load.p99_ms for load, _, _, _ in found):.1f}",
            f"{cpu[row]:,.0f}",
            f"{statistics.median(p for _, _, p, _ in found):.2f}",
            str(sum(load.errors for load, _, _, _ in found)),
        ])  # fmt: skip
    headers = ["route (1 worker, 64c)", "req/s median (range)", "p50 ms", "p99 ms"]
    headers += ["CPU us/req", "EVALSHA/req", "errors"]
    print(harness.table(headers, table_rows))
    print(
        f"DPoP / bearer CPU per request: {statistics.median(ratios):.2f}x "
        f"(rounds {min(ratios):.2f}-{max(ratios):.2f}); goal <= {GOAL}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
