"""Work that outlives its request: write-backs, password resets, what an outage left undone.

Tasks are kept (so that they are not garbage-collected half-way) and given a
few seconds to finish at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .errors import describe

log = logging.getLogger("tokengate")

# How long shutdown waits for background work.
DRAIN_SECONDS = 5.0
# A retried step backs off from 0.1 s to 5 s between tries: about 4.5 minutes in all.
RETRIES = 60
MAX_BACKOFF = 5.0


class Background:
    """The background tasks of one app."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def retry(self, step: Callable[[], Awaitable[object]]) -> None:
        """Run ``step`` in the background until it succeeds, for a few minutes at most."""
        self.spawn(retry(step))

    async def drain(self) -> None:
        """Let background work finish, for a few seconds at most (at shutdown, in tests)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=DRAIN_SECONDS)
        for task in pending:
            log.warning("shutting down with background work unfinished")
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def retry(step: Callable[[], Awaitable[object]]) -> None:
    """Await ``step()`` until it succeeds, backing off, for a few minutes at most."""
    for attempt in range(RETRIES):
        try:
            await step()
            return
        except Exception as exc:  # still down: keep trying
            log.warning("retrying after an outage: %s", describe(exc))
        await asyncio.sleep(min(0.1 * 2**attempt, MAX_BACKOFF))
    log.error("gave up retrying after an outage")
