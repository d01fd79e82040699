"""The Lua scripts one by one, with fixed arguments, against a real Redis: no app, no HTTP.

Each test drives ``RedisSessionStore`` (the only code that knows the scripts'
arguments and replies) or, where a reply never reaches Python whole, the
script itself; the last test watches Redis run every script and checks that
each one touches only the keys it declares.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from quart_tokengate.service.store.redis_store import RedisSessionStore, script_source
from quart_tokengate.service.store.results import (
    MISS,
    Attempt,
    Ended,
    EndReason,
    Live,
    Opened,
    Reissue,
    Rotation,
    SessionPolicy,
    SessionRecord,
)
from tests.support import PrivateRedis

# Far ahead of the real clock: Redis expires keys (EXPIREAT) by its own.
NOW = 4_000_000_000.0
UID = "7"
POLICY = SessionPolicy(idle_timeout=100, max_age=1000, refresh_grace=10)


@pytest.fixture
async def store(redis_client: Redis) -> AsyncIterator[RedisSessionStore]:
    yield RedisSessionStore(redis_client, POLICY)


def record(created: float = NOW, **changes: Any) -> SessionRecord:
    values: dict[str, Any] = {
        "username": "alice", "created": created, "last_seen": created,
        "access_jti": "a1", "refresh_jti": "r1", "previous_refresh_jti": "", "iat": int(created),
    }  # fmt: skip
    values.update(changes)
    return SessionRecord(**values)


async def open_session(store: RedisSessionStore, sid: str, now: float = NOW, limit: int = 0):
    opened = await store.login(UID, sid, record(now), now=now, limit=limit)
    if opened is MISS:
        await store.load_index(UID, [], now=now)
        opened = await store.login(UID, sid, record(now), now=now, limit=limit)
    assert isinstance(opened, Opened)
    return opened


# -- check --------------------------------------------------------------------
async def test_check_misses_then_finds_a_loaded_session(store):
    assert await store.check(UID, "session-1", now=NOW) is MISS
    await store.load(UID, "session-1", record(), now=NOW)
    assert await store.check(UID, "session-1", now=NOW + 1) == Live(False, created=NOW)
    # A quarter of the idle timeout after the last write-back, last-seen is due in SQL.
    assert await store.check(UID, "session-1", now=NOW + 26) == Live(True, created=NOW)
    assert await store.check(UID, "session-1", now=NOW + 27) == Live(False, created=NOW)


async def test_peek_ends_an_idle_session_but_never_slides_last_seen(store):
    await open_session(store, "session-1")
    assert await store.peek(UID, "session-1", now=NOW + 99) == Live(sync_due=False)
    assert await store.peek(UID, "session-1", now=NOW + 100) == Ended(EndReason.EXPIRED, True)
    assert await store.peek(UID, "session-2", now=NOW) == MISS


async def test_check_ends_an_idle_session_once(store):
    await open_session(store, "session-1")
    assert await store.check(UID, "session-1", now=NOW + 99) == Live(True, created=NOW)
    later = NOW + 99 + 100
    assert await store.check(UID, "session-1", now=later) == Ended(EndReason.EXPIRED, True)
    assert await store.check(UID, "session-1", now=later) == Ended(EndReason.EXPIRED, False)


async def test_check_ends_a_session_past_its_absolute_age(store):
    await open_session(store, "session-1")
    for step in range(1, 11):  # active all along
        assert isinstance(await store.check(UID, "session-1", now=NOW + 99 * step), Live)
    assert await store.check(UID, "session-1", now=NOW + 1000) == Ended(EndReason.EXPIRED, True)


async def test_a_session_loaded_as_ended_stays_ended(store):
    await store.load(UID, "session-1", record(ended=EndReason.REPLACED), now=NOW)
    assert await store.check(UID, "session-1", now=NOW) == Ended(EndReason.REPLACED, False)


async def test_load_never_overwrites(store):
    await open_session(store, "session-1")
    await store.load(UID, "session-1", record(ended=EndReason.REVOKED), now=NOW)
    assert isinstance(await store.check(UID, "session-1", now=NOW), Live)


# -- implicit refresh and refresh -----------------------------------------------
async def test_implicit_refresh_gives_one_successor_per_expired_token(store):
    await open_session(store, "session-1")
    first = await store.implicit_refresh(
        UID, "session-1", now=NOW + 5.5, expired_jti="a1", new_jti="x"
    )
    again = await store.implicit_refresh(
        UID, "session-1", now=NOW + 8, expired_jti="a1", new_jti="y"
    )
    assert first == again == Reissue(access_jti="x", iat=int(NOW) + 5, username="alice")
    other = await store.implicit_refresh(
        UID, "session-1", now=NOW + 9, expired_jti="x", new_jti="z"
    )
    assert other == Reissue(access_jti="z", iat=int(NOW) + 9, username="alice")


def refresher(store):
    """``refresh(now, presented, new)``: session-1's refresh script, new jtis named by ``new``."""

    async def refresh(now: float, presented: str, new: str) -> Any:
        return await store.refresh(
            UID, "session-1", now=now, presented_jti=presented,
            new_access_jti=f"a-{new}", new_refresh_jti=f"r-{new}",
        )  # fmt: skip

    return refresh


async def test_refresh_rotates_repeats_within_grace_then_ends_on_reuse(store):
    await open_session(store, "session-1")
    refresh = refresher(store)

    rotated = await refresh(NOW + 1, "r1", "2")
    assert rotated == Rotation(True, "a-2", "r-2", "r1", int(NOW) + 1, "alice")
    await store.confirm(UID, "session-1", "r-2")
    same = await refresh(NOW + 11, "r1", "3")  # the retired token, within grace
    assert same == Rotation(False, "a-2", "r-2", "r1", int(NOW) + 1, "alice")
    assert await refresh(NOW + 11.5, "r1", "4") == Ended(EndReason.REUSED, True)
    assert await refresh(NOW + 12, "r-2", "5") == Ended(EndReason.REUSED, False)
    assert await store.check(UID, "session-1", now=NOW + 12) == Ended(EndReason.REUSED, False)


async def test_an_unconfirmed_rotation_repeats_past_grace_until_confirmed(store):
    await open_session(store, "session-1")
    refresh = refresher(store)

    rotated = await refresh(NOW + 1, "r1", "2")
    # Its answer never reached the client: the same token, long after grace,
    # gets the same pair.
    late = await refresh(NOW + 50, "r1", "3")
    assert late == Rotation(False, "a-2", "r-2", "r1", rotated.iat, "alice")
    # Confirming another rotation's token confirms nothing.
    await store.confirm(UID, "session-1", "r-other")
    assert await refresh(NOW + 60, "r1", "4") == late
    await store.confirm(UID, "session-1", "r-2")
    assert await refresh(NOW + 61, "r1", "5") == Ended(EndReason.REUSED, True)


async def test_a_refresh_token_never_seen_ends_the_session(store):
    await open_session(store, "session-1")
    ended = await store.refresh(
        UID, "session-1", now=NOW, presented_jti="forged", new_access_jti="a", new_refresh_jti="r"
    )
    assert ended == Ended(EndReason.REUSED, True)


# -- login and the limit ----------------------------------------------------------
async def test_login_needs_the_user_set_loaded_first(store):
    assert await store.login(UID, "session-1", record(), now=NOW, limit=0) is MISS
    await store.load_index(UID, [], now=NOW)
    assert await store.login(UID, "session-1", record(), now=NOW, limit=0) == Opened()


async def test_login_over_the_limit_replaces_the_oldest(store):
    await open_session(store, "session-1", limit=2)
    await open_session(store, "session-2", now=NOW + 1, limit=2)
    opened = await open_session(store, "session-3", now=NOW + 2, limit=2)
    assert opened == Opened(replaced=("session-1",))
    assert await store.check(UID, "session-1", now=NOW + 3) == Ended(EndReason.REPLACED, False)
    assert isinstance(await store.check(UID, "session-2", now=NOW + 3), Live)


async def test_login_ends_the_expired_sessions_it_meets(store):
    await open_session(store, "session-1")
    opened = await open_session(store, "session-2", now=NOW + 150)
    assert opened == Opened(expired=("session-1",))


async def test_the_login_script_refuses_a_set_it_was_not_told_of(redis_client, store):
    """A login that read the set before another login changed it runs again."""
    await open_session(store, "session-1")
    z, new = store.index_key(UID), store.session_key(UID, "session-2")
    args = ["session-2", repr(NOW), 100, 1000, 0, int(NOW) + 1060, 60, "", "st", "live"]
    reply = await redis_client.eval(script_source("login"), 2, z, new, *args)
    assert reply == [b"stale"]
    assert not await redis_client.exists(new)
    known = store.session_key(UID, "session-1")
    reply = await redis_client.eval(script_source("login"), 3, z, new, known, *args)
    assert reply == [b"ok", [], []]


async def test_a_login_sent_twice_gets_the_same_answer(store):
    """A retried call (its reply lost) must not turn the replaced sessions into its own loss."""
    await open_session(store, "session-1", limit=1)
    twice = [
        await store.login(UID, "session-2", record(NOW + 1), now=NOW + 1, limit=1) for _ in range(2)
    ]
    assert twice == [Opened(replaced=("session-1",))] * 2
    assert isinstance(await store.check(UID, "session-2", now=NOW + 2), Live)


# -- ending ----------------------------------------------------------------------
async def test_end_every_session_but_one(store):
    for n in range(1, 4):
        await open_session(store, f"session-{n}", now=NOW + n)
    ended = await store.end(
        UID, ["session-2"], reason=EndReason.REVOKED, now=NOW + 5, every=True, keep="session-3"
    )
    assert sorted(ended) == ["session-1", "session-2"]
    assert await store.check(UID, "session-1", now=NOW + 5) == Ended(EndReason.REVOKED, False)
    assert isinstance(await store.check(UID, "session-3", now=NOW + 5), Live)
    # Ending again changes nothing, and the first reason stays.
    assert await store.end(UID, ["session-1"], reason=EndReason.EXPIRED, now=NOW + 6) == []
    assert await store.check(UID, "session-1", now=NOW + 6) == Ended(EndReason.REVOKED, False)


async def test_the_end_script_refuses_every_when_told_of_too_few(redis_client, store):
    await open_session(store, "session-1")
    z = store.index_key(UID)
    reply = await redis_client.eval(
        script_source("end"), 1, z, "revoked", int(NOW) + 1060, "", "1", ""
    )
    assert reply == [b"stale"]
    assert isinstance(await store.check(UID, "session-1", now=NOW), Live)


async def test_ending_a_session_redis_lost_keeps_it_ended(store, redis_client):
    await store.end(UID, ["session-9"], reason=EndReason.REVOKED, now=NOW)
    ttl = await redis_client.ttl(store.session_key(UID, "session-9"))
    assert ttl > 0  # it expires, like every session key
    assert await store.check(UID, "session-9", now=NOW) == Ended(EndReason.REVOKED, False)


# -- the sessions list -------------------------------------------------------------
async def test_last_seen_applies_the_one_rule_to_redis_and_to_sql_times(store):
    await open_session(store, "session-1")
    await open_session(store, "session-2")
    await store.check(UID, "session-1", now=NOW + 50)
    await store.end(UID, ["session-2"], reason=EndReason.REVOKED, now=NOW + 50)
    sessions = [
        ("session-1", NOW, NOW),  # Redis knows better: seen at +50
        ("session-2", NOW, NOW),  # ended in Redis
        ("session-3", NOW, NOW + 60),  # lost by Redis: SQL's times, still alive
        ("session-4", NOW, NOW),  # lost by Redis: idle by SQL's times
    ]
    seen = await store.last_seen(UID, sessions, now=NOW + 140)
    assert seen == {"session-1": NOW + 50, "session-3": NOW + 60}
    assert await store.last_seen(UID, sessions, now=NOW + 1000) == {}


# -- the password throttle ------------------------------------------------------------
IP, OTHER_IP = "203.0.113.5", "198.51.100.7"


async def begin(store, attempt: str, *, ip: str = IP, now: float = NOW, limit: int = 2,
                ceiling: int = 100, name: str = "alice") -> int:  # fmt: skip
    return await store.begin_attempt(name, ip, attempt, now=now, limit=limit, ceiling=ceiling)


async def settle(store, attempt: str, outcome: Attempt, *, ip: str = IP, name: str = "alice"):
    await store.end_attempt(name, ip, attempt, outcome=outcome, window=900)


async def test_attempts_take_turns_and_failures_lock_out(store):
    assert await begin(store, "t1") == 1
    assert await begin(store, "t2") == 1
    assert await begin(store, "t3") == 0  # wait your turn
    await settle(store, "t1", Attempt.FAILED)
    await settle(store, "t2", Attempt.FAILED)
    assert -900 <= await begin(store, "t3") < 0
    # A hung check frees its slot after the lease.
    assert await begin(store, "h", name="bob", limit=1) == 1
    assert await begin(store, "n", name="bob", limit=1, now=NOW + 29) == 0
    assert await begin(store, "n", name="bob", limit=1, now=NOW + 31) == 1


async def test_a_success_clears_the_address_count_only(store):
    assert await begin(store, "t1") == 1
    await settle(store, "t1", Attempt.FAILED)
    assert await begin(store, "g1", ip=OTHER_IP) == 1
    await settle(store, "g1", Attempt.FAILED, ip=OTHER_IP)
    assert await begin(store, "t2") == 1
    await settle(store, "t2", Attempt.OK)
    # This address starts again; the other keeps its one failure.
    for n in range(2):
        assert await begin(store, f"t{n + 3}") == 1
        await settle(store, f"t{n + 3}", Attempt.FAILED)
    assert await begin(store, "g2", ip=OTHER_IP) == 1
    await settle(store, "g2", Attempt.FAILED, ip=OTHER_IP)
    assert await begin(store, "g3", ip=OTHER_IP) < 0


async def test_an_undecided_check_only_gives_its_slot_back(store):
    for n in range(5):
        assert await begin(store, f"t{n}", limit=1) == 1
        await settle(store, f"t{n}", Attempt.UNDECIDED)
    assert await begin(store, "t9", limit=1) == 1


async def test_the_account_ceiling_counts_every_address(store):
    for n in range(4):
        ip = f"10.0.0.{n}"
        assert await begin(store, f"t{n}", ip=ip, ceiling=4) == 1
        await settle(store, f"t{n}", Attempt.FAILED, ip=ip)
    assert await begin(store, "late", ip="10.0.0.99", ceiling=4) < 0
    # ``tokengate users unlock`` clears every count of the account.
    await store.clear_throttle("alice")
    assert await begin(store, "after", ip="10.0.0.0", ceiling=4) == 1


async def test_a_trusted_device_counts_alone(store):
    device = dict(now=NOW, limit=2)
    for n in range(2):
        assert await store.begin_device_attempt("alice", "dev1", f"d{n}", **device) == 1
        await store.end_device_attempt("alice", "dev1", f"d{n}", outcome=Attempt.FAILED, window=900)
    assert await store.begin_device_attempt("alice", "dev1", "d9", **device) < 0
    # Nothing else counted it: the address, the account, another device go on.
    assert await begin(store, "t1", limit=1, ceiling=1) == 1
    assert await store.begin_device_attempt("alice", "dev2", "e1", **device) == 1
    # A device's success clears its own count; unlock clears every device's.
    await store.clear_throttle("alice")
    assert await store.begin_device_attempt("alice", "dev1", "d10", **device) == 1
    await store.end_device_attempt("alice", "dev1", "d10", outcome=Attempt.FAILED, window=900)
    assert await store.begin_device_attempt("alice", "dev1", "d11", **device) == 1
    await store.end_device_attempt("alice", "dev1", "d11", outcome=Attempt.OK, window=900)
    for n in range(2):
        assert await store.begin_device_attempt("alice", "dev1", f"f{n}", **device) == 1
        await store.end_device_attempt("alice", "dev1", f"f{n}", outcome=Attempt.FAILED, window=900)


async def test_an_address_counts_across_usernames_and_a_success_clears_nothing(store):
    async def one(attempt: str, outcome: Attempt) -> int:
        verdict = await store.begin_address_attempt(IP, attempt, now=NOW, limit=2)
        if verdict == 1:
            await store.end_address_attempt(IP, attempt, outcome=outcome, window=900)
        return verdict

    assert await one("a1", Attempt.FAILED) == 1
    assert await one("a2", Attempt.OK) == 1
    assert await one("a3", Attempt.UNDECIDED) == 1
    assert await one("a4", Attempt.FAILED) == 1
    assert await one("a5", Attempt.OK) < 0
    assert await store.begin_address_attempt(OTHER_IP, "b1", now=NOW, limit=2) == 1
    assert await store.count_address("register", IP, 900) == (1, 900)
    assert (await store.count_address("register", IP, 900))[0] == 2


# -- every key a script touches is declared ----------------------------------------------
# Commands whose first argument is not a key (PUBLISH names a channel).
KEYLESS = {"eval", "evalsha", "script", "ping", "echo", "select", "info", "publish", "time"}


@pytest.fixture
async def private_client(private_redis: PrivateRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(private_redis.url)
    yield client
    await client.aclose()


async def test_every_script_touches_only_the_keys_it_declares(private_redis, private_client):
    """Redis Cluster routes a script by its KEYS: an undeclared key may live elsewhere.

    MONITOR shows every client's commands, so the server is the test's own:
    on a shared one, another suite's scripts would pass for ours.
    """
    redis_url, redis_client = private_redis.url, private_client
    store = RedisSessionStore(redis_client, POLICY)
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    marker = f"tokengate-scripts-done-{uuid.uuid4().hex}"
    seen: list[tuple[str, list[str]]] = []
    ready = threading.Event()

    def watch() -> None:
        with redis.Redis.from_url(redis_url).monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                if event["db"] != db:
                    continue
                if marker in event["command"]:
                    return
                words = event["command"].split(" ")
                seen.append((event["client_type"], words))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(5)
    await redis_client.ping()  # the monitor is attached once this is logged
    # Every script, through the store.
    await store.load_index(UID, [], now=NOW)
    for n in range(1, 4):
        await store.login(UID, f"session-{n}", record(NOW + n), now=NOW + n, limit=2)
    await store.check(UID, "session-2", now=NOW + 200)
    await store.check(UID, "session-3", now=NOW + 50)
    await store.peek(UID, "session-3", now=NOW + 50)
    await store.implicit_refresh(UID, "session-3", now=NOW + 51, expired_jti="a1", new_jti="x")
    await store.refresh(
        UID, "session-3", now=NOW + 52, presented_jti="r1", new_access_jti="a", new_refresh_jti="r"
    )
    await store.confirm(UID, "session-3", "r")
    await store.load(UID, "session-4", record(), now=NOW + 52)
    await store.last_seen(UID, [("session-3", NOW, NOW), ("session-5", NOW, NOW)], now=NOW + 53)
    await store.end(UID, ["session-5"], reason=EndReason.REVOKED, now=NOW + 54, every=True)
    await begin(store, "t")
    await settle(store, "t", Attempt.FAILED)
    await store.begin_device_attempt("alice", "dev", "d", now=NOW, limit=2)
    await store.end_device_attempt("alice", "dev", "d", outcome=Attempt.FAILED, window=900)
    await store.begin_address_attempt(IP, "a", now=NOW, limit=2)
    await store.end_address_attempt(IP, "a", outcome=Attempt.FAILED, window=900)
    await store.count_address("register", IP, 900)
    await store.record_failure("alice", 900, kind="reset")
    await redis_client.echo(marker)
    watcher.join(10)
    assert not watcher.is_alive()

    declared: set[str] = set()
    touched = 0
    scripts = 0
    for client_type, words in seen:
        name = words[0].lower()
        if client_type != "lua":
            if name in ("evalsha", "eval"):
                scripts += 1
                declared = {w.strip('"') for w in words[3 : 3 + int(words[2].strip('"'))]}
            continue
        if name in KEYLESS:
            continue
        key = words[1].strip('"')
        assert key in declared, f"{' '.join(words)} touches an undeclared key"
        touched += 1
    assert scripts >= 16 and touched > 50


# -- announcements for near checks (store/near.py) ---------------------------------------
async def announced(redis_client: Redis, action: Callable[[], Awaitable[object]]) -> list[bytes]:
    """What ``action`` published on ``tg:ends`` (the subscription is made first)."""
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("tg:ends")
    try:
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        await action()
        await redis_client.ping()  # published in the same script: here by now
        messages = []
        while (message := await pubsub.get_message(timeout=0.2)) is not None:
            messages.append(message["data"])
        return messages
    finally:
        await pubsub.aclose()


async def test_an_end_sent_again_is_announced_again_with_its_note(store, redis_client):
    await open_session(store, "session-1")
    await open_session(store, "session-2")

    async def end() -> None:
        await store.end(UID, ["session-1"], reason=EndReason.REVOKED, now=NOW, note="n1")

    assert await announced(redis_client, end) == [b"n1 session-1"]
    # Its reply lost and the call sent again: nothing newly ended, announced all the same.
    assert await announced(redis_client, end) == [b"n1 session-1"]
    await open_session(store, "session-3")
    everyone = await announced(
        redis_client,
        lambda: store.end(
            UID, [], reason=EndReason.REVOKED, now=NOW, every=True, keep="session-2", note="n2"
        ),
    )
    assert everyone == [b"n2 session-3"]  # every session in the set but the one kept


async def test_a_refresh_of_a_session_found_over_is_announced_with_its_note(store, redis_client):
    await open_session(store, "session-1")
    await store.end(UID, ["session-1"], reason=EndReason.REVOKED, now=NOW)
    messages = await announced(
        redis_client,
        lambda: store.refresh(
            UID,
            "session-1",
            now=NOW,
            presented_jti="r1",
            new_access_jti="a",
            new_refresh_jti="r",
            note="n3",
        ),
    )
    assert messages == [b"n3 session-1"]


async def test_a_login_over_the_limit_announces_whom_it_pushed_out(store, redis_client):
    await open_session(store, "session-1", limit=1)
    messages = await announced(
        redis_client,
        lambda: store.login(UID, "session-2", record(NOW + 1), now=NOW + 1, limit=1, note="n4"),
    )
    assert messages == [b"n4 session-1"]
