"""The alembic migrations: upgrade, downgrade, upgrade, and the models match them."""

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from quart_tokengate.service.db.migrate import MIGRATIONS, downgrade, upgrade
from quart_tokengate.service.db.models import Base

TABLES = {"users", "sessions", "purpose_tokens"}


async def tables_and_diff(url):
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:

            def inspect_sync(sync_conn):
                names = set(inspect(sync_conn).get_table_names())
                diff = compare_metadata(MigrationContext.configure(sync_conn), Base.metadata)
                return names, diff

            return await conn.run_sync(inspect_sync)
    finally:
        await engine.dispose()


@pytest.fixture
def database_urls(tmp_path, postgres_url):
    found = [f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}", postgres_url]
    yield found
    # Leave a shared PostgreSQL database at head for the other tests.
    for url in found:
        upgrade(url)


async def test_upgrade_downgrade_upgrade(database_urls):
    for url in database_urls:
        await asyncio.to_thread(upgrade, url)
        names, diff = await tables_and_diff(url)
        assert names >= TABLES, url
        assert diff == [], (url, diff)
        await asyncio.to_thread(downgrade, url)
        names, _ = await tables_and_diff(url)
        assert not (TABLES & names), url
        await asyncio.to_thread(upgrade, url)
        names, diff = await tables_and_diff(url)
        assert names >= TABLES and diff == [], url


def test_migrations_are_named_by_date():

    versions = MIGRATIONS / "versions"
    files = sorted(p.name for p in versions.glob("*.py"))
    assert files and all(name[:4].isdigit() and name[4] == "_" for name in files)
