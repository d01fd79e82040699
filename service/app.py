"""The extension, ``TokenGate``, and ``create_app()``: the extension on an empty app."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quart import Quart
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from . import tokens
from .accounts import Accounts
from .db.engine import build_engine, build_sessionmaker
from .db.migrate import head_revisions, schema_state, upgrade
from .errors import describe, is_infrastructure_failure, mask_url, register_error_handler
from .guard import finish_response, guard
from .openapi import docs_bp
from .outbox import FileOutbox, Sender
from .passwords import Passwords
from .purpose import PurposeTokens
from .sessions import SessionManager
from .settings import Settings
from .store import pipelined
from .store.embedded import EmbeddedRedis
from .store.redis_store import RedisSessionStore
from .store.results import SessionPolicy

log = logging.getLogger("tokengate")

# Redis must answer fast or the request fails closed; one immediate retry
# lets a pooled connection that died with a restarted server reconnect.
REDIS_TIMEOUT = 0.5
MAX_BODY_BYTES = 64 * 1024


class SchemaNotReady(RuntimeError):
    """The database's schema is missing or behind: start-up stops, naming the fix."""


def load_or_create_secret(instance_dir: Path) -> str:
    """The signing key kept in ``<instance>/secret.key``, created (0600) on first use."""
    path = instance_dir / "secret.key"
    instance_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if len(key.encode()) < 32:
            raise RuntimeError(f"{path} holds a key shorter than 32 bytes") from None
        return key
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    log.warning(
        "TOKENGATE_SECRET_KEY is not set: generated a signing key in %s; "
        "set the variable in production",
        path,
    )
    return key


class TokenGate:
    """Token authentication for a Quart app: routes, guard, storage, lifecycle.

    ``TokenGate(app)`` reads settings from the environment when ``settings``
    is not given. Everything with I/O (engine, Redis, the embedded server) is
    built in ``before_serving`` and released in ``after_serving``.
    """

    def __init__(
        self,
        app: Quart | None = None,
        *,
        settings: Settings | None = None,
        sender: Sender | None = None,
        clock: Callable[[], float] = time.time,
        passwords: Passwords | None = None,
        url_prefix: str = "/auth",
    ) -> None:
        self._settings = settings
        self._passwords = passwords
        self._sender = sender
        self.clock = clock
        self.url_prefix = url_prefix
        self._manager: SessionManager | None = None
        self._accounts: Accounts | None = None
        self._purpose_tokens: PurposeTokens | None = None
        self._redis: Redis | None = None
        self._engine: AsyncEngine | None = None
        self._embedded: EmbeddedRedis | None = None
        self._pipelined: pipelined.PipelinedScripts | None = None
        self.openapi_document: dict[str, Any] | None = None
        if app is not None:
            self.init_app(app)

    # -- wiring -----------------------------------------------------------
    def init_app(self, app: Quart) -> None:
        from .api.account import account_bp
        from .api.auth import auth_bp
        from .api.health import health_bp

        app.extensions["tokengate"] = self
        app.register_blueprint(auth_bp, url_prefix=self.url_prefix)
        app.register_blueprint(health_bp)
        app.register_blueprint(account_bp)
        # Our OpenAPI document is built from the route table on first use; a
        # host app that already serves its own (quart-schema) keeps its own.
        if "QUART_SCHEMA" not in app.extensions:
            app.register_blueprint(docs_bp)
        app.before_request(guard)
        app.after_request(finish_response)
        register_error_handler(app, everything=False)
        app.before_serving(self.startup)
        app.after_serving(self.shutdown)

    def reconfigure(
        self,
        *,
        settings: Settings | None = None,
        clock: Callable[[], float] | None = None,
        passwords: Passwords | None = None,
    ) -> None:
        """Replace the settings, the clock or the password hasher before the app is served.

        The test kit (``quart_tokengate.client.pytest_plugin``) serves a user's
        app this way, on its own storage and clock. Only Python code holding
        the extension can call it, and only before start-up: no setting,
        variable or route can move a service's clock.
        """
        if self._manager is not None:
            raise RuntimeError("tokengate is started: reconfigure it before serving the app")
        if settings is not None:
            self._settings = settings
        if clock is not None:
            self.clock = clock
        if passwords is not None:
            self._passwords = passwords

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def manager(self) -> SessionManager:
        if self._manager is None:
            raise RuntimeError("tokengate is not started: run the app (before_serving)")
        return self._manager

    @property
    def accounts(self) -> Accounts:
        if self._accounts is None:
            raise RuntimeError("tokengate is not started: run the app (before_serving)")
        return self._accounts

    @property
    def purpose_tokens(self) -> PurposeTokens:
        if self._purpose_tokens is None:
            raise RuntimeError("tokengate is not started: run the app (before_serving)")
        return self._purpose_tokens

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("tokengate is not started")
        return self._redis

    @property
    def db(self) -> async_sessionmaker[AsyncSession]:
        return self.manager.db

    # -- lifecycle --------------------------------------------------------
    async def startup(self) -> None:
        settings = self.settings
        self._engine = build_engine(settings.sqlalchemy_url)
        try:
            await self._check_schema(self._engine)
        except BaseException:
            await self._engine.dispose()
            self._engine = None
            raise
        key = settings.secret_key
        if key is None:
            key = await asyncio.to_thread(load_or_create_secret, settings.instance_dir)
        redis_url = settings.redis_url
        if redis_url is None:
            self._embedded = EmbeddedRedis(settings.instance_dir / "redis")
            redis_url = await asyncio.to_thread(self._embedded.start)
        self._redis = Redis.from_url(
            redis_url,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            max_connections=200,
        )
        signing = tokens.SigningConfig(
            key=key, issuer=settings.issuer, audience=settings.audience, leeway=settings.leeway
        )
        policy = SessionPolicy(
            settings.idle_timeout, settings.session_max_age, settings.refresh_grace
        )
        self._pipelined = pipelined.for_client(self._redis, REDIS_TIMEOUT)
        store = RedisSessionStore(self._redis, policy, self._pipelined)
        db = build_sessionmaker(self._engine)
        self._manager = SessionManager(settings, signing, store, db, clock=self.clock)
        self._purpose_tokens = PurposeTokens(signing, db, clock=self.clock)
        self._accounts = Accounts(
            settings,
            store,
            db,
            self._passwords if self._passwords else await asyncio.to_thread(Passwords),
            self._manager,
            self._purpose_tokens,
            clock=self.clock,
        )
        if self._sender is None:
            self._sender = FileOutbox(settings.instance_dir / "outbox")

    async def _check_schema(self, engine: AsyncEngine) -> None:
        """Start only on a schema at head: the embedded SQLite default migrates itself.

        Any other database whose schema is missing or behind stops start-up
        with one line naming ``tokengate db upgrade``: migrating a shared
        database is the operator's step, taken once, not every instance's. A
        database that cannot be reached now is logged and start-up goes on;
        requests answer ``503`` until it is back.
        """
        settings = self.settings
        url = settings.sqlalchemy_url
        embedded = settings.database_url is None
        if embedded:
            await asyncio.to_thread(settings.instance_dir.mkdir, parents=True, exist_ok=True)
        try:
            async with engine.connect() as conn:
                state, current = await conn.run_sync(schema_state)
        except Exception as exc:
            if not is_infrastructure_failure(exc):
                raise SchemaNotReady(
                    f"cannot read the schema of the database {mask_url(url)}: {describe(exc)}"
                ) from exc
            log.warning("database %s cannot be reached: %s", mask_url(url), describe(exc))
            return
        if state in ("missing", "behind") and embedded:
            await asyncio.to_thread(upgrade, url)
            log.info("migrated the embedded database %s to the latest schema", mask_url(url))
        elif state in ("missing", "behind"):
            at = f"at {', '.join(current)}" if current else "empty"
            raise SchemaNotReady(
                f"the database {mask_url(url)} is {at}, and this version needs revision "
                f"{', '.join(sorted(head_revisions()))}: run `tokengate db upgrade` "
                "(with the same TOKENGATE_DATABASE_URL) first"
            )
        elif state == "ahead":
            log.warning(
                "the database %s is at revision %s, newer than this version knows",
                mask_url(url),
                ", ".join(current),
            )

    async def shutdown(self) -> None:
        if self._manager is not None:
            await self._manager.drain()
            self._manager = self._accounts = self._purpose_tokens = None
        if self._pipelined is not None:
            self._pipelined.close()
            self._pipelined = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
            self._embedded = None

    @property
    def sender(self) -> Sender:
        assert self._sender is not None
        return self._sender

    @property
    def refresh_path(self) -> str:
        """The path of the refresh route: where the refresh cookie is sent."""
        return f"{self.url_prefix}/refresh"


def create_app(settings: Settings | None = None, **gate_options: Any) -> Quart:
    """The service: ``TokenGate`` on an empty Quart app, with JSON for every error."""
    app = Quart("tokengate")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    TokenGate(app, settings=settings, **gate_options)
    # Our own app: every error, Quart's included, is contract JSON.
    register_error_handler(app, everything=True)
    return app
