"""A password-reset request takes the same time whether or not the user exists."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tests.conftest import register
from tests.support import mann_whitney_p, wait_for_async

ROUNDS = 100


def outbox_names(tmp_path: Path) -> set[str]:
    found = (tmp_path / "instance" / "outbox").glob("*.json")
    return {json.loads(path.read_text())["to"] for path in found}


async def test_known_and_unknown_users_answer_alike(make_app, tmp_path):
    # Limits well above this test's requests: it times answers, not the throttle.
    app = await make_app(login_max_failures=10_000)
    client = app.test_client()
    known = [f"known{n}" for n in range(ROUNDS)]
    for name in known:
        await register(client, name)
    unknown = [f"unknown{n}" for n in range(ROUNDS)]
    order = [(name, True) for name in known] + [(name, False) for name in unknown]
    random.Random(21).shuffle(order)  # interleaved: drift hits both alike
    took: dict[bool, list[float]] = {True: [], False: []}
    for name, exists in order:
        start = time.perf_counter()
        r = await client.post("/auth/password-reset/request", json={"username": name})
        took[exists].append(time.perf_counter() - start)
        assert r.status_code == 202
    p = mann_whitney_p(took[True], took[False])
    assert p > 0.01, (p, sorted(took[True])[50], sorted(took[False])[50])
    # The work still happens, off the answer's path: every known user gets a token.
    await wait_for_async(
        lambda: outbox_names(tmp_path) == set(known),
        timeout=30,
        interval=0.05,
        what="a reset message for every known user",
    )
