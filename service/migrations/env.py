"""Alembic environment, async: migrations run over the service's own async engine."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from quart_tokengate.service.db.engine import build_migration_engine
from quart_tokengate.service.db.models import Base
from quart_tokengate.service.settings import Settings

config = context.config
target_metadata = Base.metadata

# pg_advisory_lock key that serialises the migrations of every instance on one
# PostgreSQL database ("tokengate" in ASCII, a stable 64-bit number).
MIGRATION_LOCK_KEY = 0x746F6B656E67617465 & 0x7FFFFFFFFFFFFFFF


def database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings.from_env().sqlalchemy_url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def record_applied(*, step: Any, **_: Any) -> None:
    """Note each revision applied, for ``tokengate db upgrade`` to name (``db.migrate.upgrade``)."""
    applied = config.attributes.get("applied")
    if applied is not None and step.is_upgrade:
        title = (step.up_revision.doc or "").strip().splitlines()
        applied.append((step.up_revision_id, title[0] if title else ""))


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        on_version_apply=record_applied,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    """Apply the migrations under the database's lock, so instances never race.

    PostgreSQL: a session-level advisory lock held on this connection from
    before alembic reads its version table until the migrations are
    committed; an instance that waited finds the schema at head. SQLite:
    the whole run is one ``BEGIN IMMEDIATE`` transaction (see the engine).
    """
    engine = build_migration_engine(database_url())
    try:
        async with engine.connect() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:
                lock = text("SELECT pg_advisory_lock(:key)")
                await connection.execute(lock, {"key": MIGRATION_LOCK_KEY})
                await connection.commit()
            try:
                # One transaction for the whole run (on SQLite it begins
                # IMMEDIATE); alembic sees it is in one and leaves it to us.
                async with connection.begin():
                    await connection.run_sync(do_run_migrations)
            finally:
                if postgres:
                    await connection.rollback()
                    unlock = text("SELECT pg_advisory_unlock(:key)")
                    await connection.execute(unlock, {"key": MIGRATION_LOCK_KEY})
                    await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
