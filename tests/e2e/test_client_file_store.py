"""A token file shared by real processes: one refresh between them, nobody logged out."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import stat
import time
from collections.abc import Iterator
from typing import Any

import pytest

from quart_tokengate.client import AsyncAuthClient, AuthClient, FileTokenStore, Tokens
from quart_tokengate.client._tokens import Lease
from tests.support import PrivateRedis, ServiceProcess, run_together

from .test_client_concurrency import (
    TIMEOUT,
    CountingTransport,
    expired,
    logged_in,
    start_service,
)

PROCESSES = 3
REQUESTS_EACH = 20


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    redis = PrivateRedis()
    redis.start()
    started = start_service(tmp_path_factory.mktemp("client-file"), redis.url)
    yield started
    started.stop()
    redis.stop()


class LeaseWatchingStore(FileTokenStore):
    """A token file that counts, in a shared ``met``, the processes that found it leased.

    A process that finds another's refresh under way (``begin_refresh`` says
    to look again later) adds one, once.
    """

    def __init__(self, path: str, met: Any) -> None:
        super().__init__(path)
        self.met = met
        self.counted = False

    def begin_refresh(self, stale: Tokens | None, usable: Any) -> Tokens | Lease | float:
        claim = super().begin_refresh(stale, usable)
        if not isinstance(claim, Tokens | Lease) and not self.counted:
            self.counted = True
            with self.met.get_lock():
                self.met.value += 1
        return claim


def worker(base_url: str, path: str, start: Any, results: Any, met: Any) -> None:
    """One process: wait for the others, then send concurrent requests from the file's token."""

    async def run() -> dict[str, Any]:
        # Whichever process takes the lease holds its refresh until every other
        # process has found the lease taken: they all meet it, on any machine.
        transport = CountingTransport(hold_refresh_until=lambda: met.value == PROCESSES - 1)
        store = LeaseWatchingStore(path, met)
        async with AsyncAuthClient(
            base_url=base_url, transport=transport, token_store=store, timeout=TIMEOUT
        ) as api:
            start.wait()
            responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(REQUESTS_EACH)))
        return {"statuses": [r.status_code for r in responses], "refreshes": transport.refreshes}

    try:
        results.put(asyncio.run(run()))
    except BaseException as exc:  # report, so the test fails with a reason and never hangs
        results.put({"error": repr(exc)})


def test_processes_sharing_a_token_file_refresh_once_between_them(service, tmp_path):
    path = tmp_path / "tokens.json"
    old = expired(logged_in(service.base_url))
    FileTokenStore(path).save(old)
    reports, met = run_together(PROCESSES, worker, service.base_url, str(path), counter=True)
    assert not [r for r in reports if "error" in r], reports
    assert [r["statuses"] for r in reports] == [[200] * REQUESTS_EACH] * PROCESSES
    assert sum(r["refreshes"] for r in reports) == 1
    assert met == PROCESSES - 1
    stored = FileTokenStore(path).load()
    assert stored is not None and stored.refresh_token != old.refresh_token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["refresh_lease"] is None


def test_a_client_uses_what_another_process_stored_instead_of_refreshing(service, tmp_path):
    path = tmp_path / "tokens.json"
    FileTokenStore(path).save(expired(logged_in(service.base_url)))
    mine, theirs = CountingTransport(), CountingTransport()
    with (
        AuthClient(base_url=service.base_url, transport=mine, token_store=FileTokenStore(path),
                   timeout=TIMEOUT) as me,
        AuthClient(base_url=service.base_url, transport=theirs, token_store=FileTokenStore(path),
                   timeout=TIMEOUT) as them,
    ):  # fmt: skip
        assert them.get("/auth/me").status_code == 200  # refreshes and writes the file
        assert me.get("/auth/me").status_code == 200  # reads the new tokens
        # And after a restart, the file is all a new client needs.
        with AuthClient(
            base_url=service.base_url, token_store=FileTokenStore(path), timeout=TIMEOUT
        ) as restarted:
            assert restarted.get("/auth/me").status_code == 200
    assert theirs.refreshes == 1 and mine.refreshes == 0
    assert mine.sent_tokens == theirs.sent_tokens[-1:]


def test_a_lease_left_by_a_dead_process_does_not_block_the_refresh(service, tmp_path):
    """A refresher that died mid-refresh left its lease in the file; the next one goes on."""
    path = tmp_path / "tokens.json"
    old = expired(logged_in(service.base_url))
    store = FileTokenStore(path)
    store.save(old)
    died = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    died.start()
    died.join()
    data = json.loads(path.read_text())
    data["refresh_lease"] = {
        "id": "gone",
        "pid": died.pid,
        "host": socket.gethostname(),
        "until": time.time() + 60,
    }
    path.write_text(json.dumps(data))
    transport = CountingTransport()
    with AuthClient(
        base_url=service.base_url, transport=transport, token_store=store, timeout=TIMEOUT
    ) as api:
        assert api.get("/auth/me").status_code == 200
    assert transport.refreshes == 1
