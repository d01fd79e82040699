"""The client's sync and async edges over httpx.MockTransport: the single flight,
failures, cancellation and hooks, with no server."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import filelock
import httpx
import pytest

from quart_tokengate.client import (
    AsyncAuthClient,
    AuthClient,
    AuthError,
    FileTokenStore,
    LoginRequired,
    MemoryTokenStore,
    RateLimited,
    TokenAuth,
)
from quart_tokengate.client._flight import Flight
from quart_tokengate.client._tokens import Change, Lease, Tokens
from tests.support import refresh_waiters, wait_for, wait_for_async

from .test_client_flow import jwt

BASE = "http://api.test"


class FakeService:
    """Stands in for the service: refresh rotates; ``/data`` wants the newest token.

    The first token (generation 1) is expired as far as the service is concerned.
    ``expired_first`` makes it look fresh to the client all the same: the token
    expired in flight. A refresh is answered at once, unless the test holds it
    (``hold_next_refresh``).
    """

    def __init__(self, *, expired_first: bool = False) -> None:
        self.generation = 1
        self.expired_first = expired_first
        self._release: Callable[[], object] | None = None
        self._release_lock = threading.Lock()
        self.refreshes = 0
        self.logins = 0
        self.unauthorized = 0
        self.refresh_replies: list[httpx.Response | Exception] = []
        self._tokens: dict[int, Tokens] = {}

    def tokens(self, generation: int) -> Tokens:
        if generation not in self._tokens:
            now = time.time()
            if generation == 1 and not self.expired_first:
                exp, iat = now - 10, now - 310  # the client sees it expired
            else:
                exp, iat = now + 300, now
            access = jwt(exp, iat, jti=f"a{generation}")
            self._tokens[generation] = Tokens(access, f"r{generation}", session_id="s")
        return self._tokens[generation]

    def pair(self, generation: int) -> httpx.Response:
        body = {**self.tokens(generation).to_json(), "expires_in": 300, "refresh_expires_in": 900}
        return httpx.Response(200, json=body)

    def answer(self, request: httpx.Request) -> httpx.Response | None:
        """Everything but the refresh; ``None`` for a refresh."""
        path = request.url.path
        if path == "/auth/login":
            self.logins += 1
            self.generation += 1
            return self.pair(self.generation)
        if path == "/auth/refresh":
            return None
        current = f"Bearer {self.tokens(self.generation).access_token}"
        if self.generation > 1 and request.headers.get("Authorization") == current:
            return httpx.Response(200, json={"ok": True})
        self.unauthorized += 1
        return httpx.Response(401, json={"error": "token_expired", "error_description": "..."})

    def hold_next_refresh(self, until: Callable[[], object]) -> None:
        """Answer the next refresh only once ``until()`` is true (looked at again and again).

        So a refresh stays in flight until the requests meant to share it all
        wait for it (``until=lambda: refresh_waiters(api) == n``), whatever the
        machine's speed: a condition, where a delay would only hope.
        """
        self._release = until

    def _held(self) -> Callable[[], object] | None:
        with self._release_lock:
            release, self._release = self._release, None
        return release

    def rotate(self) -> httpx.Response:
        self.refreshes += 1
        if self.refresh_replies:
            reply = self.refresh_replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply
        self.generation += 1
        return self.pair(self.generation)

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        response = self.answer(request)
        if response is not None:
            return response
        release = self._held()
        if release is not None:
            await wait_for_async(release, timeout=30, what="the held refresh's release")
        return self.rotate()

    def handle_sync(self, request: httpx.Request) -> httpx.Response:
        response = self.answer(request)
        if response is not None:
            return response
        release = self._held()
        if release is not None:
            wait_for(release, timeout=30, interval=0.001, what="the held refresh's release")
        return self.rotate()

    def async_client(self, **kwargs: Any) -> AsyncAuthClient:
        kwargs.setdefault("token_store", MemoryTokenStore(self.tokens(1)))
        return AsyncAuthClient(
            base_url=BASE, transport=httpx.MockTransport(self.handle_async), **kwargs
        )

    def sync_client(self, **kwargs: Any) -> AuthClient:
        kwargs.setdefault("token_store", MemoryTokenStore(self.tokens(1)))
        return AuthClient(base_url=BASE, transport=httpx.MockTransport(self.handle_sync), **kwargs)


# -- exactly one refresh ---------------------------------------------------------------
@pytest.mark.parametrize("expired_first", [False, True], ids=["before-sending", "in-flight"])
async def test_1000_concurrent_requests_share_one_refresh(expired_first):
    service = FakeService(expired_first=expired_first)
    async with service.async_client() as api:
        # The refresh is answered once the 999 others wait for it.
        service.hold_next_refresh(until=lambda: refresh_waiters(api) == 999)
        responses = await asyncio.gather(*(api.get("/data") for _ in range(1000)))
    assert {r.status_code for r in responses} == {200}
    assert service.refreshes == 1
    assert service.unauthorized == (1000 if expired_first else 0)


@pytest.mark.parametrize("expired_first", [False, True], ids=["before-sending", "in-flight"])
def test_64_threads_share_one_refresh(expired_first, monkeypatch):
    # A blocking request waits on a threading.Event, which nothing counts: count
    # the calls to the real Flight.wait, to hold the refresh until 63 threads wait.
    waits: list[None] = []
    real_wait = Flight.wait

    def wait(flight: Flight) -> Any:
        waits.append(None)
        return real_wait(flight)

    monkeypatch.setattr(Flight, "wait", wait)
    service = FakeService(expired_first=expired_first)
    service.hold_next_refresh(until=lambda: len(waits) == 63)
    barrier = threading.Barrier(64)
    with service.sync_client() as api:

        def call(_: int) -> int:
            barrier.wait()
            return api.get("/data").status_code

        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(call, range(64)))
    assert statuses == [200] * 64
    assert service.refreshes == 1
    assert service.unauthorized == (64 if expired_first else 0)


async def test_newer_stored_tokens_are_used_without_a_refresh():
    service = FakeService(expired_first=True)
    store = MemoryTokenStore(service.tokens(1))
    async with service.async_client(token_store=store) as api:
        # Someone else refreshed: the service and the store are at generation 2,
        # and this request was stamped with generation 1.
        service.generation = 2
        flow = api.auth.async_auth_flow(api.build_request("GET", "/data"))
        request = await flow.__anext__()
        store.save(service.tokens(2))
        retry = await flow.asend(await service.handle_async(request))
        assert retry.headers["Authorization"] == f"Bearer {service.tokens(2).access_token}"
        await flow.aclose()
    assert service.refreshes == 0


# -- failures --------------------------------------------------------------------------
async def test_a_failed_refresh_reaches_every_waiter_once_then_is_forgotten():
    service = FakeService()
    service.refresh_replies.append(httpx.Response(503, json={"error": "auth_unavailable"}))
    failures: list[AuthError] = []
    async with service.async_client(on_refresh_failed=failures.append) as api:
        service.hold_next_refresh(until=lambda: refresh_waiters(api) == 49)
        results = await asyncio.gather(
            *(api.get("/data") for _ in range(50)), return_exceptions=True
        )
        assert all(type(r) is AuthError and r.code == "auth_unavailable" for r in results)
        assert len({id(r) for r in results}) == 50  # each waiter its own error
        assert service.refreshes == 1 and len(failures) == 1
        assert api.tokens == service.tokens(1)  # kept
        # Forgotten: the next request tries again, and succeeds.
        assert (await api.get("/data")).status_code == 200
    assert service.refreshes == 2


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_network_error_on_refresh_keeps_the_tokens(sync):
    service = FakeService()
    service.refresh_replies.append(httpx.ConnectError("connection refused"))
    if sync:
        with service.sync_client() as api, pytest.raises(AuthError) as raised:
            api.get("/data")
    else:
        async with service.async_client() as api:
            with pytest.raises(AuthError) as raised:
                await api.get("/data")
    assert type(raised.value) is AuthError and raised.value.code is None
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert api.tokens == service.tokens(1)


async def test_refresh_401_clears_the_tokens_and_raises_login_required():
    service = FakeService()
    body = {"error": "refresh_reused", "error_description": "..."}
    service.refresh_replies.append(httpx.Response(401, json=body))
    told: list[Any] = []

    async def on_login_required(error: LoginRequired) -> None:
        await asyncio.sleep(0)
        told.append(error)

    async with service.async_client(on_login_required=on_login_required) as api:
        with pytest.raises(LoginRequired) as raised:
            await api.get("/data")
        assert raised.value.code == "refresh_reused"
        assert api.tokens is None
        assert told == [raised.value]
        # Not logged in: requests go out bare and the service answers for itself.
        assert (await api.get("/data")).status_code == 401


async def test_refresh_401_with_credentials_logs_in_again():
    service = FakeService()
    service.refresh_replies.append(httpx.Response(401, json={"error": "session_expired"}))
    refreshed: list[Tokens] = []

    async def credentials() -> tuple[str, str]:
        return "alice", "pw"

    async with service.async_client(credentials=credentials, on_refreshed=refreshed.append) as api:
        service.hold_next_refresh(until=lambda: refresh_waiters(api) == 19)
        responses = await asyncio.gather(*(api.get("/data") for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    assert service.refreshes == 1 and service.logins == 1
    assert refreshed == [service.tokens(2)]


def test_an_event_hook_that_raises_for_status_does_not_hide_the_code():
    service = FakeService()
    header = 'Bearer realm="tokengate", error="invalid_token", error_description="token_revoked"'
    service.refresh_replies.append(
        httpx.Response(401, json={"error": "token_revoked"}, headers={"WWW-Authenticate": header})
    )

    def strict(response: httpx.Response) -> None:
        response.raise_for_status()

    with (
        service.sync_client(event_hooks={"response": [strict]}) as api,
        pytest.raises(LoginRequired) as raised,
    ):
        api.get("/data")
    assert raised.value.code == "token_revoked"


def test_login_rate_limited():
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": "too_many_attempts", "error_description": "..."}
        return httpx.Response(429, json=body, headers={"Retry-After": "42"})

    with (
        AuthClient(base_url=BASE, transport=httpx.MockTransport(handler)) as api,
        pytest.raises(RateLimited) as raised,
    ):
        api.login("alice", "pw")
    assert raised.value.retry_after == 42


def test_errors_copy_for_waiters():
    error = RateLimited("slow down", code="too_many_attempts", retry_after=3.0)
    twin = copy.copy(error)
    assert twin is not error and type(twin) is RateLimited
    assert (str(twin), twin.code, twin.retry_after) == ("slow down", "too_many_attempts", 3.0)


# -- cancellation ----------------------------------------------------------------------
async def test_a_cancelled_leader_does_not_leave_the_others_waiting():
    service = FakeService()
    started = asyncio.Event()
    leader: list[asyncio.Task[Any]] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/refresh" and not leader:
            leader.append(asyncio.current_task())  # type: ignore[arg-type]
            started.set()
            await asyncio.Event().wait()  # hangs until cancelled
        return await service.handle_async(request)

    store = MemoryTokenStore(service.tokens(1))
    async with AsyncAuthClient(
        base_url=BASE, transport=httpx.MockTransport(handle), token_store=store
    ) as api:
        tasks = [asyncio.create_task(api.get("/data")) for _ in range(10)]
        await started.wait()
        leader[0].cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    cancelled = [r for r in results if isinstance(r, asyncio.CancelledError)]
    assert len(cancelled) == 1
    assert [r.status_code for r in results if isinstance(r, httpx.Response)] == [200] * 9
    assert service.refreshes == 1  # the cancelled one never reached rotate()


async def test_a_cancelled_waiter_does_not_disturb_the_flight():
    service = FakeService()
    released = asyncio.Event()
    service.hold_next_refresh(until=released.is_set)
    async with service.async_client() as api:
        tasks = [asyncio.create_task(api.get("/data")) for _ in range(10)]
        await wait_for_async(
            lambda: refresh_waiters(api) == 9, what="nine requests wait for the leader's refresh"
        )
        tasks[5].cancel()
        released.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[5], asyncio.CancelledError)
    assert [r.status_code for i, r in enumerate(results) if i != 5] == [200] * 9
    assert service.refreshes == 1


# -- hooks and the sync client's async callables -----------------------------------------
def test_async_credentials_and_hooks_work_on_the_sync_client():
    service = FakeService()
    refreshed: list[Tokens] = []

    async def credentials() -> tuple[str, str]:
        return "alice", "pw"

    async def on_refreshed(tokens: Tokens) -> None:
        refreshed.append(tokens)

    with service.sync_client(
        token_store=MemoryTokenStore(), credentials=credentials, on_refreshed=on_refreshed
    ) as api:
        assert api.get("/data").status_code == 200
    assert service.logins == 1 and refreshed == [service.tokens(2)]


def test_a_failing_hook_is_logged_not_raised(caplog):
    service = FakeService()

    def on_refreshed(tokens: Tokens) -> None:
        raise RuntimeError("disk full")

    with (
        caplog.at_level(logging.ERROR, logger="tokengate.client"),
        service.sync_client(on_refreshed=on_refreshed) as api,
    ):
        assert api.get("/data").status_code == 200
    assert "on_refreshed hook raised" in caplog.text


# -- a pushed access token during a refresh ------------------------------------------------
async def test_a_token_pushed_while_refreshing_does_not_lose_the_refresh():
    # One request is answered with X-Access-Token (the service's implicit
    # refresh) while another request's refresh is on the wire. The refresh's
    # new pair must be stored: the old refresh token is retired by the service.
    now = [1000.0]
    first = Tokens(jwt(1300, 1000, jti="a0"), "r0")
    refreshed = Tokens(jwt(1900, 1600, jti="a1"), "r1")
    pushed_landed = asyncio.Event()
    slow_sent = asyncio.Event()

    refresh_sent = asyncio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/refresh":
            refresh_sent.set()
            await pushed_landed.wait()
            return httpx.Response(200, json=refreshed.to_json())
        if request.url.path == "/slow":
            slow_sent.set()
            pushed = jwt(1900, 1600, jti="pushed")
            return httpx.Response(200, json={}, headers={"X-Access-Token": pushed})
        return httpx.Response(200, json={})

    store = MemoryTokenStore(first)
    gate = asyncio.Event()

    async def slow_hook(response: httpx.Response) -> None:
        if response.request.url.path == "/slow":
            await gate.wait()

    async with AsyncAuthClient(
        base_url=BASE, token_store=store, clock=lambda: now[0],
        transport=httpx.MockTransport(handle), event_hooks={"response": [slow_hook]},
    ) as api:  # fmt: skip
        original_push = api.auth._push  # type: ignore[attr-defined]

        def push(op: Any) -> None:
            original_push(op)
            pushed_landed.set()

        api.auth._push = push  # type: ignore[attr-defined]
        slow = asyncio.create_task(api.get("/slow"))
        await slow_sent.wait()
        now[0] = 1290  # within the margin: the next request refreshes first
        fast = asyncio.create_task(api.get("/x"))
        await refresh_sent.wait()  # its refresh is on the wire
        gate.set()
        assert (await slow).status_code == 200 and (await fast).status_code == 200
    stored = store.load()
    assert stored is not None and stored.refresh_token == "r1"


# -- a store that cannot take the refresh's result -------------------------------------------
class FlakyFileStore(FileTokenStore):
    """A token file whose first ``failures`` end_refresh calls fail (a lock timeout, say)."""

    failures = 1

    def end_refresh(self, lease: Lease, change: Change) -> None:
        if self.failures:
            self.failures -= 1
            raise AuthError(f"Could not lock the token file {self.path} within 10s.")
        super().end_refresh(lease, change)


async def test_a_failed_end_refresh_is_retried_and_does_not_fail_the_refresh(tmp_path, caplog):
    service = FakeService()
    path = tmp_path / "tokens.json"
    store = FlakyFileStore(path)
    store.save(service.tokens(1))
    async with service.async_client(token_store=store) as api:
        service.hold_next_refresh(until=lambda: refresh_waiters(api) == 4)
        responses = await asyncio.gather(*(api.get("/data") for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert service.refreshes == 1
    assert store.load() == service.tokens(2)  # stored on the second try
    assert json.loads(path.read_text())["refresh_lease"] is None
    assert "could not store the refresh's result" in caplog.text
    assert service.tokens(2).access_token not in caplog.text


async def test_a_lease_left_behind_by_this_process_does_not_hold_up_its_requests(tmp_path):
    # The file lock is busy (another process holds it) when the refresh ends:
    # the new pair cannot be stored nor the lease cleared. The request still
    # gets the new tokens, and this process's next refresh does not wait out
    # the lease it left in the file (lease_ttl, 30 s).
    service = FakeService()
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path, lock_timeout=0.1)
    store.save(service.tokens(1))
    other = filelock.FileLock(f"{path}.lock")

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/refresh" and service.refreshes == 0:
            other.acquire()  # until the request is answered
        return await service.handle_async(request)

    async with AsyncAuthClient(
        base_url=BASE, transport=httpx.MockTransport(handle), token_store=store
    ) as api:
        assert (await api.get("/data")).status_code == 200
        other.release()
        assert store.load() == service.tokens(1)  # the store could not take the new pair
        assert json.loads(path.read_text())["refresh_lease"]["pid"] == os.getpid()
        await asyncio.wait_for(api.refresh(), 5)
    assert service.refreshes == 2 and store.load() == service.tokens(3)


# -- only the service gets the token ---------------------------------------------------------
class Recorder:
    """Any host: records the Authorization header sent, and pushes a long-lived token."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((str(request.url), request.headers.get("Authorization")))
        pushed = jwt(time.time() + 10**9, time.time(), jti="foreign")
        return httpx.Response(200, json={}, headers={"X-Access-Token": pushed})


FOREIGN = ["http://evil.test/page", "https://api.test/data", "http://api.test:8080/data"]


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_the_token_goes_only_to_the_base_url_origin(sync):
    # Another host (or scheme, or port) gets no token, cannot push one, and a
    # request to it logs nobody in.
    tokens = Tokens(jwt(time.time() + 300, time.time()), "r")
    store = MemoryTokenStore(tokens)
    recorder = Recorder()
    options: dict[str, Any] = {
        "base_url": BASE, "token_store": store, "transport": httpx.MockTransport(recorder),
        "credentials": lambda: ("alice", "pw"),
    }  # fmt: skip
    if sync:
        with AuthClient(**options) as api:
            for url in FOREIGN:
                api.get(url)
            store.save(None)
            api.get(FOREIGN[0])
    else:
        async with AsyncAuthClient(**options) as api:
            for url in FOREIGN:
                await api.get(url)
            store.save(None)
            await api.get(FOREIGN[0])
    assert recorder.seen == [(url, None) for url in [*FOREIGN, FOREIGN[0]]]
    assert store.load() is None  # no push taken, no login made
    store.save(tokens)
    with AuthClient(**options) as api:
        api.get("/data")
        api.get("http://api.test:80/other")  # the same origin, its port spelled out
    (_, first), (_, second) = recorder.seen[-2:]
    assert first == f"Bearer {tokens.access_token}"
    assert second is not None and second != first  # the service's push was taken


def test_token_auth_with_a_base_url_stamps_only_its_origin():
    tokens = Tokens(jwt(time.time() + 300, time.time()), "r")
    recorder = Recorder()
    auth = TokenAuth(BASE, token_store=MemoryTokenStore(tokens))
    with httpx.Client(auth=auth, transport=httpx.MockTransport(recorder)) as http:
        http.get("http://evil.test/page")
        http.get(f"{BASE}/data")
    assert [auth for _, auth in recorder.seen] == [None, f"Bearer {tokens.access_token}"]
    # Without a base_url of its own, a TokenAuth on a plain client cannot know
    # the service: it stamps what it is given, as before.
    anywhere = TokenAuth(token_store=MemoryTokenStore(tokens))
    with httpx.Client(auth=anywhere, transport=httpx.MockTransport(recorder)) as http:
        http.get("http://other.test/page")
    assert recorder.seen[-1] == ("http://other.test/page", f"Bearer {tokens.access_token}")


# -- the /auth methods need a base_url --------------------------------------------------------
METHODS = ["login", "refresh", "logout", "logout_all", "sessions"]


def never(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"nothing should be sent: {request.url}")


@pytest.mark.parametrize("method", METHODS)
async def test_auth_methods_without_a_base_url_say_so(method):
    tokens = Tokens(jwt(time.time() + 300, time.time()), "r")
    args = ("alice", "pw") if method == "login" else ()
    message = f"base_url is required for {method}()"
    async with AsyncAuthClient(
        token_store=MemoryTokenStore(tokens), transport=httpx.MockTransport(never)
    ) as api:
        with pytest.raises(ValueError, match=re.escape(message)):
            await getattr(api, method)(*args)
    with (
        AuthClient(
            token_store=MemoryTokenStore(tokens), transport=httpx.MockTransport(never)
        ) as api,
        pytest.raises(ValueError, match=re.escape(message)),
    ):
        getattr(api, method)(*args)
