"""Exactly one refresh for many concurrent requests, against the real service.

Refreshes are counted by a transport that wraps the real one: it counts the
``POST /auth/refresh`` requests that the server answered. To meet an expired
token without waiting out a long lifetime, a test stores the session's own
access token as the service signed it ten minutes earlier (same ``sub``,
``sid``, ``jti``; ``exp`` past); the refresh token is the real one, and the
new access token lives 300 s, so even a slow machine finishes the burst with it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import jwt
import pytest

from quart_tokengate.client import AsyncAuthClient, AuthClient, MemoryTokenStore, Tokens
from quart_tokengate.service.tokens import AccessToken, SigningConfig, mint
from tests.support import (
    SECRET,
    PrivateRedis,
    ServiceProcess,
    refresh_waiters,
    start_service,
    wait_for,
    wait_for_async,
)

from .session_helpers import login, new_name, register

SIGNING = SigningConfig.from_secret(SECRET, "tokengate", "tokengate")
TIMEOUT = httpx.Timeout(120.0)
# httpcore's pool scans every queued request against every connection on each
# change, so 1,000 requests queued on 100 connections spend most of their time
# there; a smaller pool keeps the burst quick without changing what it tests.
LIMITS = httpx.Limits(max_connections=10)


class CountingTransport(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """The real HTTP transport, counting what the server answered.

    With ``hold_refresh_until``, the first ``POST /auth/refresh`` is sent on
    only once ``hold_refresh_until()`` is true: the refresh stays in flight
    until the requests meant to share it all wait for it, however slow the
    machine (a condition, looked at again and again; at most 60 s).
    """

    def __init__(
        self,
        limits: httpx.Limits = LIMITS,
        hold_refresh_until: Callable[[], object] | None = None,
    ) -> None:
        self._async = httpx.AsyncHTTPTransport(limits=limits)
        self._sync = httpx.HTTPTransport(limits=limits)
        self._lock = threading.Lock()
        self._release = hold_refresh_until
        self.answered: Counter[tuple[str, int]] = Counter()
        self.sent_tokens: list[str] = []

    @property
    def refreshes(self) -> int:
        return sum(n for (path, _), n in self.answered.items() if path == "POST /auth/refresh")

    @property
    def unauthorized(self) -> int:
        return sum(n for (_, status), n in self.answered.items() if status == 401)

    def _held(self, request: httpx.Request) -> Callable[[], object] | None:
        if request.url.path != "/auth/refresh":
            return None
        with self._lock:
            release, self._release = self._release, None
        return release

    def _count(self, request: httpx.Request, response: httpx.Response) -> None:
        with self._lock:
            self.answered[f"{request.method} {request.url.path}", response.status_code] += 1
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            self.sent_tokens.append(token)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        release = self._held(request)
        if release is not None:
            await wait_for_async(release, timeout=60, interval=0.005, what="the refresh's release")
        response = await self._async.handle_async_request(request)
        self._count(request, response)
        return response

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        release = self._held(request)
        if release is not None:
            wait_for(release, timeout=60, interval=0.005, what="the refresh's release")
        response = self._sync.handle_request(request)
        self._count(request, response)
        return response

    async def aclose(self) -> None:
        await self._async.aclose()

    def close(self) -> None:
        self._sync.close()


def expired(tokens: Tokens, ago: int = 600) -> Tokens:
    """The same session's access token as the service signed it ``ago`` seconds back."""
    claims = jwt.decode(tokens.access_token, options={"verify_signature": False})
    extra = {k: claims[k] for k in ("sid", "name", "auth_time")}
    access = mint(
        SIGNING, AccessToken.kind, sub=claims["sub"], jti=claims["jti"], iat=int(time.time()) - ago,
        ttl=60, extra=extra,
    )  # fmt: skip
    return Tokens(access, tokens.refresh_token, tokens.session_id)


def logged_in(base_url: str) -> Tokens:
    """A new user's first token pair."""
    name = new_name()
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as http:
        register(http, name)
        return Tokens.from_json(login(http, name))


def behind(seconds: float) -> Callable[[], float]:
    """A clock that many seconds slow: the client sends a token the service finds expired."""
    return lambda: time.time() - seconds


@pytest.fixture(scope="module")
def service(
    module_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service on its default lifetimes (access tokens live 300 s)."""
    started = start_service(tmp_path_factory.mktemp("client-concurrency"), module_redis.url)
    yield started
    started.stop()


@pytest.mark.parametrize("in_flight", [False, True], ids=["expired-before-sending", "in-flight"])
async def test_1000_concurrent_async_requests_cause_one_refresh(service, in_flight):
    old = expired(logged_in(service.base_url))
    # The refresh goes to the service once the 999 other requests wait for it.
    transport = CountingTransport(hold_refresh_until=lambda: refresh_waiters(api) == 999)
    async with AsyncAuthClient(
        base_url=service.base_url, transport=transport, timeout=TIMEOUT,
        token_store=MemoryTokenStore(old), clock=behind(3600) if in_flight else time.time,
    ) as api:  # fmt: skip
        responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(1000)))
        assert {r.status_code for r in responses} == {200}
        assert transport.refreshes == 1
        if in_flight:
            # Every request went out with the expired token and came back 401.
            assert transport.answered["GET /auth/me", 401] == 1000
        else:
            assert transport.unauthorized == 0
        assert transport.answered["GET /auth/me", 200] == 1000
        assert api.tokens is not None and api.tokens.refresh_token != old.refresh_token


@pytest.mark.parametrize("in_flight", [False, True], ids=["expired-before-sending", "in-flight"])
def test_64_threads_on_the_sync_client_cause_one_refresh(service, in_flight):
    old = expired(logged_in(service.base_url))
    # In flight, the refresh goes out once all 64 requests met the 401: a thread
    # the machine runs late must not find the new token already there.
    transport = CountingTransport(
        hold_refresh_until=(
            (lambda: transport.answered["GET /auth/me", 401] == 64) if in_flight else None
        ),
        limits=httpx.Limits(max_connections=64),
    )
    barrier = threading.Barrier(64)
    with AuthClient(
        base_url=service.base_url, transport=transport, timeout=TIMEOUT,
        token_store=MemoryTokenStore(old), clock=behind(3600) if in_flight else time.time,
    ) as api:  # fmt: skip

        def call(_: int) -> int:
            barrier.wait()
            return api.get("/auth/me").status_code

        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(call, range(64)))
    assert statuses == [200] * 64
    assert transport.refreshes == 1
    assert transport.answered["GET /auth/me", 401] == (64 if in_flight else 0)
