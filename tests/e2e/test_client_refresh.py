"""The client against the real service: when it refreshes, when it does not, and
what it raises. Refreshes are counted at the transport (see test_client_concurrency)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from quart_tokengate.client import (
    AsyncAuthClient,
    AuthClient,
    AuthError,
    InvalidCredentials,
    LoginRequired,
    MemoryTokenStore,
    RateLimited,
    TokenAuth,
    Tokens,
)
from quart_tokengate.client.pytest_plugin import TokengateServer
from tests.support import PrivateRedis, ServiceProcess, free_port

from .session_helpers import PASSWORD, new_user
from .test_client_concurrency import (
    TIMEOUT,
    CountingTransport,
    behind,
    expired,
    logged_in,
    start_service,
)


@pytest.fixture(scope="module")
def service(
    module_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """Default lifetimes; three failed logins per account before 429."""
    url = f"redis://127.0.0.1:{module_redis.port}/1"
    started = start_service(tmp_path_factory.mktemp("client"), url, login_max_failures=3)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def implicit(
    module_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """Implicit refresh on: an expired token is accepted once and a new one pushed."""
    url = f"redis://127.0.0.1:{module_redis.port}/3"
    started = start_service(tmp_path_factory.mktemp("client-implicit"), url, implicit_refresh=True)
    yield started
    started.stop()


def client(service: ServiceProcess, transport: CountingTransport, **kwargs: Any) -> AsyncAuthClient:
    return AsyncAuthClient(
        base_url=service.base_url, transport=transport, timeout=TIMEOUT, **kwargs
    )


# -- when to refresh: on the test kit's clock, which moves the service's and the
# client's time together (a client with a clock of its own says so) -------------------
def kit_client(
    server: TokengateServer, transport: CountingTransport, **kwargs: Any
) -> AsyncAuthClient:
    kwargs.setdefault("clock", server.clock)
    return AsyncAuthClient(base_url=server.base_url, transport=transport, timeout=TIMEOUT, **kwargs)


async def test_a_token_near_expiry_is_refreshed_before_the_request(
    tokengate_server, tokengate_user, tokengate_clock
):
    user = tokengate_user()
    transport = CountingTransport()
    async with kit_client(tokengate_server, transport, refresh_margin=30) as api:
        first = await api.login(user.username, user.password)
        tokengate_clock.advance(300 - 20)  # within the margin, not yet expired
        r = await api.get("/auth/me")
        assert r.status_code == 200
        assert transport.refreshes == 1 and transport.unauthorized == 0
        assert api.tokens is not None and transport.sent_tokens[-1] == api.tokens.access_token
        assert api.tokens.access_token != first.access_token


async def test_token_expired_refreshes_and_retries_once(
    tokengate_server, tokengate_user, tokengate_clock
):
    user = tokengate_user()
    transport = CountingTransport()
    # The client's clock falls 400 s behind after the login: it sends the token
    # past its expiry, the service says so.
    behind_by = [0.0]
    clock = lambda: tokengate_clock() - behind_by[0]  # noqa: E731
    async with kit_client(tokengate_server, transport, refresh_margin=0, clock=clock) as api:
        await api.login(user.username, user.password)
        behind_by[0] = 400
        tokengate_clock.advance(301)
        r = await api.get("/auth/me")
        assert r.status_code == 200 and r.json()["username"] == user.username
        assert transport.answered["GET /auth/me", 401] == 1
        assert transport.refreshes == 1
        assert (await api.get("/auth/me")).status_code == 200
        assert transport.refreshes == 1


async def test_a_skewed_clock_neither_refreshes_early_nor_sends_expired_tokens(
    tokengate_server, tokengate_user, tokengate_clock
):
    # Expiry is judged by when the tokens arrived and how long they live, not
    # by comparing the service's exp with a local clock that is off by minutes.
    users = [tokengate_user(), tokengate_user()]
    clients = []
    for user, skew in zip(users, (280, -3600), strict=True):  # clock ahead, clock behind
        transport = CountingTransport()
        clock = lambda skew=skew: tokengate_clock() + skew  # noqa: E731
        api = kit_client(tokengate_server, transport, refresh_margin=0.5, clock=clock)
        await api.login(user.username, user.password)
        clients.append((api, transport, skew))
    for api, transport, skew in clients:
        for _ in range(3):
            assert (await api.get("/auth/me")).status_code == 200
        assert transport.refreshes == 0, skew  # not refreshed on every request
    tokengate_clock.advance(300)  # expired at the service
    for api, transport, skew in clients:
        assert (await api.get("/auth/me")).status_code == 200
        assert (transport.refreshes, transport.unauthorized) == (1, 0), skew  # refreshed first
        responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(20)))
        assert {r.status_code for r in responses} == {200} and transport.refreshes == 1
        await api.aclose()


async def test_other_401_codes_do_not_refresh(service):
    name = new_user(service.base_url)
    transport = CountingTransport()
    async with client(service, transport) as api, client(service, CountingTransport()) as other:
        await api.login(name, PASSWORD)
        await other.login(name, PASSWORD)
        before = api.tokens
        await other.logout_all()
        r = await api.get("/auth/me")
        assert r.status_code == 401 and r.json()["error"] == "token_revoked"
        assert transport.refreshes == 0
        assert api.tokens == before  # the caller sees the answer; nothing is guessed


# -- refresh failures --------------------------------------------------------------------
async def test_a_refresh_answered_401_clears_the_tokens_and_raises_login_required(service):
    name = new_user(service.base_url)
    store = MemoryTokenStore()
    failed: list[AuthError] = []
    required: list[LoginRequired] = []
    transport = CountingTransport()
    async with (
        client(service, transport, token_store=store, on_refresh_failed=failed.append,
               on_login_required=required.append) as api,
        client(service, CountingTransport()) as other,
    ):  # fmt: skip
        await api.login(name, PASSWORD)
        await other.login(name, PASSWORD)
        await other.logout_all()
        store.save(expired(store.load()))
        with pytest.raises(LoginRequired) as raised:
            await api.get("/auth/me")
    assert raised.value.code == "token_revoked"
    assert raised.value.response is not None and raised.value.response.status_code == 401
    assert store.load() is None
    assert transport.refreshes == 1
    assert failed == [raised.value] and required == [raised.value]


async def test_a_refresh_answered_401_logs_in_again_through_credentials(service):
    name = new_user(service.base_url)
    store = MemoryTokenStore()
    refreshed: list[Tokens] = []

    async def credentials() -> tuple[str, str]:
        return name, PASSWORD

    transport = CountingTransport()
    async with (
        client(service, transport, token_store=store, credentials=credentials,
               on_refreshed=refreshed.append) as api,
        client(service, CountingTransport()) as other,
    ):  # fmt: skip
        first = await api.login(name, PASSWORD)
        await other.login(name, PASSWORD)
        await other.logout_all()
        store.save(expired(store.load()))
        responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(20)))
        assert {r.status_code for r in responses} == {200}
        assert transport.refreshes == 1
        assert transport.answered["POST /auth/login", 200] == 2  # the first login, and this one
        assert api.tokens is not None and api.tokens.session_id != first.session_id
        assert refreshed == [api.tokens]


async def test_a_session_ended_elsewhere_logs_in_again_through_credentials(service):
    name = new_user(service.base_url)
    transport = CountingTransport()
    async with (
        client(service, transport, credentials=lambda: (name, PASSWORD)) as api,
        client(service, CountingTransport()) as other,
    ):
        r = await api.get("/auth/me")  # not logged in: credentials log it in first
        assert r.status_code == 200
        await other.login(name, PASSWORD)
        await other.logout_all()
        r = await api.get("/auth/me")  # token_revoked: log in again, send again
        assert r.status_code == 200 and r.json()["username"] == name
        assert transport.answered["GET /auth/me", 401] == 1
        assert transport.answered["POST /auth/login", 200] == 2
        assert transport.refreshes == 0


async def test_a_reused_refresh_token_is_login_required_refresh_reused(service):
    pair = logged_in(service.base_url)
    transport = CountingTransport()
    thief = MemoryTokenStore(pair)  # a copy made before two rotations
    async with client(service, CountingTransport(), token_store=MemoryTokenStore(pair)) as api:
        await api.refresh()
        await api.refresh()
    async with client(service, transport, token_store=thief) as api:
        with pytest.raises(LoginRequired) as raised:
            await api.refresh()
    assert raised.value.code == "refresh_reused" and thief.load() is None


async def test_a_network_error_on_refresh_keeps_the_tokens(service):
    stale = expired(logged_in(service.base_url))
    store = MemoryTokenStore(stale)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with AsyncAuthClient(base_url=down, token_store=store, timeout=TIMEOUT) as api:
        with pytest.raises(AuthError) as raised:
            await api.get("/auth/me")
    assert type(raised.value) is AuthError and raised.value.code is None
    assert isinstance(raised.value.__cause__, httpx.TransportError)
    assert store.load() == stale
    # The kept tokens still work once the service is reachable.
    transport = CountingTransport()
    async with client(service, transport, token_store=store) as api:
        assert (await api.get("/auth/me")).status_code == 200
    assert transport.refreshes == 1


async def test_login_failures_are_typed(service):
    name = new_user(service.base_url)
    async with client(service, CountingTransport()) as api:
        for _ in range(3):
            with pytest.raises(InvalidCredentials) as refused:
                await api.login(name, "wrong password")
            assert refused.value.code == "invalid_credentials"
        with pytest.raises(RateLimited) as limited:
            await api.login(name, "wrong password")
    assert limited.value.code == "too_many_attempts"
    assert limited.value.retry_after is not None and limited.value.retry_after > 0
    assert api.tokens is None


# -- server-pushed tokens ------------------------------------------------------------------
async def test_a_pushed_access_token_replaces_the_stored_one(implicit):
    pair = logged_in(implicit.base_url)
    # Expired 5 s ago: within the renewal window after exp (TOKENGATE_REFRESH_GRACE, 10 s).
    store = MemoryTokenStore(expired(pair, ago=65))
    transport = CountingTransport()
    async with client(implicit, transport, token_store=store, clock=behind(3600)) as api:
        r = await api.get("/auth/me")
        assert r.status_code == 200
        pushed = r.headers["X-Access-Token"]
        assert api.tokens is not None and api.tokens.access_token == pushed
        assert api.tokens.refresh_token == pair.refresh_token
        assert (await api.get("/auth/me")).status_code == 200
        assert transport.sent_tokens[-1] == pushed
    assert transport.refreshes == 0


# -- bodies that cannot be sent twice --------------------------------------------------------
def password_body(consumed: list[int]) -> AsyncIterator[bytes]:
    """A JSON body as a stream: it can be sent once."""

    async def stream() -> AsyncIterator[bytes]:
        consumed.append(1)
        yield f'{{"current_password": "{PASSWORD}", "new_password": "{PASSWORD}"}}'.encode()

    return stream()


async def test_a_streamed_body_near_expiry_is_sent_after_a_refresh(service):
    transport = CountingTransport()
    store = MemoryTokenStore(expired(logged_in(service.base_url)))
    consumed: list[int] = []
    async with client(service, transport, token_store=store) as api:
        r = await api.post(
            "/auth/password", content=password_body(consumed),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
    assert r.status_code == 204
    assert consumed == [1] and transport.refreshes == 1 and transport.unauthorized == 0


async def test_a_streamed_body_met_by_token_expired_is_not_resent(service):
    transport = CountingTransport()
    store = MemoryTokenStore(expired(logged_in(service.base_url)))
    consumed: list[int] = []
    headers = {"Content-Type": "application/json"}
    async with client(service, transport, token_store=store, clock=behind(3600)) as api:
        with pytest.raises(AuthError) as raised:
            await api.post("/auth/password", content=password_body(consumed), headers=headers)
        assert type(raised.value) is AuthError and raised.value.code == "token_expired"
        assert raised.value.response is not None and raised.value.response.status_code == 401
        assert consumed == [1] and transport.answered["POST /auth/password", 401] == 1
        # The tokens were renewed, so sending again with a new body works at once.
        assert transport.refreshes == 1
        again: list[int] = []
        r = await api.post("/auth/password", content=password_body(again), headers=headers)
        assert r.status_code == 204 and transport.refreshes == 1


# -- the client's methods --------------------------------------------------------------------
async def test_login_sessions_refresh_logout(service):
    name = new_user(service.base_url)
    transport = CountingTransport()
    async with client(service, transport) as api, client(service, CountingTransport()) as other:
        first = await api.login(name, PASSWORD, device="laptop")
        assert api.tokens == first
        [only] = await api.sessions()
        assert only["device"] == "laptop" and only["current"] is True
        assert only["id"] == first.session_id
        second = await api.refresh()
        assert second.refresh_token != first.refresh_token and transport.refreshes == 1
        assert api.tokens == second
        await api.logout()
        assert api.tokens is None
        stale = httpx.get(
            f"{service.base_url}/auth/me",
            headers={"Authorization": f"Bearer {second.access_token}"},
        )
        assert stale.json()["error"] == "token_revoked"
        with pytest.raises(LoginRequired) as raised:
            await api.sessions()
        assert raised.value.code == "missing_token"

        await api.login(name, PASSWORD)
        await other.login(name, PASSWORD)
        await other.logout_all()
        assert other.tokens is None
        assert (await api.get("/auth/me")).json()["error"] == "token_revoked"
        await api.logout()  # already over on the service: just forget the tokens
        assert api.tokens is None


def test_the_sync_client_does_the_same(service):
    name = new_user(service.base_url)
    transport = CountingTransport()
    store = MemoryTokenStore()
    with AuthClient(base_url=service.base_url, transport=transport, token_store=store) as api:
        api.login(name, PASSWORD)
        store.save(expired(store.load()))
        assert api.get("/auth/me").json()["username"] == name
        assert transport.refreshes == 1
        assert len(api.sessions()) == 1
        api.logout_all()
        assert api.tokens is None


# -- TokenAuth on plain httpx clients -------------------------------------------------------
async def test_token_auth_works_on_plain_httpx_clients(service):
    name = new_user(service.base_url)
    refreshed: list[Tokens] = []

    async def credentials() -> tuple[str, str]:
        return name, PASSWORD

    auth = TokenAuth(credentials=credentials, on_refreshed=refreshed.append)
    async with httpx.AsyncClient(base_url=service.base_url, auth=auth, timeout=TIMEOUT) as http:
        assert (await http.get("/auth/me")).json()["username"] == name  # logged in first
        assert auth.tokens is not None
        auth.token_store.save(expired(auth.tokens))
        assert (await http.get("/auth/me")).status_code == 200  # refreshed
    assert len(refreshed) == 2 and refreshed[-1] == auth.tokens

    sync_auth = TokenAuth(service.base_url, token_store=MemoryTokenStore(expired(auth.tokens)))
    with httpx.Client(auth=sync_auth, timeout=TIMEOUT) as http:
        assert http.get(f"{service.base_url}/auth/me").json()["username"] == name
    assert sync_auth.tokens is not None and sync_auth.tokens != auth.tokens


# -- secrets stay secret ---------------------------------------------------------------------
async def test_tokens_never_reach_logs_or_reprs(service, caplog):
    name = new_user(service.base_url)
    store = MemoryTokenStore()
    seen: list[str] = []
    errors: list[BaseException] = []
    caplog.set_level(logging.DEBUG)
    async with (
        client(service, CountingTransport(), token_store=store) as api,
        client(service, CountingTransport()) as other,
    ):
        for tokens in [await api.login(name, PASSWORD)]:
            seen += [tokens.access_token, tokens.refresh_token]
        store.save(expired(store.load()))
        await api.get("/auth/me")
        fresh = store.load()
        assert fresh is not None
        seen += [fresh.access_token, fresh.refresh_token]
        await other.login(name, PASSWORD)
        await other.logout_all()
        store.save(expired(fresh))
        with pytest.raises(LoginRequired) as raised:
            await api.get("/auth/me")
        errors.append(raised.value)
        with pytest.raises(InvalidCredentials) as refused:
            await api.login(name, "wrong password")
        errors.append(refused.value)
        texts = [caplog.text, repr(api.auth), repr(store), repr(fresh), repr(api.tokens)]
        texts += [repr(e) for e in errors] + [str(e) for e in errors]
    assert "tokens renewed" in caplog.text  # the client did log, without the tokens
    for secret in [*seen, PASSWORD, "wrong password"]:
        for text in texts:
            assert secret not in text
