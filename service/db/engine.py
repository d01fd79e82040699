"""Engine and session factory, built at app start-up and disposed at shutdown."""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

# A database that cannot answer (down, or hung: a stopped process, a network
# that drops packets) must turn into a 503 within a second. Every step is
# bounded: opening a connection takes 0.5 s at most, a statement 0.6 s (a
# hung server fails the first of them), so a request that finds a pooled
# connection free fails within about 0.7 s; up to POOL_SIZE + MAX_OVERFLOW
# concurrent requests per process always do. Waiting for a pooled connection
# is bounded separately and longer (POOL_TIMEOUT): a burst larger than the
# pool on a healthy but busy machine queues for its turn rather than failing. Our statements are
# single-row reads and writes of a few milliseconds; one that takes longer
# than this is an outage. The server gives up a little sooner than the client
# (SERVER_STATEMENT_TIMEOUT): a slow but live server answers with its own
# error and the connection stays usable; the client's timeout fires only when
# the server cannot answer at all, and then the connection is dropped
# (SQLAlchemy invalidates a connection whose call timed out; closing it never
# waits for the server, see _Connection). SQLite's wait for a lock is below.
CONNECT_TIMEOUT = 0.5
POOL_TIMEOUT = 2.0
STATEMENT_TIMEOUT = 0.6
SERVER_STATEMENT_TIMEOUT = 0.5
# SQLite is the embedded single-machine default: a lock wait there is this
# service's own writes taking turns (twenty logins at once), not an outage,
# so it may queue longer than a network database may hang.
SQLITE_BUSY_TIMEOUT = 5.0
# Per process: pool_size kept open, up to pool_size + max_overflow at once.
# Instances x workers x (POOL_SIZE + MAX_OVERFLOW) must fit under
# PostgreSQL's max_connections (docs/design.md, "Running several instances").
POOL_SIZE = 10
MAX_OVERFLOW = 20
# Migrations wait their turn behind another instance's: long, but bounded.
MIGRATION_LOCK_TIMEOUT = 120.0


def build_engine(url: str) -> AsyncEngine:
    """Create the async engine for ``url`` with timeouts that fail fast.

    Migrations have their own engine (:func:`build_migration_engine`), whose
    statements may wait for another instance's lock.
    """
    kwargs: dict[str, Any] = {"pool_pre_ping": False}
    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT
    else:
        kwargs["pool_timeout"] = POOL_TIMEOUT
        kwargs["pool_size"] = POOL_SIZE
        kwargs["max_overflow"] = MAX_OVERFLOW
    if "+asyncpg" in url:
        connect_args["timeout"] = CONNECT_TIMEOUT
        connect_args["command_timeout"] = STATEMENT_TIMEOUT
        connect_args["connection_class"] = _Connection
        connect_args["server_settings"] = {
            "statement_timeout": str(int(SERVER_STATEMENT_TIMEOUT * 1000)),
            "lock_timeout": str(int(SERVER_STATEMENT_TIMEOUT * 1000)),
        }
    engine = create_async_engine(url, connect_args=connect_args, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


class _Connection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg ships no types
    """asyncpg's connection, except that closing it never waits for the server.

    SQLAlchemy closes the connections it gives up on (one whose statement timed
    out, one recycled after an invalidation, an overflow connection coming
    back) with asyncpg's graceful ``close()``, which lets a pending cancel
    request finish, sends Terminate and waits for the server to hang up: for
    up to 2 s, inside the request. On a hung server that wait always runs
    out; on a live one it gains nothing, the connection is done either way.
    ``terminate()`` sends Terminate and drops the socket at once.
    """

    # asyncpg's signature: SQLAlchemy calls close(timeout=2).
    async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self.terminate()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
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
