"""The password throttle's side of Redis: counts per account, address and device.

Key layout (``{n<digest>}`` is the account's hash tag, from the username's
UsernameCaseMapped form; ``{a<digest>}`` one client address's, an IPv6 /64 counting as one)::

    tg:{n<digest>}:fails            string failed logins for one account in the window
    tg:{n<digest>}:inflight         zset   password checks of that account now running
    tg:{n<digest>}:fails:<place>    string failed logins of one address (or one trusted
                                           device, ``device:<id>``) on the account
    tg:{n<digest>}:inflight:<place> zset   its checks now running
    tg:{n<digest>}:addresses        set    the places with a count (for unlock)
    tg:{n<digest>}:reset            string password-reset requests for one account
    tg:{a<digest>}:fails, :inflight        failed logins from one address, any username
    tg:{a<digest>}:register, :reset string registrations, reset requests of one address

``attempt.lua`` and ``settle.lua`` take any number of (counter, in-flight
set) pairs of one slot, so each scope is one script call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from .connect import KEY_PREFIX, AnyRedis
from .results import Attempt

# A password check holds its slot at most this long (a hung check frees it).
ATTEMPT_LEASE = 30
# A trusted device's count sits beside the addresses' counts of the account,
# under this prefix, so that unlocking the account clears it too.
DEVICE_PLACE = "device:"


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class ThrottleScripts:
    """The throttle's methods of the store: each is one script call."""

    redis: AnyRedis

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        raise NotImplementedError

    @staticmethod
    def throttle_key(kind: str, name: str) -> str:
        # The exact name the caller gives: the accounts pass a name's
        # UsernameCaseMapped form, so every spelling of one account shares a count.
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

    @staticmethod
    def address_key(kind: str, address: str) -> str:
        """A key of one client address (an IPv6 /64), whatever the username."""
        digest = hashlib.sha256(address.encode()).hexdigest()[:32]
        return f"{KEY_PREFIX}{{a{digest}}}:{kind}"

    async def _begin(self, keys: Sequence[str], attempt: str, now: float, *limits: int) -> int:
        reply = await self._run("attempt", keys, (repr(now), attempt, ATTEMPT_LEASE, *limits))
        if int(reply[0]) < 0:
            return -max(1, int(reply[1]))
        return int(reply[0])

    async def begin_attempt(
        self, name: str, address: str, attempt: str, *, now: float, limit: int, ceiling: int
    ) -> int:
        """Ask to check a password of ``name`` from ``address``: 1 go, 0 wait, or minus
        the seconds left (``limit`` failures per address, ``ceiling`` per account)."""
        return await self._begin(self._attempt_keys(name, address), attempt, now, limit, ceiling)

    async def end_attempt(
        self, name: str, address: str, attempt: str, *, outcome: Attempt, window: int
    ) -> None:
        """Settle an attempt: a failure is counted, a success clears the address's
        count, an undecided one (an outage) only gives its slot back."""
        keys = (*self._attempt_keys(name, address), self.throttle_key("addresses", name))
        await self._run("settle", keys, (attempt, outcome.value, window, "1", address))

    async def begin_device_attempt(
        self, name: str, device: str, attempt: str, *, now: float, limit: int
    ) -> int:
        """As :meth:`begin_attempt` for a trusted device of ``name``: its own count alone."""
        keys = self._attempt_keys(name, DEVICE_PLACE + device)[:2]
        return await self._begin(keys, attempt, now, limit)

    async def end_device_attempt(
        self, name: str, device: str, attempt: str, *, outcome: Attempt, window: int
    ) -> None:
        """Settle a trusted device's attempt: counted, or cleared by a success."""
        place = DEVICE_PLACE + device
        keys = (*self._attempt_keys(name, place)[:2], self.throttle_key("addresses", name))
        await self._run("settle", keys, (attempt, outcome.value, window, "1", place))

    async def begin_address_attempt(
        self, address: str, attempt: str, *, now: float, limit: int
    ) -> int:
        """Ask to check a password from ``address``, whatever the username (``limit``
        failures of the address across every account)."""
        keys = (self.address_key("fails", address), self.address_key("inflight", address))
        return await self._begin(keys, attempt, now, limit)

    async def end_address_attempt(
        self, address: str, attempt: str, *, outcome: Attempt, window: int
    ) -> None:
        """Settle it: a failure counts; a success clears nothing (the guesser's own
        account must not give its address its guesses back)."""
        keys = (self.address_key("fails", address), self.address_key("inflight", address))
        await self._run("settle", keys, (attempt, outcome.value, window, "0", ""))

    async def count_address(self, kind: str, address: str, window: int) -> tuple[int, int]:
        """Count one more request of ``kind`` (register, reset) from ``address``."""
        reply = await self._run("count", (self.address_key(kind, address),), (window,))
        return int(reply[0]), int(reply[1])
