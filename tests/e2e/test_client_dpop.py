"""The client's DPoP against the real service: bound logins, one refresh for many requests and
for processes sharing a token file, the service's nonce, ``tokengate-client --dpop``."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from quart_tokengate.client import (
    AsyncAuthClient,
    AuthClient,
    AuthError,
    FileTokenStore,
    MemoryTokenStore,
    Tokens,
    TokenStore,
)
from quart_tokengate.client._dpop import key_from_json
from quart_tokengate.service.tokens import AccessToken, mint
from tests.e2e.test_admin_cli import Admin
from tests.support import (
    PrivateRedis,
    ServiceProcess,
    refresh_waiters,
    run_together,
    service_env,
    start_service,
)

from .session_helpers import PASSWORD, new_user
from .test_client_cli import cli
from .test_client_concurrency import SIGNING, TIMEOUT, CountingTransport
from .test_client_file_store import LeaseWatchingStore

PROCESSES = 2
REQUESTS_EACH = 20


@pytest.fixture(scope="module")
def deployment(
    module_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, Admin]]:
    """The service on its defaults (TOKENGATE_DPOP=allowed), polled for device logins each
    second, and its admin command."""
    workdir = tmp_path_factory.mktemp("client-dpop")
    env = service_env(workdir, module_redis.url, device_poll_interval=1)
    started = ServiceProcess(env, workdir)
    started.start()
    yield started, Admin(env, workdir)
    started.stop()


@pytest.fixture
def service(deployment: tuple[ServiceProcess, Admin]) -> ServiceProcess:
    return deployment[0]


def claims(token: str) -> dict[str, Any]:
    found: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return found


def kept_jkt(store: TokenStore) -> str:
    kept = store.dpop_key()
    assert kept is not None
    return key_from_json(kept).jkt


def expired(tokens: Tokens, ago: int = 600) -> Tokens:
    """The session's bound access token as the service signed it ``ago`` seconds back
    (same ``sub``, ``sid``, ``jti`` and ``cnf``; ``exp`` past): the next request refreshes."""
    old = claims(tokens.access_token)
    extra = {k: old[k] for k in ("sid", "name", "auth_time", "cnf") if k in old}
    access = mint(
        SIGNING, AccessToken.kind, sub=old["sub"], jti=old["jti"], iat=int(time.time()) - ago,
        ttl=60, extra=extra,
    )  # fmt: skip
    return Tokens(access, tokens.refresh_token, tokens.session_id, tokens.token_type)


def dpop_login(base_url: str, store: TokenStore) -> Tokens:
    name = new_user(base_url)
    with AuthClient(base_url=base_url, token_store=store, dpop=True, timeout=TIMEOUT) as api:
        return api.login(name, PASSWORD)


# -- a bound login -------------------------------------------------------------------------
async def test_an_async_login_with_dpop_gets_bound_tokens_and_works(service):
    name = new_user(service.base_url)
    store = MemoryTokenStore()
    async with AsyncAuthClient(
        base_url=service.base_url, token_store=store, dpop=True, timeout=TIMEOUT
    ) as api:
        tokens = await api.login(name, PASSWORD)
        assert tokens.token_type == "DPoP"
        assert claims(tokens.access_token)["cnf"] == {"jkt": kept_jkt(store)}
        me = await api.get("/auth/me")
        assert me.status_code == 200 and me.json()["username"] == name
        # A fresh proof for each: the service refuses a replayed jti.
        again = await asyncio.gather(*(api.get("/auth/me") for _ in range(10)))
        assert {r.status_code for r in again} == {200}
        # An explicit refresh carries a proof by the same key: still bound to it.
        fresh = await api.refresh()
        assert claims(fresh.access_token)["cnf"] == {"jkt": kept_jkt(store)}
        assert (await api.get("/auth/me")).status_code == 200
    # The bound token is worth nothing as a bearer token.
    bare = httpx.get(
        f"{service.base_url}/auth/me",
        headers={"Authorization": f"Bearer {fresh.access_token}"},
        timeout=TIMEOUT,
    )
    assert bare.status_code == 401


def test_a_sync_login_with_dpop_gets_bound_tokens_and_works(service):
    name = new_user(service.base_url)
    store = MemoryTokenStore()
    with AuthClient(
        base_url=service.base_url, token_store=store, dpop=True, timeout=TIMEOUT
    ) as api:
        tokens = api.login(name, PASSWORD)
        assert tokens.bound and claims(tokens.access_token)["cnf"]["jkt"] == kept_jkt(store)
        assert api.get("/auth/me").json()["username"] == name
        api.logout()
    assert store.load() is None


def test_a_login_without_dpop_is_bearer_as_before(service):
    name = new_user(service.base_url)
    with AuthClient(base_url=service.base_url, timeout=TIMEOUT) as api:
        tokens = api.login(name, PASSWORD)
        assert tokens.token_type == "Bearer" and "cnf" not in claims(tokens.access_token)
        assert api.get("/auth/me").status_code == 200


def approve(base_url: str, username: str, code: str) -> None:
    """What a person does in the browser, over HTTP: log in, approve the code."""
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as page:
        r = page.post("/account/login", json={"username": username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        csrf = {"X-CSRF-Token": page.cookies["account_csrf"]}
        r = page.post("/account/device/approve", json={"user_code": code}, headers=csrf)
        assert r.status_code == 200 and r.json()["status"] == "approved", r.text


def test_a_device_login_with_dpop_gets_bound_tokens(service):
    name = new_user(service.base_url)
    store = MemoryTokenStore()
    with AuthClient(
        base_url=service.base_url, token_store=store, dpop=True, timeout=TIMEOUT
    ) as api:
        tokens = api.login_device(
            lambda uri, complete, code: approve(service.base_url, name, code), device="dpop"
        )
        assert tokens.bound and claims(tokens.access_token)["cnf"] == {"jkt": kept_jkt(store)}
        assert api.get("/auth/me").json()["username"] == name


async def test_a_service_account_with_dpop_fetches_one_bound_token(deployment):
    service, admin = deployment
    out = admin.ok("clients", "create", "dpop-worker")
    ids = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    transport = CountingTransport()
    store = MemoryTokenStore()
    async with AsyncAuthClient.for_client(
        service.base_url, ids["client_id"], ids["client_secret"], token_store=store,
        dpop=True, transport=transport, timeout=TIMEOUT,
    ) as api:  # fmt: skip
        responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(20)))
        assert [r.status_code for r in responses] == [200] * 20
        tokens = api.tokens
    assert tokens is not None and tokens.bound
    assert claims(tokens.access_token)["cnf"] == {"jkt": kept_jkt(store)}
    assert transport.answered["POST /oauth/token", 200] == 1 and transport.unauthorized == 0


# -- one refresh ---------------------------------------------------------------------------
async def test_50_concurrent_requests_with_an_expired_bound_token_refresh_once(service):
    store = MemoryTokenStore()
    old = expired(dpop_login(service.base_url, store))
    store.save(old)
    transport = CountingTransport(hold_refresh_until=lambda: refresh_waiters(api) == 49)
    async with AsyncAuthClient(
        base_url=service.base_url, token_store=store, dpop=True, transport=transport,
        timeout=TIMEOUT,
    ) as api:  # fmt: skip
        responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(50)))
        assert [r.status_code for r in responses] == [200] * 50
        assert transport.refreshes == 1 and transport.unauthorized == 0
        tokens = api.tokens
    assert tokens is not None and tokens.bound and tokens.refresh_token != old.refresh_token
    assert claims(tokens.access_token)["cnf"] == {"jkt": kept_jkt(store)}


def test_16_threads_with_an_expired_bound_token_refresh_once(service):
    store = MemoryTokenStore()
    store.save(expired(dpop_login(service.base_url, store)))
    transport = CountingTransport(limits=httpx.Limits(max_connections=16))
    barrier = threading.Barrier(16)
    with AuthClient(
        base_url=service.base_url, token_store=store, dpop=True, transport=transport,
        timeout=TIMEOUT,
    ) as api:  # fmt: skip

        def call(_: int) -> int:
            barrier.wait()
            return api.get("/auth/me").status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(call, range(16)))
    assert statuses == [200] * 16
    assert transport.refreshes == 1


def worker(base_url: str, path: str, start: Any, results: Any, met: Any) -> None:
    """One process: wait for the others, then send concurrent requests from the shared file."""

    async def run() -> dict[str, Any]:
        transport = CountingTransport(hold_refresh_until=lambda: met.value == PROCESSES - 1)
        store = LeaseWatchingStore(path, met)
        async with AsyncAuthClient(
            base_url=base_url, transport=transport, token_store=store, dpop=True,
            timeout=TIMEOUT,
        ) as api:  # fmt: skip
            start.wait()
            responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(REQUESTS_EACH)))
        return {
            "statuses": [r.status_code for r in responses],
            "refreshes": transport.refreshes,
            "jkt": kept_jkt(store),
        }

    try:
        results.put(asyncio.run(run()))
    except BaseException as exc:  # report, so the test fails with a reason and never hangs
        results.put({"error": repr(exc)})


def test_processes_sharing_a_token_file_share_the_key_and_refresh_once(service, tmp_path):
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    old = expired(dpop_login(service.base_url, store))
    store.save(old)
    jkt = kept_jkt(store)
    reports, _ = run_together(PROCESSES, worker, service.base_url, str(path), counter=True)
    assert not [r for r in reports if "error" in r], reports
    assert [r["statuses"] for r in reports] == [[200] * REQUESTS_EACH] * PROCESSES
    assert sum(r["refreshes"] for r in reports) == 1
    assert {r["jkt"] for r in reports} == {jkt}
    stored = FileTokenStore(path).load()
    assert stored is not None and stored.bound and stored.refresh_token != old.refresh_token
    assert claims(stored.access_token)["cnf"] == {"jkt": jkt}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- the service's nonce ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def nonce_service(
    module_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    started = start_service(
        tmp_path_factory.mktemp("client-dpop-nonce"), f"redis://127.0.0.1:{module_redis.port}/1",
        dpop_nonce="true",
    )  # fmt: skip
    yield started
    started.stop()


def nonce_refusals(transport: CountingTransport) -> int:
    return sum(n for (_, status), n in transport.answered.items() if status in (400, 401))


async def test_with_nonces_the_async_client_resends_once_and_then_works(nonce_service):
    name = new_user(nonce_service.base_url)
    transport = CountingTransport()
    async with AsyncAuthClient(
        base_url=nonce_service.base_url, dpop=True, transport=transport, timeout=TIMEOUT
    ) as api:
        await api.login(name, PASSWORD)
        assert transport.answered["POST /auth/login", 400] == 1  # use_dpop_nonce, then 200
        assert transport.answered["POST /auth/login", 200] == 1
        responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(10)))
        assert {r.status_code for r in responses} == {200}
        await api.refresh()
        assert (await api.get("/auth/me")).status_code == 200
    # The login's nonce served every later request of the origin.
    assert nonce_refusals(transport) == 1


def test_with_nonces_the_sync_client_resends_once_and_then_works(nonce_service):
    name = new_user(nonce_service.base_url)
    transport = CountingTransport()
    with AuthClient(
        base_url=nonce_service.base_url, dpop=True, transport=transport, timeout=TIMEOUT
    ) as api:
        api.login(name, PASSWORD)
        assert [api.get("/auth/me").status_code for _ in range(3)] == [200] * 3
    assert nonce_refusals(transport) == 1


# -- TOKENGATE_DPOP=required ------------------------------------------------------------------
@pytest.fixture(scope="module")
def required_service(
    module_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    started = start_service(
        tmp_path_factory.mktemp("client-dpop-required"), f"redis://127.0.0.1:{module_redis.port}/2",
        dpop="required",
    )  # fmt: skip
    yield started
    started.stop()


def test_a_service_that_requires_dpop_takes_the_dpop_client_only(required_service):
    name = new_user(required_service.base_url)
    with AuthClient(base_url=required_service.base_url, timeout=TIMEOUT) as api:
        with pytest.raises(AuthError, match="requires DPoP-bound tokens: log in with dpop=True"):
            api.login(name, PASSWORD)
        assert api.tokens is None
    with AuthClient(base_url=required_service.base_url, dpop=True, timeout=TIMEOUT) as api:
        assert api.login(name, PASSWORD).bound
        assert api.get("/auth/me").status_code == 200


# -- the command line ----------------------------------------------------------------------
def test_login_with_dpop_on_the_command_line_then_a_request(service, tmp_path: Path):
    name = new_user(service.base_url)
    done = cli(
        "login", "--dpop", "--base-url", service.base_url, "--username", name,
        "--password-stdin", "--json", config=tmp_path, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["token_type"] == "DPoP"
    path = tmp_path / "tokengate" / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store = FileTokenStore(path)
    tokens = store.load()
    assert tokens is not None and tokens.bound
    assert claims(tokens.access_token)["cnf"] == {"jkt": kept_jkt(store)}
    key = json.loads(path.read_text())["dpop_key"]["d"]
    assert key not in done.stdout + done.stderr

    # The bound tokens in the file are signed for, with the flag or without it.
    for flag in ((), ("--dpop",)):
        done = cli("request", "GET", "/auth/me", *flag, config=tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["username"] == name
    # A refresh on the way carries a proof too, and the session stays bound to the key.
    store.save(expired(tokens))
    done = cli("status", "--json", config=tmp_path)
    assert done.returncode == 0, done.stderr
    refreshed = store.load()
    assert refreshed is not None and refreshed.refresh_token != tokens.refresh_token
    assert claims(refreshed.access_token)["cnf"] == {"jkt": kept_jkt(store)}
    assert cli("logout", config=tmp_path).returncode == 0
    assert store.load() is None
