"""The host apps ``make bench`` serves: one Quart app, without and with ``TokenGate``.

Run with ``uvicorn bench.host:plain --factory`` or ``bench.host:gated``. Both
have the bare routes; they return the body ``GET /auth/me`` returns, built
the way it builds it (``/bench/jsonify``) or as a dict (``/bench/dict``), and
``/bench/sleep``: ``/bench/io`` below without the guard.
``gated`` is the same app with ``TokenGate(app)`` mounted (with
``BENCH_HASHING=default-executor``, hashing as it ran before: on the loop's
default executor at full priority), which adds
``/auth/me`` and two bench routes:

- ``GET /bench/io``: guarded, then awaits 50 ms (an upstream call);
- ``POST /bench/lag``: starts a task that sleeps 5 ms in a loop and records
  how late it wakes (only while P5 runs: its wake-ups would tax the other
  measurements); ``GET /bench/lag``: that lag since the last call, p50, p99
  and max in ms; ``DELETE /bench/lag`` stops the task.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from quart import Quart, Response, jsonify

BODY = {"id": 1, "username": "bench-user", "session_id": "0123456789abcdefghijkl"}
LAG_TICK = 0.005
IO_WAIT = 0.05  # the upstream call of /bench/io and /bench/sleep


def _bare_routes(app: Quart) -> None:
    @app.get("/bench/dict")
    async def bench_dict() -> dict[str, Any]:
        return {"id": BODY["id"], "username": BODY["username"], "session_id": BODY["session_id"]}

    @app.get("/bench/jsonify")
    async def bench_jsonify() -> Response:
        return jsonify(
            {"id": BODY["id"], "username": BODY["username"], "session_id": BODY["session_id"]}
        )

    @app.get("/bench/sleep")
    async def bench_sleep() -> Response:
        # /bench/io without the guard: what Quart itself does with a 50 ms wait.
        await asyncio.sleep(IO_WAIT)
        return jsonify({"id": BODY["id"], "waited_ms": 50})


def plain() -> Quart:
    app = Quart("bench-host")
    _bare_routes(app)
    return app


def gated() -> Quart:
    # Imported here: the plain app's process never loads tokengate, as a host app
    # without it would not (its modules would add to every full collection).
    from quart_tokengate.service import TokenGate, current_identity, login_required
    from quart_tokengate.service.passwords import Passwords

    app = plain()
    passwords = None
    if os.environ.get("BENCH_HASHING") == "default-executor":
        # How hashing ran before: the loop's default executor, full priority.
        passwords = Passwords(threads=min(32, (os.cpu_count() or 1) + 4), nice=0)
    gate = TokenGate(app, passwords=passwords)
    ablate = os.environ.get("BENCH_WITHOUT", "")
    if ablate:

        @app.before_serving
        async def without() -> None:
            # Ablations for ``bench.run --ablations``: the guard as it was
            # without one of its fast paths, to show what each one pays.
            manager = gate.manager
            if ablate == "pipelined-redis":
                manager.store.pipelined = None
            elif ablate == "claims-cache":
                from quart_tokengate.service import tokens

                def verify_every_time(token: str, now: float) -> dict[str, Any]:
                    return tokens.verify(manager.signing, tokens.AccessToken.kind, token, now=now)

                manager._verify_access = verify_every_time  # type: ignore[method-assign]

    lags: list[float] = []

    @app.get("/bench/io")
    @login_required
    async def bench_io() -> Response:
        await asyncio.sleep(IO_WAIT)
        return jsonify({"id": current_identity().user_id, "waited_ms": 50})

    @app.get("/bench/lag")
    async def bench_lag() -> Response:
        values = sorted(lags)
        lags.clear()
        if not values:
            return jsonify({"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0})
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        return jsonify(
            {
                "samples": len(values),
                "p50_ms": statistics.median(values) * 1000,
                "p99_ms": p99 * 1000,
                "max_ms": values[-1] * 1000,
            }
        )

    async def watch_loop() -> None:
        # perf_counter, not loop.time(): uvloop's clock has millisecond steps.
        while True:
            started = time.perf_counter()
            await asyncio.sleep(LAG_TICK)
            lags.append(max(0.0, time.perf_counter() - started - LAG_TICK))
            if len(lags) > 100_000:
                del lags[:50_000]

    tasks: list[asyncio.Task[None]] = []

    @app.post("/bench/lag")
    async def start_watch() -> Response:
        if not tasks:
            tasks.append(asyncio.get_running_loop().create_task(watch_loop()))
        lags.clear()
        return jsonify({"watching": True})

    @app.delete("/bench/lag")
    async def stop_watch() -> Response:
        while tasks:
            tasks.pop().cancel()
        return jsonify({"watching": False})

    return app
