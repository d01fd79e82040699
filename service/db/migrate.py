"""Running the alembic migrations from code (``db upgrade``, ``serve``, tests)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

# The migrations ship inside the package, so an installed copy finds them
# with no alembic.ini: the configuration is built here, in code.
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    """An alembic ``Config`` for the migrations shipped in the package, against ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is an INI file: a literal % must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _in_thread(work: Callable[[], None]) -> None:
    # env.py runs its own event loop, which cannot start inside a running one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(work).result()


# A revision applied: its id and the first line of its message.
Applied = tuple[str, str]


def upgrade(url: str, revision: str = "head") -> list[Applied]:
    """``alembic upgrade`` against ``url``; blocking (it runs its own event loop).

    Returns the revisions it applied, oldest first: none when the database
    was already there (or another instance migrated it while this one waited
    for the lock).
    """
    config = alembic_config(url)
    applied: list[Applied] = []
    config.attributes["applied"] = applied  # env.py appends to it
    _in_thread(lambda: command.upgrade(config, revision))
    return applied


def downgrade(url: str, revision: str = "base") -> None:
    _in_thread(lambda: command.downgrade(alembic_config(url), revision))


VERSION_TABLE = "alembic_version"
SchemaState = Literal["ok", "missing", "behind", "ahead"]


@functools.cache
def _scripts() -> tuple[frozenset[str], frozenset[str]]:
    """The head revisions of the shipped migrations, and every revision they know."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    known = frozenset(script.revision for script in scripts.walk_revisions())
    return frozenset(scripts.get_heads()), known


def head_revisions() -> frozenset[str]:
    """The revisions a database at the latest schema of this version is at."""
    return _scripts()[0]


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
    heads, known = _scripts()
    if not current:
        return "missing", current
    if set(current) == heads:
        return "ok", current
    if set(current) <= known:
        return "behind", current
    return "ahead", current
