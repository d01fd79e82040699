"""The extension, ``TokenGate``, and ``create_app()``: the extension on an empty app."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quart import Quart
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from . import instance, keys
from .accounts import Accounts
from .api.docs import docs_bp
from .credentials.manager import ApiKeyManager
from .credentials.proofs import ProofChecks
from .credentials.secret import api_key_secret
from .db.engine import build_engine, build_sessionmaker
from .db.migrate import head_revisions, schema_state, upgrade
from .edge import RejectMalformedRequests
from .errors import (
    InvalidToken,
    describe,
    is_infrastructure_failure,
    mask_url,
    register_error_handler,
)
from .logs import ensure_output
from .metrics import TimedRedis, count_database_error, metrics_bp, observe_redis_call
from .observe import RequestHooks
from .outbox import FileOutbox, Sender
from .passwords import Passwords
from .purpose import PurposeTokens
from .sessions import SessionManager
from .settings import Settings
from .store import pipelined
from .store.api_keys import RedisApiKeyStore
from .store.connect import REDIS_TIMEOUT, AnyRedis, build_redis
from .store.embedded import EmbeddedRedis
from .store.near import NearChecks
from .store.redis_store import RedisSessionStore
from .store.results import SessionPolicy
from .users import ClaimsHook, SqlUserStore, UserStore

log = logging.getLogger("tokengate")

MAX_BODY_BYTES = 64 * 1024
# How long start-up waits for the configured Redis to answer a PING before saying it does not.
REDIS_CHECK_DEADLINE = 2.0
# Allocations between two young-generation collections (Python's default: 700).
YOUNG_GC_THRESHOLD = 10_000


class SchemaNotReady(RuntimeError):
    """The database's schema is missing or behind: start-up stops, naming the fix."""


def _no_refusal_traceback(record: logging.LogRecord) -> bool:
    # Quart logs a failed start-up with its traceback before the server prints
    # the error's one line; a refusal that names its own fix needs only that line.
    return not (record.exc_info and isinstance(record.exc_info[1], SchemaNotReady))


def read_legacy_secret(instance_dir: Path) -> str | None:
    """The HS256 key an older install kept in ``<instance>/secret.key``, if any.

    It becomes the first key stored in the database, so that upgrading keeps
    every session; the file is no longer read after that.
    """
    path = instance_dir / "secret.key"
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        return None
    return key if len(key.encode()) >= 32 else None


class TokenGate:
    """Token authentication for a Quart app: routes, guard, storage, lifecycle.

    ``TokenGate(app)`` reads settings from the environment when ``settings``
    is not given. ``user_store`` is where users come from (default: the
    ``users`` table; see ``users.UserStore``); ``claims`` is a callable, sync
    or async, given a ``UserRecord`` and returning extra access-token claims
    (registered claims are ignored). Everything with I/O (engine, Redis, the embedded server) is
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
        user_store: UserStore | None = None,
        claims: ClaimsHook | None = None,
    ) -> None:
        self._settings = settings
        self.user_store = user_store
        self.claims_hook = claims
        self._passwords = passwords
        self._sender = sender
        self.clock = clock
        self.url_prefix = url_prefix
        self._manager: SessionManager | None = None
        self._accounts: Accounts | None = None
        self._purpose_tokens: PurposeTokens | None = None
        self._api_keys: ApiKeyManager | None = None
        self._proofs: ProofChecks | None = None
        self._redis: AnyRedis | None = None
        self._engine: AsyncEngine | None = None
        self._embedded: EmbeddedRedis | None = None
        self._pipelined: pipelined.PipelinedScripts | None = None
        self.near: NearChecks | None = None
        self.openapi_document: dict[str, Any] | None = None
        self._keyring: keys.KeyRing | None = None
        self._keys_task: asyncio.Task[None] | None = None
        if app is not None:
            self.init_app(app)

    # -- wiring -----------------------------------------------------------
    def init_app(self, app: Quart) -> None:
        from .api.account import account_bp
        from .api.api_keys import api_keys_bp
        from .api.auth import auth_bp
        from .api.device_page import device_page_bp
        from .api.health import health_bp
        from .api.oauth import oauth_bp
        from .api.wellknown import wellknown_bp
        from .oauth.device_authorization import device_bp
        from .oauth.endpoint import oauth_token_bp

        app.extensions["tokengate"] = self
        app.register_blueprint(auth_bp, url_prefix=self.url_prefix)
        app.register_blueprint(oauth_bp, url_prefix=self.url_prefix)
        app.register_blueprint(api_keys_bp, url_prefix=self.url_prefix)
        app.register_blueprint(oauth_token_bp)
        app.register_blueprint(device_bp)
        app.register_blueprint(health_bp)
        app.register_blueprint(wellknown_bp)
        app.register_blueprint(account_bp)
        app.register_blueprint(device_page_bp)
        # Our OpenAPI document is built from the route table on first use; a
        # host app that already serves its own (quart-schema) keeps its own.
        if "QUART_SCHEMA" not in app.extensions:
            app.register_blueprint(docs_bp)
        app.register_blueprint(metrics_bp)
        # One hook each way, as cheap as can be for a route the guard does not
        # cover: the timer starts, then the guard runs; re-issued tokens, then
        # the access log and request metrics (see observe.py).
        hooks = RequestHooks(self, app)
        app.before_request(hooks.before_request)
        app.after_request(hooks.after_request)
        register_error_handler(app, everything=False)
        app.before_serving(self.startup)
        app.after_serving(self.shutdown)
        app.logger.addFilter(_no_refusal_traceback)

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
    def proofs(self) -> ProofChecks:
        """``TOKENGATE_DPOP*`` as applied to requests (the nonce key is set at start-up)."""
        if self._proofs is None:
            self._proofs = ProofChecks.from_settings(self.settings)
        return self._proofs

    @property
    def api_keys(self) -> ApiKeyManager:
        """API keys (``TOKENGATE_API_KEYS``); a key sent where they are off is ``invalid_token``."""
        if self._api_keys is None:
            raise RuntimeError("tokengate is not started: run the app (before_serving)")
        if not self.settings.api_keys:
            raise InvalidToken("API keys are turned off on this server.")
        return self._api_keys

    @property
    def redis(self) -> AnyRedis:
        if self._redis is None:
            raise RuntimeError("tokengate is not started")
        return self._redis

    @property
    def keyring(self) -> keys.KeyRing:
        """The signing keys this instance signs and verifies with."""
        if self._keyring is None:
            raise RuntimeError("tokengate is not started")
        return self._keyring

    @property
    def db(self) -> async_sessionmaker[AsyncSession]:
        return self.manager.db

    # -- lifecycle --------------------------------------------------------
    async def startup(self) -> None:
        settings = self.settings
        ensure_output(settings.log_format)
        self._engine = build_engine(settings.sqlalchemy_url)
        event.listen(self._engine.sync_engine, "handle_error", count_database_error)
        try:
            await self._check_schema(self._engine)
        except BaseException:
            await self._engine.dispose()
            self._engine = None
            raise
        sessionmaker = build_sessionmaker(self._engine)
        keyring = keys.KeyRing(settings, sessionmaker, self.clock)
        api_key_digest = None
        if keyring.stored:
            legacy = None
            if settings.algorithm == "HS256":
                legacy = await asyncio.to_thread(read_legacy_secret, settings.instance_dir)
            try:
                await keyring.load(imported_secret=legacy)
                if settings.api_keys:  # read now: one left in plain text is wrapped at start
                    keks = keyring.key_encryption_keys
                    api_key_digest = await api_key_secret(settings, sessionmaker, keks)
            except BaseException:
                await self.shutdown()
                raise
            self._keys_task = asyncio.ensure_future(keyring.keep_fresh())
        if settings.dpop_nonce:  # the nonces are keyed by the deployment's secret
            secret = api_key_digest or await api_key_secret(
                settings, sessionmaker, keyring.key_encryption_keys if keyring.stored else None
            )
            self._proofs = ProofChecks.from_settings(settings, secret)
        self._keyring = keyring
        redis_url = settings.redis_url
        if redis_url is None:
            self._embedded = EmbeddedRedis(settings.instance_dir / "redis")
            redis_url = await asyncio.to_thread(self._embedded.start)
        if settings.redis_cluster:
            self._redis = build_redis(redis_url, cluster=True)
        else:
            self._redis = TimedRedis.from_url(
                redis_url,
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                max_connections=200,
            )
        policy = SessionPolicy(
            settings.idle_timeout, settings.session_max_age, settings.refresh_grace
        )
        # The lean path talks to one server; a cluster goes through its own client.
        self._pipelined = (
            None
            if isinstance(self._redis, RedisCluster)
            else pipelined.for_client(self._redis, REDIS_TIMEOUT, observe_redis_call)
        )
        if self._pipelined is not None:
            await self._pipelined.warm()
        if settings.redis_url is not None:
            await self._check_redis(settings.redis_url)
        store = RedisSessionStore(self._redis, policy, self._pipelined)
        db = sessionmaker
        passwords = self._passwords if self._passwords else await asyncio.to_thread(Passwords)
        users = self.user_store if self.user_store is not None else SqlUserStore(db, passwords)
        self._manager = SessionManager(
            settings, keyring, store, db, users, clock=self.clock, claims_hook=self.claims_hook
        )
        # Near checks: on by default where they are safe (store/near.py says when).
        if settings.near_cache is not False and self._pipelined is None:
            (log.warning if settings.near_cache else log.info)(
                "near checks off: they need one Redis over redis:// or unix:// "
                "(not TLS, not a cluster); every request waits for Redis"
            )
        elif settings.near_cache is not False and self._pipelined is not None:
            self.near = NearChecks(
                self._pipelined,
                idle_timeout=policy.idle_timeout,
                max_age=policy.max_age,
                clock=self.clock,
                vouched=settings.near_cache is True,
            )
            self.near.start()
            self._manager.near = self.near
        self._purpose_tokens = PurposeTokens(keyring, db, clock=self.clock)
        self._api_keys = ApiKeyManager(
            settings, RedisApiKeyStore(self._redis, self._pipelined), db, users,
            self._manager.background, clock=self.clock, secret=api_key_digest,
        )  # fmt: skip
        self._accounts = Accounts(
            settings,
            store,
            db,
            passwords,
            self._manager,
            self._purpose_tokens,
            clock=self.clock,
            users=users,
        )
        if self._sender is None:
            self._sender = FileOutbox(settings.instance_dir / "outbox")
        # What import and start-up made lives as long as the process: out of the
        # collector's way, so that a full collection does not walk it again and
        # again (measured: 30-40 ms pauses that set every route's p99).
        gc.freeze()
        # Young collections walk every live young object: with hundreds of
        # requests in flight, each of them walks all those requests' objects.
        # Fewer of them (measured: 6.6 % fewer instructions and 4-26 % more
        # requests per second at 200 connections); the older generations keep
        # Python's thresholds.
        young, older, oldest = gc.get_threshold()
        gc.set_threshold(max(YOUNG_GC_THRESHOLD, young), older, oldest)

    async def _check_redis(self, url: str) -> None:
        """Say at start-up, in one line, that the configured Redis does not answer.

        Start-up goes on: requests that need Redis answer ``503`` until it
        does, then work, with nothing to restart.
        """
        try:
            async with asyncio.timeout(REDIS_CHECK_DEADLINE):
                await self.redis.ping()
        except Exception as exc:
            log.warning(
                "Redis %s cannot be reached (requests that need it answer 503 until it does): %s",
                mask_url(url),
                describe(exc),
            )

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
            await asyncio.to_thread(instance.prepare, settings)
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
        await keys.stop(self._keys_task)
        self._keys_task = None
        if self._manager is not None:
            self._manager.near = None  # no more near answers, nor checks behind them
            await self._manager.background.drain()
            self._manager = self._accounts = self._purpose_tokens = None
            self._api_keys = None
        if self.near is not None:
            await self.near.close()
            self.near = None
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
    def own_users(self) -> bool:
        """Whether users live in tokengate's own table (no ``user_store`` given)."""
        return self.user_store is None

    async def end_sessions(self, user_id: int) -> None:
        """End every session of ``user_id``: call it after changing a password or
        disabling a user in your own user store."""
        await self.manager.end_all(user_id)

    async def user_changed(self, user_id: int) -> None:
        """Call after disabling or enabling a user, or changing their scopes, in your own
        user store: their API keys are checked against the change from the next request."""
        if self._api_keys is None:
            raise RuntimeError("tokengate is not started: run the app (before_serving)")
        await self._api_keys.user_changed(user_id)

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
    from .api.home import home_bp

    app = Quart("tokengate")
    # werkzeug answers a path with doubled slashes (/auth//me) with a redirect
    # to an absolute URL built from the request's Host: a redirect anyone can
    # point at another site. Such a path is a 404 here (set before any route).
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    TokenGate(app, settings=settings, **gate_options)
    app.register_blueprint(home_bp)
    # Our own app: every error, Quart's included, is contract JSON.
    register_error_handler(app, everything=True)
    # A Host header werkzeug cannot bind fails before any handler: refused here.
    app.asgi_app = RejectMalformedRequests(app.asgi_app)  # type: ignore[method-assign]
    return app
