"""argon2id hashing, on its own threads at lower priority, so the event loop never waits.

A verify is ~200 ms of CPU (and argon2 spreads it over its lanes' threads).
Run on the loop's default executor, several at once would take every core
from the event loop, and every guarded request would wait behind them. So
hashing gets its own pool of ``cores - 1`` threads (at least one), and those
threads run at a lower CPU priority (``nice`` +10; argon2's lane threads
inherit it): a burst of logins queues for the hashing threads instead of
starving the requests that are already authenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# How much lower than the event loop's the hashing threads' priority is.
HASHING_NICE = 10


def hashing_threads() -> int:
    """Threads for hashing: every core but one, at least one."""
    return max(1, (os.cpu_count() or 1) - 1)


def _lower_priority(nice: int) -> None:
    # On Linux the nice value is per thread; threads argon2 starts inherit it.
    if nice > 0:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    # A new hash when the stored one was made with other parameters.
    rehash: str | None = None


class Passwords:
    """Hash and verify passwords; an unknown user still costs one verify."""

    def __init__(
        self,
        hasher: PasswordHasher | None = None,
        *,
        threads: int | None = None,
        nice: int = HASHING_NICE,
    ) -> None:
        self.hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        self.threads = threads or hashing_threads()
        self._executor = ThreadPoolExecutor(
            max_workers=self.threads,
            thread_name_prefix="tokengate-argon2",
            initializer=_lower_priority,
            initargs=(nice,),
        )
        # Verified against when the user does not exist, so that a wrong
        # username takes as long as a wrong password.
        self._dummy = self.hasher.hash("tokengate: no such user")

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> Verdict:
        """Check ``password`` against ``stored`` (``None``: no such user, always false)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._verify, stored, password)

    def _verify(self, stored: str | None, password: str) -> Verdict:
        try:
            self.hasher.verify(stored or self._dummy, password)
        except (VerificationError, InvalidHashError):
            return Verdict(ok=False)
        if stored is None:
            return Verdict(ok=False)
        if self.hasher.check_needs_rehash(stored):
            return Verdict(ok=True, rehash=self.hasher.hash(password))
        return Verdict(ok=True)
