"""Instances that start together on an empty database all come up: migrations take a lock.

PostgreSQL: three ``serve`` processes at once on a database created empty for
the round (several rounds), each then answering a login. SQLite: three
``db upgrade`` at once on one new file.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from quart_tokengate.service.db.migrate import alembic_config
from tests.support import SECRET, PrivateRedis, ServiceProcess, postgres_admin

ROUNDS = 3
INSTANCES = 3


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


async def _versions(url: str) -> list[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


@pytest.fixture
def empty_postgres(postgres_database: str) -> Iterator[list[str]]:
    """``ROUNDS`` empty PostgreSQL databases of this test's own, dropped at the end."""
    base = make_url(postgres_database)
    names = [f"{base.database}_race{n}" for n in range(1, ROUNDS + 1)]
    for name in names:
        asyncio.run(
            postgres_admin(postgres_database, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )
        asyncio.run(postgres_admin(postgres_database, f'CREATE DATABASE "{name}"'))
    yield [base.set(database=name).render_as_string(hide_password=False) for name in names]
    for name in names:
        asyncio.run(
            postgres_admin(postgres_database, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )


def test_serve_instances_started_together_on_empty_postgres_all_come_up(
    empty_postgres: list[str], private_redis: PrivateRedis, tmp_path: Path
) -> None:
    head = head_revision()
    for round_no, database_url in enumerate(empty_postgres, 1):
        services = [
            ServiceProcess(
                {
                    "TOKENGATE_SECRET_KEY": SECRET,
                    "TOKENGATE_REDIS_URL": private_redis.url,
                    "TOKENGATE_DATABASE_URL": database_url,
                    "TOKENGATE_INSTANCE_DIR": str(tmp_path / f"r{round_no}i{i}"),
                },
                tmp_path / f"r{round_no}i{i}",
            )
            for i in range(INSTANCES)
        ]
        try:
            for service in services:
                service.launch()
            for service in services:
                service.wait_ready(timeout=60)
            assert asyncio.run(_versions(database_url)) == [head]
            username = f"race{round_no}"
            password = "correct horse"
            r = httpx.post(
                services[0].base_url + "/auth/register",
                json={"username": username, "password": password},
            )
            assert r.status_code == 201, r.text
            for service in services:
                r = httpx.post(
                    service.base_url + "/auth/login",
                    json={"username": username, "password": password},
                    timeout=30,
                )
                assert r.status_code == 200, r.text
        finally:
            for service in services:
                service.stop()
        for service in services:
            assert "Traceback" not in service.log.read_text(), service.log.read_text()


def test_db_upgrade_together_on_one_new_sqlite_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    env.update(TOKENGATE_DATABASE_URL=url, TOKENGATE_INSTANCE_DIR=str(tmp_path / "instance"))
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "quart_tokengate.service", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(INSTANCES)
    ]
    for run in runs:
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0, out
    assert asyncio.run(_versions(url)) == [head_revision()]
