"""The secret API keys are digested under: derived, or generated once and kept in the database.

The one place that reads or writes it. Kept in the database, it is wrapped
(AES-GCM under the key-encryption key, bound to its row, as the signing keys
are: ``sealing.py``); a plain-text one left by an older version is read as
is and wrapped at once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import sealing
from ..db.models import ServerSecret
from ..settings import Settings
from .apikeys import derive_secret

log = logging.getLogger("tokengate")

NAME = "api_key_digest"


def row_aad(name: str) -> bytes:
    """What a stored secret's wrapping is bound to: its row."""
    return sealing.aad("server_secrets", name)


def unwrap_value(row: ServerSecret, keks: sealing.KeyEncryptionKeys) -> str:
    """The secret of a stored row; plain text as an older version stored it is read as is."""
    if not sealing.is_wrapped(row.value):
        return row.value
    return keks.unwrap(row.value, row_aad(row.name), f"server secret {row.name}").decode()


async def api_key_secret(
    settings: Settings,
    db: async_sessionmaker[AsyncSession],
    keks: sealing.KeyEncryptionKeys | None = None,
) -> bytes:
    """The API-key digest secret of this deployment.

    Derived from ``TOKENGATE_SECRET_KEY`` when it is set (changing that key
    then invalidates every API key; nothing is stored). Otherwise generated
    by the first instance that needs it and kept, wrapped under the KEK
    (``keks``, else the settings'), in ``server_secrets``, so every instance
    on the database digests alike. Instances racing to create it agree on
    one row.
    """
    if settings.secret_key is not None:
        return derive_secret(settings.secret_key)
    if keks is None:
        keks = await asyncio.to_thread(sealing.load_keks, settings)
    async with db() as session:
        row = await session.get(ServerSecret, NAME)
        if row is None:
            value = secrets.token_urlsafe(32)
            row = ServerSecret(
                name=NAME,
                value=keks.wrap(value.encode(), row_aad(NAME)),
                created_at=datetime.now(UTC),
            )
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:  # another instance made it first: use theirs
                await session.rollback()
                row = await session.get(ServerSecret, NAME)
                assert row is not None
            else:
                return value.encode()
        value = unwrap_value(row, keks)
        if not sealing.is_wrapped(row.value):
            # Only the plain value is replaced: instances doing this together agree.
            await session.execute(
                update(ServerSecret)
                .where(ServerSecret.name == NAME, ServerSecret.value == row.value)
                .values(value=keks.wrap(value.encode(), row_aad(NAME)))
            )
            await session.commit()
            log.info(
                "wrapped the API-key digest secret under key-encryption key %s", keks.current.id
            )
        return value.encode()


async def rewrap_secrets(db: AsyncSession, keks: sealing.KeyEncryptionKeys) -> tuple[int, int]:
    """Move every server secret to the current KEK in ``db``'s transaction: ``(moved, stored)``.

    Each is unwrapped first (plain text read as is), so that one no known KEK
    unwraps raises :class:`sealing.SealingError` before the caller commits.
    """
    rows = (await db.execute(select(ServerSecret))).scalars().all()
    moved = 0
    for row in rows:
        value = unwrap_value(row, keks)
        if sealing.wrapped_under(row.value) != keks.current.id:
            row.value = keks.wrap(value.encode(), row_aad(row.name))
            moved += 1
    return moved, len(rows)
