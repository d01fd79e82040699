"""The password throttle's side of the session store: failed-login counts and check slots.

Key layout: ``tg:{n<digest>}:<kind>`` (``fails``, ``inflight``, ``reset``,
``addresses``, and per address ``fails:<address>``...), where ``<digest>``
names the account; see ``redis_store.py`` for the whole layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from .connect import KEY_PREFIX, AnyRedis
from .results import Attempt

# A password check holds its slot at most this long (a hung check frees it).
ATTEMPT_LEASE = 30


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class ThrottleScripts:
    """The throttle's script calls, mixed into ``RedisSessionStore``."""

    redis: AnyRedis

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        raise NotImplementedError

    @staticmethod
    def throttle_key(kind: str, name: str) -> str:
        # The exact name: usernames are case-sensitive, so "Alice" and "alice"
        # are two accounts and must not share (or clear) one counter.
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        return f"{KEY_PREFIX}{{n{digest}}}:{kind}"

    async def record_failure(self, name: str, window: int, kind: str = "fails") -> tuple[int, int]:
        """Count one more event of ``kind`` for ``name``; return the count and the TTL."""
        reply = await self._run("count", (self.throttle_key(kind, name),), (window,))
        return int(reply[0]), int(reply[1])

    async def clear_throttle(self, name: str) -> None:
        """Forget every failed-login and reset-request count of the account ``name``.

        ``tokengate users unlock`` calls this, and only this: whatever keys the
        throttle uses, for every client address, this is where they are all cleared.
        """
        addresses = self.throttle_key("addresses", name)
        counted = [str(_text(a)) for a in await self.redis.smembers(addresses)]
        await self.redis.delete(
            self.throttle_key("fails", name), self.throttle_key("reset", name), addresses,
            *(self.throttle_key(f"fails:{a}", name) for a in counted),
        )  # fmt: skip

    def _attempt_keys(self, name: str, address: str) -> tuple[str, ...]:
        return (
            self.throttle_key(f"fails:{address}", name),
            self.throttle_key(f"inflight:{address}", name),
            self.throttle_key("fails", name),
            self.throttle_key("inflight", name),
        )

    async def begin_attempt(
        self, name: str, address: str, attempt: str, *, now: float, limit: int, ceiling: int
    ) -> int:
        """Ask to check a password of ``name`` from ``address``: 1 go, 0 wait, or minus
        the seconds left (``limit`` failures per address, ``ceiling`` per account)."""
        reply = await self._run(
            "attempt", self._attempt_keys(name, address),
            (repr(now), attempt, limit, ceiling, ATTEMPT_LEASE),
        )  # fmt: skip
        if int(reply[0]) < 0:
            return -max(1, int(reply[1]))
        return int(reply[0])

    async def end_attempt(
        self, name: str, address: str, attempt: str, *, outcome: Attempt, window: int
    ) -> None:
        """Settle an attempt: a failure is counted, a success clears the address's
        count, an undecided one (an outage) only gives its slot back."""
        keys = (*self._attempt_keys(name, address), self.throttle_key("addresses", name))
        await self._run("settle", keys, (attempt, outcome.value, window, address))
