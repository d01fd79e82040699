"""A smoke test of ``make bench``'s command line: it imports and explains itself.

The benchmark itself never runs in the test suite (it takes minutes and
measures the machine, not the code).
"""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def _help(module: str) -> subprocess.CompletedProcess[str]:
    """``python -m <module> --help``, run from the checkout."""
    return subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_bench_command_line_answers_help():
    done = _help("bench.run")
    assert done.returncode == 0, done.stderr
    for option in ("--rounds", "--seconds", "--sessions", "--ablations", "--no-p5"):
        assert option in done.stdout


def test_the_bench_lists_every_ratio_it_reports_on():
    from bench.run import targets

    keys = {t.key for t in targets(ablations=True)}
    assert {"plain-dict", "gated-dict", "plain-jsonify", "gated-jsonify", "me"} <= keys
    assert {"peer-sync1", "peer-gthread2", "peer-io2", "io1-200", "me2-200"} <= keys
    assert {"sleep1-200", "sleep2-200"} <= keys
    assert {"wait-me1-200", "wait-io2-200"} <= keys
    assert "me-key" in keys


def test_a_ratio_against_the_peers_best_takes_each_rounds_best():
    from bench.harness import Load
    from bench.run import Bench, Samples

    bench = Bench({}, {}, {}, 1.0)
    for key, rows in {
        "ours": [(900.0, 10.0), (800.0, 20.0)],
        "sync": [(300.0, 40.0), (450.0, 30.0)],
        "gthread": [(400.0, 50.0), (200.0, 80.0)],
    }.items():
        bench.samples[key] = Samples(loads=[Load(rps, 1.0, p99, 1, 0) for rps, p99 in rows])
    assert bench.against_best("ours", ["sync", "gthread"], "rps") == [900 / 400, 800 / 450]
    assert bench.against_best("ours", ["sync", "gthread"], "p99_ms") == [10 / 40, 20 / 30]
    assert bench.against_best("ours", ["sync", "missing"], "rps") == []


def test_the_dpop_bench_offers_each_key_algorithm():
    done = _help("bench.dpop")
    assert done.returncode == 0, done.stderr
    assert "--alg {ES256,EdDSA,RS256}" in done.stdout


def test_the_dpop_bench_signs_proofs_the_service_accepts_with_each_algorithm():
    # The bench signs RS256 proofs itself (the client makes no RSA keys): a proof the
    # service refused would measure refusals, not the check.
    import time

    import pytest

    from bench.dpop import ALGORITHMS, new_key
    from quart_tokengate.client._dpop import make_proof
    from quart_tokengate.service import dpop

    url, token, now = "http://127.0.0.1:8000/auth/me", "eyJ.a.b", time.time()
    policy = dpop.DPoPPolicy(algorithms=ALGORITHMS)
    for algorithm in ALGORITHMS:
        key = new_key(algorithm)
        verified = dpop.verify_proof(
            make_proof(key, "GET", url, now=now, access_token=token),
            method="GET", url=url, now=now, policy=policy, access_token=token,
        )  # fmt: skip
        assert (verified.algorithm, verified.jkt) == (algorithm, key.jkt)
        # Made for this request and token only.
        with pytest.raises(dpop.InvalidDPoPProof):
            dpop.verify_proof(
                make_proof(key, "GET", url, now=now, access_token=token),
                method="GET", url=url, now=now, policy=policy, access_token="eyJ.other.token",
            )  # fmt: skip
    # The service's defaults do not take RSA: the bench starts it naming RS256.
    with pytest.raises(dpop.InvalidDPoPProof, match="algorithm"):
        dpop.verify_proof(
            make_proof(new_key("RS256"), "GET", url, now=now), method="GET", url=url, now=now
        )
