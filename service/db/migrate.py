"""Running the alembic migrations from code (``db upgrade``, ``serve``, tests).

Alembic is imported only to migrate. Start-up, ``/healthz`` and the commands
compare a database with ``REVISIONS``, the shipped revisions written out here
(a unit test holds them to alembic's own reading of ``migrations/``): loading
alembic and every migration script cost every start and every command a few
tenths of a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")

# The migrations ship inside the package, so an installed copy finds them
# with no alembic.ini: the configuration is built here, in code.
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


# The revisions in migrations/versions, oldest first; the last is the head. A new
# migration adds its id here (tests/unit/test_migration_list.py fails until it does).
REVISIONS = (
    "c7f4af665137",  # initial
    "5b2e9d0a4c11",  # accounts and signing keys
    "8d1f3a7c2e90",  # sessions of any user store
    "3e6b1f9a7d25",  # sessions iat
    "a4c2e8f1b903",  # username skeletons
    "a41c0e7d9b52",  # oauth clients
    "d3c7a9e15f42",  # device codes
    "a7c3e1f05b92",  # api keys
)


def alembic_config(url: str) -> Config:
    """An alembic ``Config`` for the migrations shipped in the package, against ``url``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is an INI file: a literal % must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _in_thread(work: Callable[[], T]) -> T:
    # env.py runs its own event loop, which cannot start inside a running one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result()


# A revision applied: its id and the first line of its message.
Applied = tuple[str, str]


def upgrade(url: str, revision: str = "head") -> list[Applied]:
    """``alembic upgrade`` against ``url``; blocking (it runs its own event loop).

    Returns the revisions it applied, oldest first: none when the database
    was already there (or another instance migrated it while this one waited
    for the lock).
    """
    if revision == "head" and _at_head(url):
        return []  # the usual start: nothing to apply, and alembic not even loaded
    from alembic import command

    config = alembic_config(url)
    applied: list[Applied] = []
    config.attributes["applied"] = applied  # env.py appends to it
    _in_thread(lambda: command.upgrade(config, revision))
    return applied


def _at_head(url: str) -> bool:
    """Whether the database at ``url`` is at the head already: one read, no lock.

    Nothing can move a database off the head but a downgrade, so no lock is
    needed to trust a yes. Any failure reads as no: alembic's path then meets
    it and says what is wrong, as it always did.
    """
    from .engine import build_engine

    async def read() -> bool:
        engine = build_engine(url)
        try:
            async with engine.connect() as connection:
                state, _ = await connection.run_sync(schema_state)
        finally:
            await engine.dispose()
        return state == "ok"

    try:
        return _in_thread(lambda: asyncio.run(read()))
    except Exception:  # any failure: alembic's path meets it again and reports it
        return False


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    _in_thread(lambda: command.downgrade(alembic_config(url), revision))


VERSION_TABLE = "alembic_version"
SchemaState = Literal["ok", "missing", "behind", "ahead"]


_HEADS = frozenset(REVISIONS[-1:])
_KNOWN = frozenset(REVISIONS)


def head_revisions() -> frozenset[str]:
    """The revisions a database at the latest schema of this version is at."""
    return _HEADS


def schema_state(connection: Connection) -> tuple[SchemaState, tuple[str, ...]]:
    """Where the database on ``connection`` stands against the shipped migrations.

    ``missing``: no revision recorded (an empty database); ``behind``: older
    revisions of ours; ``ahead``: a revision this version does not know (a
    newer version migrated it). Returns the state and the recorded revisions.
    """
    # Read directly, not through alembic's MigrationContext, which logs a line
    # at every call (this runs at each start-up and each /healthz).
    current: tuple[str, ...] = ()
    if inspect(connection).has_table(VERSION_TABLE):
        rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))  # noqa: S608
        current = tuple(str(row[0]) for row in rows)
    if not current:
        return "missing", current
    if set(current) == _HEADS:
        return "ok", current
    if set(current) <= _KNOWN:
        return "behind", current
    return "ahead", current
