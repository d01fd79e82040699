"""Engine and session factory, built at app start-up and disposed at shutdown."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

# A database that cannot answer must turn into a 503 within about a second.
CONNECT_TIMEOUT = 1.0
POOL_TIMEOUT = 2.0
# Migrations wait their turn behind another instance's: long, but bounded.
MIGRATION_LOCK_TIMEOUT = 120.0


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


def build_migration_engine(url: str) -> AsyncEngine:
    """An engine for applying migrations, whose transactions hold the database's write lock.

    On SQLite every transaction starts with ``BEGIN IMMEDIATE`` (the driver's
    own transaction handling is switched off, so the DDL runs inside it too):
    a second instance migrating the same file waits for the first to commit,
    then finds the schema at head. PostgreSQL serialises migrations with an
    advisory lock instead (``migrations/env.py``); statements may wait for it.
    """
    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect_args["timeout"] = MIGRATION_LOCK_TIMEOUT
    if "+asyncpg" in url:
        connect_args["timeout"] = CONNECT_TIMEOUT * 5
        connect_args["command_timeout"] = MIGRATION_LOCK_TIMEOUT
    engine = create_async_engine(url, connect_args=connect_args, poolclass=NullPool)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_migration_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
    return engine


def _sqlite_migration_connect(dbapi_connection: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_connection, record)
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(MIGRATION_LOCK_TIMEOUT * 1000)}")
    cursor.close()
    # SQLAlchemy emits BEGIN itself (below), so DDL is transactional as well.
    dbapi_connection.isolation_level = None


def _sqlite_begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def build_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
