"""Purpose tokens: single-use tokens bound to a user and a purpose (password reset...).

SQL is the only record: a token is usable while its row is unused and
unexpired, and using it is one conditional update, so of two concurrent uses
exactly one wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import tokens
from .db import repository as repo
from .db.models import PurposeTokenRecord
from .db.repository import utc
from .errors import InvalidToken, Unauthorized
from .keys import KeyRing

UNUSABLE = "The token is invalid, expired or already used."


class PurposeTokens:
    """Mint and use single-use purpose tokens."""

    def __init__(
        self,
        keyring: KeyRing,
        db: async_sessionmaker[AsyncSession],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring = keyring
        self.db = db
        self.clock = clock

    @property
    def signing(self) -> tokens.SigningConfig:
        return self.keyring.signing

    async def issue(
        self, user_id: int, purpose: str, ttl: int, data: dict[str, Any] | None = None
    ) -> str:
        """Mint a single-use token bound to ``user_id`` and ``purpose``, living ``ttl`` seconds."""
        now = int(self.clock())
        jti = tokens.new_jti()
        async with self.db() as db:
            # Keep the table small: a token past its lifetime can never be used.
            await repo.prune_purpose_tokens(db, utc(now))
            db.add(
                PurposeTokenRecord(
                    jti=jti,
                    user_id=user_id,
                    purpose=purpose,
                    created_at=utc(now),
                    expires_at=utc(now + ttl),
                )
            )
            await db.commit()
        extra: dict[str, Any] = {"purpose": purpose}
        if data:
            extra["data"] = data
        return tokens.mint(
            self.signing, tokens.PurposeToken.kind, sub=str(user_id), jti=jti, iat=now,
            ttl=ttl, extra=extra,
        )  # fmt: skip

    def mint_unbound(self, purpose: str, ttl: int) -> str:
        """A token of ``purpose`` that no row backs, so it can never be used.

        The password reset mints one for an unknown name, so that both cases
        cost the same signing work.
        """
        now = int(self.clock())
        return tokens.mint(
            self.signing, tokens.PurposeToken.kind, sub="0", jti=tokens.new_jti(), iat=now,
            ttl=ttl, extra={"purpose": purpose},
        )  # fmt: skip

    def claims(self, token: str, purpose: str) -> dict[str, Any]:
        """The claims of a valid token of ``purpose``; any fault is the same ``InvalidToken``."""
        try:
            claims = tokens.verify(self.signing, tokens.PurposeToken.kind, token, now=self.clock())
        except Unauthorized:
            raise InvalidToken(UNUSABLE) from None
        if claims.get("purpose") != purpose:
            raise InvalidToken(UNUSABLE)
        return claims

    async def consume(self, token: str, purpose: str) -> tuple[int, dict[str, Any]]:
        """Use a purpose token once: return ``(user_id, data)`` or raise ``InvalidToken``.

        A second use, another purpose, an expired or forged token are all
        ``invalid_token``: the caller learns nothing about which.
        """
        claims = self.claims(token, purpose)
        async with self.db() as db:
            user_id = await repo.consume_purpose_token(
                db, claims["jti"], purpose, utc(self.clock())
            )
            await db.commit()
        if user_id is None or str(user_id) != claims["sub"]:
            raise InvalidToken(UNUSABLE)
        data = claims.get("data")
        return user_id, data if isinstance(data, dict) else {}
