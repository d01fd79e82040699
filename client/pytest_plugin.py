"""tokengate's pytest plugin: fixtures for suites that test an API behind tokengate.

Registered by installing the distribution (entry point ``pytest11``, name
``tokengate``). Fixtures (docs/testing.md):

- ``tokengate_app``: the Quart app under test; override it in a conftest.
- ``tokengate_server``: that app served over real HTTP on a free loopback port.
- ``tokengate_clock``: the service's and the fixture clients' clock.
- ``tokengate_user``, ``tokengate_tokens``: factories of users and token pairs.
- ``auth_client``, ``sync_auth_client``: clients logged in as a new user (``.user``),
  counting their refreshes (``.refreshes``).
- ``tokengate_device_approve``: confirm (or deny) a pending device login as a user.

This module imports only the client and pytest. The service (Quart,
SQLAlchemy, redis) is imported inside the fixtures that need it, so a
client-only install starts pytest as usual, and such a fixture says which
extra to install.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from ._client import AsyncAuthClient, AuthClient
from ._store import MemoryTokenStore
from ._tokens import Tokens

if TYPE_CHECKING:
    from quart import Quart

__all__ = [
    "KitAsyncAuthClient",
    "KitAuthClient",
    "TokengateClock",
    "TokengateServer",
    "TokengateServiceClient",
    "TokengateUser",
]

SERVER_EXTRA = 'pip install "quart-tokengate[server]"'

# The time pinned for one task: (clock, seconds). One variable for every clock,
# created once (context variables are not meant to be made per object).
_PINNED: contextvars.ContextVar[tuple[TokengateClock, float] | None] = contextvars.ContextVar(
    "tokengate_pinned_time", default=None
)


class TokengateClock:
    """The clock shared by the service under test and the fixture clients.

    It starts at the real time and stands still until ``advance(s)`` moves it
    ``s`` seconds forward, for the service and the clients together, so every
    boundary (expiry, idle timeout, grace window) falls on the exact second
    however slow the machine. It never goes back: an absolute expiry the
    service hands to Redis is never earlier than that clock's idea of it
    unless a test runs, in real time, longer than the service's slack past
    the session's age; and even then the service rebuilds the state from SQL.
    """

    def __init__(self) -> None:
        self._now = time.time()
        self._offset = 0.0

    def __call__(self) -> float:
        pinned = _PINNED.get()
        if pinned is not None and pinned[0] is self:
            return pinned[1]
        return self._now + self._offset

    def __repr__(self) -> str:
        return f"TokengateClock(advanced={self._offset:g}s)"

    @property
    def advanced(self) -> float:
        """The seconds this clock has been moved forward since the test began."""
        return self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward (a finite number, zero or more)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("the clock only moves forward, by a finite number of seconds")
        self._offset += seconds

    @contextlib.contextmanager
    def pinned(self, when: float) -> Iterator[None]:
        """Read ``when`` in this task (and tasks it starts) until the block ends."""
        token = _PINNED.set((self, when))
        try:
            yield
        finally:
            _PINNED.reset(token)


@dataclass(frozen=True)
class TokengateUser:
    """A registered user: ``username`` and ``password`` log in."""

    id: int
    username: str
    password: str
    scopes: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the password stays out of reports
        return f"TokengateUser(id={self.id}, username={self.username!r})"


@dataclass(frozen=True)
class TokengateServiceClient:
    """A registered client of a service account: use it with ``AsyncAuthClient.for_client``."""

    client_id: str
    client_secret: str
    scopes: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the secret stays out of reports
        return f"TokengateServiceClient(client_id={self.client_id!r}, scopes={self.scopes!r})"


class _Served(Protocol):
    base_url: str
    app: Any


class _Maker(Protocol):
    def user(self, scopes: tuple[str, ...], password: str | None) -> Any: ...

    def tokens(self, user: Any, state: str) -> tuple[dict[str, Any], float]: ...

    def api_key(self, user: Any, scopes: tuple[str, ...], state: str) -> str: ...
    def service_client(self, scopes: tuple[str, ...]) -> Any: ...
    def device(self, user_code: str, user: Any, approve: bool) -> None: ...


@dataclass(frozen=True)
class TokengateServer:
    """The app under test, served over HTTP at ``base_url``."""

    base_url: str
    app: Quart
    clock: TokengateClock
    redis_url: str
    database_url: str
    _maker: _Maker

    def __repr__(self) -> str:
        return f"TokengateServer(base_url={self.base_url!r})"


def _service_kit(fixture: str) -> ModuleType:
    """``quart_tokengate.service.testing``, or a failure saying which extra to install."""
    try:
        from ..service import testing
    except ImportError as exc:
        missing = exc.name
    else:
        return testing
    pytest.fail(
        f"the {fixture} fixture needs the tokengate service ({missing} is missing): {SERVER_EXTRA}",
        pytrace=False,
    )


# -- the app and its server ------------------------------------------------
@pytest.fixture
def tokengate_app() -> Quart:
    """The Quart app under test: ``create_app()``; override it to serve your own app."""
    _service_kit("tokengate_app")
    from ..service import create_app

    return create_app()


@pytest.fixture
def tokengate_clock() -> TokengateClock:
    """The clock of the service under test and of the fixture clients."""
    return TokengateClock()


@pytest.fixture(scope="session")
def _tokengate_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    kit = _service_kit("tokengate_server")
    storage = kit.Storage(tmp_path_factory.mktemp("tokengate"))
    yield storage
    storage.close()


@pytest.fixture
def tokengate_server(
    tokengate_app: Quart,
    tokengate_clock: TokengateClock,
    _tokengate_storage: Any,
    tmp_path: Path,
) -> Iterator[TokengateServer]:
    """``tokengate_app`` served on a free loopback port, on fresh storage and the kit's clock."""
    kit = _service_kit("tokengate_server")
    instance = tmp_path / "tokengate-instance"
    try:
        changes = {
            "redis_url": _tokengate_storage.fresh_redis(),
            "database_url": _tokengate_storage.fresh_database(instance),
            "instance_dir": instance,
        }
    except kit.KitError as exc:
        pytest.fail(str(exc), pytrace=False)
    with kit.served(tokengate_app, changes, tokengate_clock) as served:
        gate = kit.gate_of(tokengate_app)
        yield TokengateServer(
            base_url=served.base_url,
            app=tokengate_app,
            clock=tokengate_clock,
            redis_url=changes["redis_url"],
            database_url=changes["database_url"],
            _maker=kit.Maker(served, gate, tokengate_clock),
        )


# -- users and tokens ------------------------------------------------------
class UserFactory(Protocol):
    def __call__(self, scopes: Any = (), password: str | None = None) -> TokengateUser: ...


class TokensFactory(Protocol):
    def __call__(self, user: TokengateUser, state: str = "live") -> Tokens: ...


@pytest.fixture
def tokengate_user(tokengate_server: TokengateServer) -> UserFactory:
    """``tokengate_user(scopes=(), password=None)`` registers a new user and returns it."""

    def make(scopes: Any = (), password: str | None = None) -> TokengateUser:
        scopes = (scopes,) if isinstance(scopes, str) else tuple(scopes)
        kit = _service_kit("tokengate_user")
        try:
            made = tokengate_server._maker.user(scopes, password)
        except kit.KitError as exc:
            pytest.fail(f"tokengate_user: {exc}", pytrace=False)
        return TokengateUser(made.id, made.username, made.password, scopes)

    return make


@pytest.fixture
def tokengate_tokens(tokengate_server: TokengateServer) -> TokensFactory:
    """``tokengate_tokens(user, state="live")``: a real pair in that state at the current clock.

    States: ``live``, ``expired``, ``revoked``, ``idle``, ``replaced``, ``stale``
    (docs/testing.md says what the guard answers to each).
    """

    def make(user: TokengateUser, state: str = "live") -> Tokens:
        kit = _service_kit("tokengate_tokens")
        try:
            pair, handed_out = tokengate_server._maker.tokens(
                kit.MadeUser(user.id, user.username, user.password), state
            )
        except kit.KitError as exc:
            pytest.fail(f"tokengate_tokens(state={state!r}): {exc}", pytrace=False)
        return Tokens.from_json(pair).received(handed_out)

    return make


class ApiKeyFactory(Protocol):
    def __call__(self, user: TokengateUser, scopes: Any = (), state: str = "live") -> str: ...


@pytest.fixture
def tokengate_api_key(tokengate_server: TokengateServer) -> ApiKeyFactory:
    """``tokengate_api_key(user, scopes=(), state="live")``: a real API key in that state now.

    States: ``live`` (the guard answers ``200``), ``expired`` (``token_expired``),
    ``revoked`` (``token_revoked``); ``tokengate_clock.advance`` moves a live
    key towards its expiry (docs/testing.md).
    """

    def make(user: TokengateUser, scopes: Any = (), state: str = "live") -> str:
        scopes = (scopes,) if isinstance(scopes, str) else tuple(scopes)
        kit = _service_kit("tokengate_api_key")
        try:
            return tokengate_server._maker.api_key(
                kit.MadeUser(user.id, user.username, user.password), scopes, state
            )
        except kit.KitError as exc:
            pytest.fail(f"tokengate_api_key(state={state!r}): {exc}", pytrace=False)

    return make


class ServiceClientFactory(Protocol):
    def __call__(self, scopes: Any = ()) -> TokengateServiceClient: ...


@pytest.fixture
def tokengate_service_client(tokengate_server: TokengateServer) -> ServiceClientFactory:
    """``tokengate_service_client(scopes=())`` registers a client for the client-credentials
    grant and returns its ``.client_id`` and ``.client_secret``."""

    def make(scopes: Any = ()) -> TokengateServiceClient:
        scopes = (scopes,) if isinstance(scopes, str) else tuple(scopes)
        kit = _service_kit("tokengate_service_client")
        try:
            made = tokengate_server._maker.service_client(scopes)
        except kit.KitError as exc:
            pytest.fail(f"tokengate_service_client: {exc}", pytrace=False)
        return TokengateServiceClient(made.client_id, made.client_secret, scopes)

    return make


class DeviceApprover(Protocol):
    def __call__(self, user_code: str, user: TokengateUser, *, approve: bool = True) -> None: ...


@pytest.fixture
def tokengate_device_approve(tokengate_server: TokengateServer) -> DeviceApprover:
    """``tokengate_device_approve(user_code, user, approve=True)``: confirm a pending device
    login as ``user``, as a person on ``/account/device`` would (``approve=False`` denies)."""

    def decide(user_code: str, user: TokengateUser, *, approve: bool = True) -> None:
        kit = _service_kit("tokengate_device_approve")
        try:
            tokengate_server._maker.device(
                user_code, kit.MadeUser(user.id, user.username, user.password), approve
            )
        except kit.KitError as exc:
            pytest.fail(f"tokengate_device_approve: {exc}", pytrace=False)

    return decide


# -- logged-in clients -----------------------------------------------------
class _KitClient:
    """What both kit clients add: the ``user`` they logged in as, and a count of the
    refreshes they made by themselves (their ``on_refreshed`` hook)."""

    def __init__(self, user: TokengateUser, **kwargs: Any) -> None:
        super().__init__(on_refreshed=self._count_refresh, **kwargs)  # type: ignore[call-arg]
        self.user = user
        self.refreshes = 0

    def _count_refresh(self, _: Tokens) -> None:
        self.refreshes += 1


class KitAsyncAuthClient(_KitClient, AsyncAuthClient):
    """``auth_client``: an ``AsyncAuthClient`` logged in as ``user``, counting its refreshes.

    ``user`` is the ``TokengateUser`` it logged in as (``.username``,
    ``.password``); ``refreshes`` the new pairs it got by itself (its
    ``on_refreshed`` hook), so a test can assert how many refreshes a step took.
    """


class KitAuthClient(_KitClient, AuthClient):
    """``sync_auth_client``: an ``AuthClient`` logged in as ``user``, counting its refreshes."""


@pytest.fixture
def sync_auth_client(
    tokengate_server: TokengateServer, tokengate_user: UserFactory
) -> Iterator[KitAuthClient]:
    """An ``AuthClient`` on ``tokengate_server``, logged in as a new user (``.user``)."""
    user = tokengate_user()
    with KitAuthClient(
        user,
        base_url=tokengate_server.base_url,
        clock=tokengate_server.clock,
        token_store=MemoryTokenStore(),
    ) as client:
        client.login(user.username, user.password)
        yield client


async def _auth_client(
    tokengate_server: TokengateServer, tokengate_user: UserFactory
) -> AsyncIterator[KitAsyncAuthClient]:
    """An ``AsyncAuthClient`` on ``tokengate_server``, logged in as a new user (``.user``)."""
    user = tokengate_user()
    async with KitAsyncAuthClient(
        user,
        base_url=tokengate_server.base_url,
        clock=tokengate_server.clock,
        token_store=MemoryTokenStore(),
    ) as client:
        await client.login(user.username, user.password)
        yield client


if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    # pytest-asyncio's own decorator: the fixture works in strict mode and auto mode.
    auth_client = pytest_asyncio.fixture(_auth_client, name="auth_client")
else:  # pragma: no cover

    @pytest.fixture(name="auth_client")
    def _no_auth_client() -> None:
        pytest.fail("the auth_client fixture is async: pip install pytest-asyncio", pytrace=False)
