"""The extension on a fresh database, /healthz's schema, and log lines that name the cause."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from quart import Quart
from quart.testing.app import LifespanError
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from quart_tokengate.service import Settings, TokenGate, login_required
from quart_tokengate.service.db.migrate import downgrade, head_revisions, upgrade
from quart_tokengate.service.passwords import Passwords
from quart_tokengate.service.testing import FAST_HASHER
from tests.conftest import register_and_login
from tests.support import SECRET, bearer, free_port, postgres_admin

FIRST_REVISION = "c7f4af665137"


def host_app(redis_url: str, tmp_path: Path, database_url: str | None = None) -> Quart:
    app = Quart("host")

    @app.get("/notes")
    @login_required
    async def notes() -> dict[str, bool]:
        return {"ok": True}

    settings = Settings(
        secret_key=SECRET,
        redis_url=redis_url,
        database_url=database_url,
        instance_dir=tmp_path / "instance",
    )
    TokenGate(app, settings=settings, passwords=Passwords(FAST_HASHER))
    return app


async def start_up_error(app: Quart) -> str:
    """The one line start-up stopped with (Quart's test app re-raises it)."""
    with pytest.raises(LifespanError) as caught:
        async with app.test_app():
            pass
    message = str(caught.value).removeprefix("Error during startup ")
    assert "\n" not in message
    return message


async def test_embedded_sqlite_default_migrates_itself(redis_client, redis_url, tmp_path):
    app = host_app(redis_url, tmp_path)
    async with app.test_app():
        client = app.test_client()
        r = await client.get("/healthz")
        assert r.status_code == 200
        assert (await r.get_json())["schema"] == "ok"
        pair = await register_and_login(client)
        r = await client.get("/notes", headers=bearer(pair["access_token"]))
        assert r.status_code == 200
    assert (tmp_path / "instance" / "tokengate.db").is_file()


async def test_an_empty_configured_database_stops_start_up_naming_db_upgrade(
    redis_client, redis_url, tmp_path
):
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    app = host_app(redis_url, tmp_path, url)
    message = await start_up_error(app)
    assert "tokengate db upgrade" in message and "empty" in message
    # Nothing was created behind the operator's back.
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: c.dialect.get_table_names(c))
    finally:
        await engine.dispose()
    assert tables == []


async def test_a_database_behind_stops_start_up(redis_client, redis_url, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(upgrade, url, FIRST_REVISION)
    app = host_app(redis_url, tmp_path, url)
    message = await start_up_error(app)
    assert f"at {FIRST_REVISION}" in message and "tokengate db upgrade" in message
    await asyncio.to_thread(upgrade, url)
    async with app.test_app():
        r = await app.test_client().get("/healthz")
        assert r.status_code == 200 and (await r.get_json())["schema"] == "ok"


async def test_healthz_reports_a_schema_that_fell_behind(redis_client, redis_url, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'live.db'}"
    await asyncio.to_thread(upgrade, url)
    app = host_app(redis_url, tmp_path, url)
    async with app.test_app():
        client = app.test_client()
        assert (await (await client.get("/healthz")).get_json())["schema"] == "ok"
        await asyncio.to_thread(downgrade, url, FIRST_REVISION)
        r = await client.get("/healthz")
        assert r.status_code == 503
        assert await r.get_json() == {
            "status": "unavailable",
            "database": "ok",
            "redis": "ok",
            "schema": "behind",
        }


async def test_empty_postgres_stops_start_up_without_the_password(
    redis_client, redis_url, tmp_path, postgres_database
):
    base = make_url(postgres_database)
    name = f"{base.database}_fresh"
    await postgres_admin(postgres_database, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await postgres_admin(postgres_database, f'CREATE DATABASE "{name}"')
    try:
        # The test servers trust loopback: the password is carried, not checked.
        url = base.set(database=name, password="hunter2-secret").render_as_string(False)
        app = host_app(redis_url, tmp_path, url)
        message = await start_up_error(app)
        assert "tokengate db upgrade" in message and name in message
        assert "hunter2" not in message and "***" in message
        assert sorted(head_revisions())[0] in message
    finally:
        await postgres_admin(postgres_database, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_log_names_the_cause_of_an_unreachable_database(
    redis_client, redis_url, tmp_path, caplog
):
    url = f"postgresql+asyncpg://postgres:hunter2-secret@127.0.0.1:{free_port()}/nowhere"
    app = host_app(redis_url, tmp_path, url)
    caplog.set_level(logging.INFO, logger="tokengate")
    async with app.test_app():
        client = app.test_client()
        r = await client.post("/auth/login", json={"username": "a", "password": "correct horse"})
        assert r.status_code == 503
        r = await client.get("/healthz")
        assert (await r.get_json())["schema"] == "unknown"
    lines = [record.getMessage() for record in caplog.records if record.name == "tokengate"]
    start = [line for line in lines if "cannot be reached" in line]
    assert start and "***" in start[0] and "127.0.0.1" in start[0]
    # The cause is named with the driver's message, not a bare class name.
    assert "ConnectionRefusedError: [Errno 111] Connect call failed" in start[0], start[0]
    during = [line for line in lines if "auth backend unavailable" in line]
    assert during and "Connect call failed" in during[0], during[0]
    assert not any("hunter2" in line for line in lines)
