"""``bench/results.png``: req/s and p99 of every row of one ``bench.run``, one bar group a row.

matplotlib is the bench's own dependency (``bench/requirements.txt``, installed by
``make bench``), not the service's: imported only here, only when a picture is drawn.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REQ_COLOUR = "#3b6ea8"
P99_COLOUR = "#d9822b"


def draw(rows: Sequence[tuple[str, Any]], caption: str, path: Path) -> None:
    """``rows``: (label, Samples) in table order. Bars are the medians over rounds;
    the whiskers on req/s span the rounds' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _ in rows]
    rps = [[load.rps for load in samples.loads] for _, samples in rows]
    p99 = [[load.p99_ms for load in samples.loads] for _, samples in rows]
    rps_mid = [statistics.median(v) for v in rps]
    p99_mid = [statistics.median(v) for v in p99]
    n = len(rows)
    height = 0.38
    y = list(range(n))
    fig, ax = plt.subplots(figsize=(12, 0.42 * n + 2.2))
    low = [m - min(v) for m, v in zip(rps_mid, rps, strict=True)]
    high = [max(v) - m for m, v in zip(rps_mid, rps, strict=True)]
    ax.barh(
        [i - height / 2 for i in y], rps_mid, height, color=REQ_COLOUR, label="req/s (median)",
        xerr=[low, high], error_kw={"elinewidth": 0.8, "capsize": 2},
    )  # fmt: skip
    ax.set_xlabel("req/s (median over rounds; whiskers: range)", color=REQ_COLOUR)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    top = ax.twiny()
    top.barh(
        [i + height / 2 for i in y], p99_mid, height, color=P99_COLOUR, label="p99 ms (median)"
    )
    top.set_xscale("log")
    top.set_xlim(left=5, right=max(p99_mid) * 3)
    ax.set_xlim(right=max(max(v) for v in rps) * 1.12)
    top.set_xlabel("p99 latency, ms (median over rounds; log scale)", color=P99_COLOUR)
    for i, (r, p) in enumerate(zip(rps_mid, p99_mid, strict=True)):
        ax.text(max(rps[i]), i - height / 2, f" {r:,.0f}", va="center", fontsize=6.5)
        top.text(p, i + height / 2, f" {p:,.0f} ms", va="center", fontsize=6.5)
    handles = [*ax.get_legend_handles_labels()[0], *top.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="upper left", ncol=2, fontsize=8, frameon=False)
    fig.text(0.01, 0.005, caption, fontsize=8, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
