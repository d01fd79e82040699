"""argon2id hashing, always in a worker thread so the event loop never blocks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    # A new hash when the stored one was made with other parameters.
    rehash: str | None = None


class Passwords:
    """Hash and verify passwords; an unknown user still costs one verify."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        # Verified against when the user does not exist, so that a wrong
        # username takes as long as a wrong password.
        self._dummy = self.hasher.hash("tokengate: no such user")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> Verdict:
        """Check ``password`` against ``stored`` (``None``: no such user, always false)."""
        return await asyncio.to_thread(self._verify, stored, password)

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
