"""The API-key scripts (and the rate counter) one by one against a real Redis: no app, no HTTP."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
from redis.asyncio import Redis

from quart_tokengate.service.store.api_keys import RedisApiKeyStore
from quart_tokengate.service.store.redis_store import RedisSessionStore
from quart_tokengate.service.store.results import (
    KeyEnded,
    KeyLive,
    KeyMiss,
    KeyUnknown,
    Limited,
    Live,
    RateCount,
    SessionPolicy,
    SessionRecord,
)
from tests.support import PrivateRedis

NOW = 4_000_000_000.0
TAG = "0123456789abcdef0123456789abcdef"


def fields(**changes: str) -> dict[str, str]:
    values = {
        "st": "live", "why": "", "ex": repr(NOW + 1000), "lu": "0", "uid": "7",
        "nm": "alice", "id": "K" * 16, "sc": "notes:read",
    }  # fmt: skip
    values.update(changes)
    return values


@pytest.fixture
async def store(redis_client: Redis) -> AsyncIterator[RedisApiKeyStore]:
    yield RedisApiKeyStore(redis_client)


async def test_a_key_misses_then_lives_and_its_last_use_is_due_once_a_minute(store):
    assert await store.check(TAG, now=NOW, rate=None) == KeyMiss("")
    assert await store.load(TAG, "", fields(), expire_at=int(NOW) + 2000)
    live = KeyLive("7", "alice", "K" * 16, "notes:read", sync_due=True)
    assert await store.check(TAG, now=NOW, rate=None) == live
    assert await store.check(TAG, now=NOW + 59, rate=None) == KeyLive(
        "7", "alice", "K" * 16, "notes:read", sync_due=False
    )
    assert await store.check(TAG, now=NOW + 60, rate=None) == live
    assert await store.check(TAG, now=NOW + 1000, rate=None) == KeyEnded("expired")
    # A second load finds it there and leaves it.
    assert not await store.load(TAG, "", fields(st="revoked"), expire_at=int(NOW) + 2000)


async def test_marks_revoke_or_send_a_key_back_to_sql_and_beat_a_racing_rebuild(store):
    await store.load(TAG, "", fields(), expire_at=int(NOW) + 2000)
    await store.mark(TAG, revoked=False, why="", expire_at=int(NOW) + 2000)
    missed = await store.check(TAG, now=NOW, rate=None)
    assert missed == KeyMiss("1")
    # A rebuild that saw the state before the mark cannot write; one that saw it can.
    assert not await store.load(TAG, "", fields(), expire_at=int(NOW) + 2000)
    assert await store.load(
        TAG, "1", fields(st="disabled", why="disabled"), expire_at=int(NOW) + 2000
    )
    assert await store.check(TAG, now=NOW, rate=None) == KeyEnded("disabled")
    await store.mark(TAG, revoked=True, why="leaked", expire_at=int(NOW) + 2000)
    assert await store.check(TAG, now=NOW, rate=None) == KeyEnded("leaked")
    # A stale mark never undoes a revocation.
    await store.mark(TAG, revoked=False, why="", expire_at=int(NOW) + 2000)
    assert await store.check(TAG, now=NOW, rate=None) == KeyEnded("leaked")


async def test_a_revocation_of_a_key_redis_never_held_stands(store):
    await store.mark(TAG, revoked=True, why="revoked", expire_at=int(NOW) + 2000)
    assert not await store.load(TAG, "", fields(), expire_at=int(NOW) + 2000)
    assert await store.check(TAG, now=NOW, rate=None) == KeyEnded("revoked")


async def test_an_unknown_key_is_remembered(store):
    assert await store.load(TAG, "", {"st": "none"}, expire_at=int(NOW) + 300)
    assert await store.check(TAG, now=NOW, rate=None) == KeyUnknown()


async def test_the_rate_window_opens_with_its_first_request_and_counts_exactly(store):
    await store.load(TAG, "", fields(), expire_at=int(NOW) + 2000)
    rate = RateCount("k", 2, 10)
    assert isinstance(await store.check(TAG, now=NOW + 0.5, rate=rate), KeyLive)
    assert isinstance(await store.check(TAG, now=NOW + 3, rate=rate), KeyLive)
    assert await store.check(TAG, now=NOW + 3, rate=rate) == Limited(8)
    assert await store.check(TAG, now=NOW + 10.4, rate=rate) == Limited(1)
    assert isinstance(await store.check(TAG, now=NOW + 10.5, rate=rate), KeyLive)


async def test_retry_after_is_never_longer_than_the_window(store):
    # Another instance whose clock is a little behind the one that opened the
    # window sees it end a fraction more than a window ahead: still one window.
    await store.load(TAG, "", fields(), expire_at=int(NOW) + 2000)
    rate = RateCount("k", 1, 10)
    assert isinstance(await store.check(TAG, now=NOW + 0.5, rate=rate), KeyLive)
    assert await store.check(TAG, now=NOW + 0.2, rate=rate) == Limited(10)


async def test_a_clients_token_is_counted_in_the_sessions_check(redis_client):
    sessions = RedisSessionStore(redis_client, SessionPolicy(100, 1000, 10))
    record = SessionRecord("svc", NOW, NOW, "a", "r", "", int(NOW))
    await sessions.load("9", "s1", record, now=NOW)
    client = RateCount("c:reporting", 1, 60)
    assert isinstance(await sessions.check("9", "s1", now=NOW, client=client), Live)
    assert await sessions.check("9", "s1", now=NOW + 1, client=client) == Limited(59)
    assert isinstance(await sessions.check("9", "s1", now=NOW + 1), Live)  # uncounted


@pytest.fixture
async def private_client(private_redis: PrivateRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(private_redis.url)
    yield client
    await client.aclose()


async def test_every_key_script_touches_only_the_keys_it_declares(private_redis, private_client):
    """As for the session scripts (test_scripts.py): Redis Cluster routes a script by its KEYS."""
    store = RedisApiKeyStore(private_client)
    sessions = RedisSessionStore(private_client, SessionPolicy(100, 1000, 10))
    marker = f"tokengate-key-scripts-done-{uuid.uuid4().hex}"
    seen: list[tuple[str, list[str]]] = []
    ready = threading.Event()

    def watch() -> None:
        with redis.Redis.from_url(private_redis.url).monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                if marker in event["command"]:
                    return
                seen.append((event["client_type"], event["command"].split(" ")))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(5)
    await private_client.ping()
    rate = RateCount("k", 5, 10)
    await store.check(TAG, now=NOW, rate=rate)
    await store.load(TAG, "", fields(), expire_at=int(NOW) + 2000)
    await store.check(TAG, now=NOW, rate=rate)
    await store.mark(TAG, revoked=False, why="", expire_at=int(NOW) + 2000)
    await store.mark(TAG, revoked=True, why="leaked", expire_at=int(NOW) + 2000)
    await sessions.load("9", "s1", SessionRecord("svc", NOW, NOW, "a", "r", "", int(NOW)), now=NOW)
    await sessions.check("9", "s1", now=NOW, client=RateCount("c:reporting", 5, 60))
    await private_client.echo(marker)
    watcher.join(10)
    assert not watcher.is_alive()

    declared: set[str] = set()
    scripts = touched = 0
    for client_type, words in seen:
        name = words[0].lower()
        if client_type != "lua":
            if name in ("evalsha", "eval"):
                scripts += 1
                declared = {w.strip('"') for w in words[3 : 3 + int(words[2].strip('"'))]}
            continue
        key = words[1].strip('"')
        assert key in declared, f"{' '.join(words)} touches an undeclared key"
        touched += 1
    assert scripts >= 7 and touched >= 15
    # The key's state and its counter share one cluster slot.
    assert RedisApiKeyStore.state_key(TAG).startswith(f"tg:{{a{TAG}}}:")
