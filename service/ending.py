"""Ending sessions: SQL first, Redis second, and what to do when Redis fails half-way.

SQL is written first, so that a Redis rebuilt from SQL never revives an
ended session. If Redis then fails, SQL takes the end back: the caller gets
a 503 with every session alive and listed, and may simply send the request
again (``docs/design.md``, "When a write fails half-way").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .background import Background
from .db import repository as repo
from .db.repository import utc
from .errors import describe
from .store.near import new_note
from .store.redis_store import RedisSessionStore
from .store.results import EndReason

log = logging.getLogger("tokengate")

# After an outage, how long a script that a hung Redis held for a dead
# connection may still take to run once Redis answers again.
LATE_SCRIPT_WAIT = 0.5


class SessionEnds:
    """Ends sessions in SQL and Redis so that the two always agree in the end."""

    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        store: RedisSessionStore,
        background: Background,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.store = store
        self.background = background
        self.clock = clock

    async def record(self, sids: Sequence[str], reason: EndReason, now: float) -> None:
        """Record in SQL that ``sids`` ended (the first reason recorded stays)."""
        async with self.db() as db:
            await repo.end_sessions(db, sids, reason, utc(now))
            await db.commit()

    async def end(
        self, sids: Sequence[str], user_id: int, reason: EndReason, now: float, *,
        keep: str = "", every: bool = False,
    ) -> None:  # fmt: skip
        """End ``sids`` in SQL, then in Redis (``every``: and every other one Redis knows).

        Returns once every instance answering from near checks has dropped them.
        """
        await self.record(sids, reason, now)
        uid = str(user_id)
        note = new_note()
        try:
            await self.store.end(
                uid, sids, reason=reason, now=now, every=every, keep=keep, note=note
            )
        except BaseException:
            await self._take_back(uid, sids, reason, now, keep=keep, every=every)
            raise
        await self.store.settle(note)

    async def _take_back(
        self, uid: str, sids: Sequence[str], reason: EndReason, now: float, *,
        keep: str, every: bool,
    ) -> None:  # fmt: skip
        """Redis did not confirm an end that SQL holds: make the two agree again.

        Usually the script never ran and SQL is simply taken back. If its
        reply alone was lost, Redis ended the sessions after all: once Redis
        answers again, SQL records the end Redis holds. If SQL cannot be taken
        back either, the end is finished in Redis in the background instead:
        never a session alive in Redis and missing from the list.
        """
        try:
            async with self.db() as db:
                await repo.resume_sessions(db, sids, reason, utc(now))
                await db.commit()
        except Exception as exc:
            log.warning("could not take back an unfinished end in SQL (%s); finishing it",
                        describe(exc))  # fmt: skip
            self.background.retry(lambda: self._finish(uid, sids, reason, now, keep, every))
            return
        self.background.retry(lambda: self._record_ended_in_redis(uid, sids))

    async def _finish(
        self, uid: str, sids: Sequence[str], reason: EndReason, now: float, keep: str, every: bool
    ) -> None:
        note = new_note()
        await self.store.end(uid, sids, reason=reason, now=now, every=every, keep=keep, note=note)
        await self.store.settle(note)

    async def _record_ended_in_redis(self, uid: str, sids: Sequence[str]) -> None:
        """Record in SQL the end of those of ``sids`` that Redis holds as ended.

        It reads a moment after Redis answers again, so that a script a hung
        Redis held in a dead connection's buffer has run by then.
        """
        await self.store.ping()
        await asyncio.sleep(LATE_SCRIPT_WAIT)
        ended = await self.store.ended(uid, sids)
        for reason in {*ended.values()}:
            await self.record([s for s, r in ended.items() if r is reason], reason, self.clock())
