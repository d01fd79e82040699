"""A smoke test of ``make bench``'s command line: it imports and explains itself.

The benchmark itself never runs in the test suite (it takes minutes and
measures the machine, not the code).
"""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def test_the_bench_command_line_answers_help():
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
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
