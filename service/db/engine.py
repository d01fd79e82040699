"""Engine and session factory, built at app start-up and disposed at shutdown."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

# A database that cannot answer must turn into a 503 within about a second.
CONNECT_TIMEOUT = 1.0
POOL_TIMEOUT = 2.0


def build_engine(url: str) -> AsyncEngine:
    """Create the async engine for ``url`` with timeouts that fail fast."""
    kwargs: dict[str, Any] = {"pool_pre_ping": False}
    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect_args["timeout"] = 5.0
    else:
        kwargs["pool_timeout"] = POOL_TIMEOUT
        kwargs["pool_size"] = 10
        kwargs["max_overflow"] = 20
    if "+asyncpg" in url:
        connect_args["timeout"] = CONNECT_TIMEOUT
        connect_args["command_timeout"] = 5.0
    engine = create_async_engine(url, connect_args=connect_args, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def build_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
