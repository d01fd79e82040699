"""Near checks (``TOKENGATE_NEAR_CACHE``): two instances on one Redis and one database.

Instance B lets a session it saw live a moment ago through without waiting
for Redis. Whatever ends that session on instance A is refused by B on its
very next request: while B's subscription to the announcements works, after
it was cut, and while it is stalled (then A's end waits for B's lease to run
out, and B has stopped answering near by then), Redis restarted under it too.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
import redis
from quart import Quart
from redis.asyncio import Redis

from quart_tokengate.client.pytest_plugin import TokengateClock
from quart_tokengate.service import Settings
from quart_tokengate.service.store.near import (
    ENDS_CHANNEL,
    LEASE,
    LEASE_KEY,
    SILENT,
    NearChecks,
    _Subscriber,
)
from tests.conftest import AppFactory, bearer, me, register_and_login
from tests.support import PrivateRedis, claims, redis_up_a_while, wait_for_async


def near_of(app: Quart) -> NearChecks:
    near = app.extensions["tokengate"].near
    assert near is not None
    return near


def answering(near: NearChecks) -> bool:
    return near._subscriber is not None and time.monotonic() < near.valid_until


@pytest.fixture
async def ab(make_app: AppFactory, clock: TokengateClock) -> tuple[Quart, Quart]:
    a = await make_app(near_cache=True, clock=clock)
    b = await make_app(near_cache=True, clock=clock)
    for app in (a, b):
        await wait_for_async(lambda app=app: answering(near_of(app)), what="the first heartbeat")
    return a, b


async def warm(client: Any, pair: dict[str, Any], near: NearChecks) -> None:
    """Two requests: the first waits for Redis and keeps the entry, the second is near."""
    hits = near.hits
    assert await me(client, pair) == 200
    assert await me(client, pair) == 200
    assert near.hits == hits + 1, "the second request was not answered near"


def session_key(pair: dict[str, Any]) -> str:
    token = claims(pair["access_token"])
    return f"tg:{{u{token['sub']}}}:s:{token['sid']}"


async def test_near_answers_still_slide_last_seen(ab, clock, redis_client: Redis):
    a, b = ab
    near = near_of(b)
    pair = await register_and_login(a.test_client())
    await warm(b.test_client(), pair, near)
    key = session_key(pair)
    clock.advance(0.5)  # still within the entry's second
    assert await me(b.test_client(), pair) == 200
    assert near.hits == 2
    # The check behind the near answer runs all the same and slides last-seen.
    await wait_for_async(
        lambda: _last_seen_is(redis_client, key, clock()),
        what="last-seen slid to the answer's time",
    )


async def _last_seen_is(redis_client: Redis, key: str, when: float) -> bool:
    return float(await redis_client.hget(key, "ls")) == when


async def refresh_answer(client: Any, token: str) -> Any:
    return await client.post("/auth/refresh", json={"refresh_token": token})


@pytest.mark.parametrize("ending", ["logout", "logout-all", "refresh-reuse"])
async def test_an_end_on_one_is_refused_on_the_other_at_the_next_request(ab, clock, ending: str):
    a, b = ab
    client_a, client_b = a.test_client(), b.test_client()
    near = near_of(b)
    for round_ in range(10):
        pair = await register_and_login(client_a, f"{ending}-{round_}")
        if ending == "refresh-reuse":
            assert (await refresh_answer(client_a, pair["refresh_token"])).status_code == 200
            clock.advance(11)  # past the grace window
        await warm(client_b, pair, near)
        if ending == "logout":
            r = await client_a.post("/auth/logout", headers=bearer(pair))
            assert r.status_code == 204
        elif ending == "logout-all":
            r = await client_a.post("/auth/logout-all", headers=bearer(pair))
            assert r.status_code == 204
        else:
            r = await refresh_answer(client_a, pair["refresh_token"])
            assert (await r.get_json())["error"] == "refresh_reused"
        assert await me(client_b, pair) == "token_revoked", f"round {round_}"


async def test_a_newer_login_pushes_out_the_session_the_other_lets_through(
    make_app: AppFactory,
):
    a = await make_app(near_cache=True, max_sessions=1)
    b = await make_app(near_cache=True, max_sessions=1)
    for app in (a, b):
        await wait_for_async(lambda app=app: answering(near_of(app)))
    client_a, client_b = a.test_client(), b.test_client()
    for round_ in range(5):
        name = f"single-{round_}"
        old = await register_and_login(client_a, name)
        await warm(client_b, old, near_of(b))
        await register_and_login(client_a, name)  # the newest login wins
        assert await me(client_b, old) == "session_replaced"


async def test_a_cut_subscription_forgets_everything_and_comes_back(ab, redis_client: Redis):
    a, b = ab
    client_a, client_b = a.test_client(), b.test_client()
    near = near_of(b)
    pair = await register_and_login(client_a)
    await warm(client_b, pair, near)
    # The invalidation channel goes down: Redis drops B's subscriber connection.
    assert await _kill_subscriber(redis_client, near) == 1
    await wait_for_async(lambda: not near.entries, what="B to see its subscription gone")
    r = await client_a.post("/auth/logout", headers=bearer(pair))
    assert r.status_code == 204
    assert await me(client_b, pair) == "token_revoked"
    # It subscribes again, and near answers come back for live sessions.
    await wait_for_async(lambda: answering(near), what="a new subscription's heartbeat")
    await warm(client_b, await register_and_login(client_a, "bob"), near)


async def _kill_subscriber(redis_client: Redis, near: NearChecks) -> int:
    clients = await redis_client.client_list()
    ids = [c["id"] for c in clients if c.get("name") == f"tokengate-near-{near.id}"]
    assert len(ids) == 1, clients
    return int(await redis_client.execute_command("CLIENT", "KILL", "ID", ids[0]))


async def test_a_stalled_subscription_is_waited_out_and_never_answers_late(ab):
    a, b = ab
    client_a, client_b = a.test_client(), b.test_client()
    near = near_of(b)
    pair = await register_and_login(client_a)
    await warm(client_b, pair, near)
    subscriber = near._subscriber
    assert subscriber is not None and subscriber.transport is not None
    # The channel stalls: B reads nothing from it, though Redis keeps sending.
    subscriber.transport.pause_reading()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        r = await client_a.post("/auth/logout", headers=bearer(pair))
        waited = loop.time() - started
        assert r.status_code == 204
        # A waited for B's lease, not for ever.
        assert waited <= LEASE + 0.5
        assert not answering(near)
        assert await me(client_b, pair) == "token_revoked"
    finally:
        subscriber.transport.resume_reading()
    # Once it reads again, the announcements come before the next heartbeat.
    await wait_for_async(lambda: answering(near), what="the heartbeat after the stall")
    assert await me(client_b, pair) == "token_revoked"


async def test_an_answer_that_crossed_an_end_is_not_kept(ab):
    _, b = ab
    near = near_of(b)
    subscriber = near._subscriber
    assert subscriber is not None
    epoch = near.epoch  # a check leaves
    near.heard(ENDS_CHANNEL, b" some-other-session", subscriber)  # an end arrives first
    near.keep("s1", time.time(), time.time(), epoch)  # then the check's "live"
    assert "s1" not in near.entries
    near.keep("s1", time.time(), time.time(), near.epoch)
    assert "s1" in near.entries


async def test_the_absolute_age_is_kept_to_the_second(make_app: AppFactory, clock):
    a = await make_app(near_cache=True, clock=clock, session_max_age=100, idle_timeout=0)
    near = near_of(a)
    await wait_for_async(lambda: answering(near))
    client = a.test_client()
    pair = await register_and_login(client)
    clock.advance(99.5)
    await warm(client, pair, near)
    clock.advance(0.6)  # the entry is 0.6 s old, the session 100.1 s
    assert await me(client, pair) == "session_expired"


async def test_a_stopped_instance_gives_its_lease_back(ab, redis_client: Redis):
    a, b = ab
    near = near_of(b)
    assert await redis_client.zscore(LEASE_KEY, near.id) is not None
    await near.close()
    assert await redis_client.zscore(LEASE_KEY, near.id) is None
    # An end now waits for nobody that is gone.
    pair = await register_and_login(a.test_client())
    await redis_up_a_while(redis_client)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await a.test_client().post("/auth/logout", headers=bearer(pair))).status_code == 204
    assert loop.time() - started < LEASE / 2


async def hot_on_b(ab: tuple[Quart, Quart]) -> tuple[dict[str, Any], NearChecks, str]:
    """A session logged in on A and answered near on B: its pair, B's near checks, its sid."""
    a, b = ab
    near = near_of(b)
    pair = await register_and_login(a.test_client())
    await warm(b.test_client(), pair, near)
    return pair, near, claims(pair["access_token"])["sid"]


async def test_the_check_behind_a_near_answer_survives_a_flushed_script_cache(
    ab, clock, redis_client: Redis
):
    _, b = ab
    pair, near, sid = await hot_on_b(ab)
    await redis_client.script_flush()  # a restarted or flushed Redis: NOSCRIPT
    clock.advance(0.5)
    assert await me(b.test_client(), pair) == 200
    # Its check was refused NOSCRIPT, sent again with the script, and renewed the entry.
    await wait_for_async(lambda: near.entries.get(sid, (0.0,))[0] == clock(), what="renewal")


async def test_an_entry_whose_session_redis_holds_as_over_is_dropped(ab, redis_client: Redis):
    _, b = ab
    pair, near, sid = await hot_on_b(ab)
    # Ended behind near checks' back (never done by the service: every end is announced).
    await redis_client.hset(session_key(pair), mapping={"st": "ended", "why": "revoked"})
    assert await me(b.test_client(), pair) == 200  # the entry still answers once
    await wait_for_async(lambda: sid not in near.entries, what="the check behind it to drop it")
    assert await me(b.test_client(), pair) == "token_revoked"


async def test_entries_too_old_to_answer_are_forgotten_least_recent_first(ab, clock):
    _, b = ab
    near = near_of(b)
    near.entries.clear()
    t, epoch = clock(), near.epoch
    near.keep("a", t - 2, t - 9, epoch)
    near.keep("b", t - 1, t - 9, epoch)
    near.keep("a", t, t - 9, epoch)  # said live again: now the most recent
    assert list(near.entries) == ["b", "a"]
    near.prune()
    assert list(near.entries) == ["a"]


async def test_near_checks_log_in_to_a_redis_with_a_password(
    make_app: AppFactory, private_redis: PrivateRedis
):
    redis.Redis(port=private_redis.port).config_set("requirepass", "s3cret")
    app = await make_app(
        near_cache=True, redis_url=f"redis://:s3cret@127.0.0.1:{private_redis.port}/2"
    )
    near = near_of(app)
    await wait_for_async(lambda: answering(near), what="a subscription that logged in")
    pair = await register_and_login(app.test_client())
    await warm(app.test_client(), pair, near)


# -- on by default, where they are safe -------------------------------------------


async def off_because(app: Quart) -> str:
    """Why the app's near checks turned themselves off (they say it once, then stop)."""
    near = near_of(app)
    await wait_for_async(lambda: near.off is not None, what="near checks turning off")
    assert near.off is not None and not answering(near)
    return near.off


async def waits_for_redis(app: Quart) -> None:
    """Logged in and asked twice: neither request is answered near."""
    near = near_of(app)
    pair = await register_and_login(app.test_client())
    assert await me(app.test_client(), pair) == 200
    assert await me(app.test_client(), pair) == 200
    assert near.hits == 0


async def test_near_checks_are_on_by_default(make_app: AppFactory):
    app = await make_app()  # TOKENGATE_NEAR_CACHE unset: auto
    near = near_of(app)
    await wait_for_async(lambda: answering(near), what="the first heartbeat")
    pair = await register_and_login(app.test_client())
    await warm(app.test_client(), pair, near)
    assert near.off is None


async def test_false_turns_them_off(make_app: AppFactory):
    app = await make_app(near_cache=False)
    assert app.extensions["tokengate"].near is None


@pytest.mark.parametrize("vouched", [None, True])
async def test_a_redis_that_may_evict_keys_gets_no_near_answers(
    make_app: AppFactory, private_redis: PrivateRedis, caplog, vouched: bool | None
):
    server = redis.Redis(port=private_redis.port)
    server.config_set("maxmemory", "512mb")
    server.config_set("maxmemory-policy", "allkeys-lru")
    app = await make_app(near_cache=vouched, redis_url=private_redis.url)
    why = await off_because(app)
    # Seen, so not taken at the operator's word either.
    assert "maxmemory-policy allkeys-lru" in why and "noeviction" in why
    assert "near checks off" in caplog.text
    await waits_for_redis(app)


async def test_a_memory_limit_that_never_evicts_is_safe(
    make_app: AppFactory, private_redis: PrivateRedis
):
    server = redis.Redis(port=private_redis.port)
    server.config_set("maxmemory", "512mb")
    server.config_set("maxmemory-policy", "noeviction")
    app = await make_app(redis_url=private_redis.url)
    near = near_of(app)
    await wait_for_async(lambda: answering(near), what="the first heartbeat")
    pair = await register_and_login(app.test_client())
    await warm(app.test_client(), pair, near)


def acl_user(private_redis: PrivateRedis, *rules: str) -> str:
    """A Redis user ``app`` with ``rules``; its URL."""
    redis.Redis(port=private_redis.port).execute_command(
        "ACL", "SETUSER", "app", "reset", "on", ">app-secret", *rules
    )
    return f"redis://app:app-secret@127.0.0.1:{private_redis.port}/0"


async def test_auto_needs_to_see_the_eviction_settings(
    make_app: AppFactory, private_redis: PrivateRedis
):
    url = acl_user(private_redis, "~*", "&*", "+@all", "-config")
    app = await make_app(redis_url=url)
    why = await off_because(app)
    assert "NOPERM" in why and "TOKENGATE_NEAR_CACHE=true" in why
    await waits_for_redis(app)


async def test_true_takes_the_operator_at_their_word_where_redis_hides_them(
    make_app: AppFactory, private_redis: PrivateRedis
):
    url = acl_user(private_redis, "~*", "&*", "+@all", "-config")
    app = await make_app(near_cache=True, redis_url=url)
    near = near_of(app)
    await wait_for_async(lambda: answering(near), what="the first heartbeat")
    pair = await register_and_login(app.test_client())
    await warm(app.test_client(), pair, near)


async def test_a_redis_user_refused_the_channels_gets_no_near_answers(
    make_app: AppFactory, private_redis: PrivateRedis
):
    url = acl_user(private_redis, "~*", "resetchannels", "+@all")
    app = await make_app(redis_url=url)
    why = await off_because(app)
    assert "NOPERM" in why and "&tg:*" in why
    # Sessions still end: the scripts announce with pcall, refused or not.
    pair = await register_and_login(app.test_client())
    assert await me(app.test_client(), pair) == 200
    out = await app.test_client().post("/auth/logout", headers=bearer(pair))
    assert out.status_code == 204
    assert await me(app.test_client(), pair) == "token_revoked"
    assert near_of(app).hits == 0


async def test_the_acl_user_docs_operations_md_suggests_gets_near_answers(
    make_app: AppFactory, private_redis: PrivateRedis
):
    rules = "~tg:* resetchannels &tg:* +@all -@dangerous +config|get +info +client|setname +script"
    url = acl_user(private_redis, *rules.split())
    app = await make_app(redis_url=url)
    near = near_of(app)
    await wait_for_async(lambda: answering(near), what="the first heartbeat")
    client = app.test_client()
    pair = await register_and_login(client)
    await warm(client, pair, near)
    assert (await client.post("/auth/logout", headers=bearer(pair))).status_code == 204
    assert await me(client, pair) == "token_revoked"


async def test_auto_needs_info_to_let_an_end_see_a_restart(
    make_app: AppFactory, private_redis: PrivateRedis
):
    url = acl_user(private_redis, "~*", "&*", "+@all", "-info")
    app = await make_app(redis_url=url)
    why = await off_because(app)
    assert "INFO" in why and "+info" in why and "TOKENGATE_NEAR_CACHE=true" in why
    await waits_for_redis(app)
    # true takes the operator's word here too.
    vouched = await make_app(near_cache=True, redis_url=url)
    near = near_of(vouched)
    await wait_for_async(lambda: answering(near), what="the first heartbeat")


async def two_near_apps(make_app: AppFactory, url: str) -> tuple[Quart, Quart]:
    a, b = await make_app(redis_url=url), await make_app(redis_url=url)  # the default: auto
    for app in (a, b):
        near = near_of(app)
        await wait_for_async(lambda near=near: answering(near), what="the first heartbeat")
    return a, b


async def test_an_end_just_after_a_redis_restart_waits_out_a_lagging_instance(
    make_app: AppFactory, private_redis: PrivateRedis
):
    """Redis restarts (it keeps nothing on disk: the lease set is gone) before B has read
    that its subscription ended (a busy loop, a short freeze). A's logout finds no lease
    of B's; Redis's uptime tells it to wait out any lease, so B never answers near."""
    a, b = await two_near_apps(make_app, private_redis.url)
    client_a, client_b, near = a.test_client(), b.test_client(), near_of(b)
    pair = await register_and_login(client_a)
    await warm(client_b, pair, near)
    # Right after one of B's heartbeats came back: most of its lease still ahead.
    await wait_for_async(lambda: near.valid_until - time.monotonic() > 0.8, what="a heartbeat")
    assert await me(client_b, pair) == 200  # renews the entry
    subscriber = near._subscriber
    assert subscriber is not None and subscriber.transport is not None
    subscriber.transport.pause_reading()  # B has not read its subscription yet
    try:
        private_redis.stop()
        private_redis.start()
        assert (await client_a.post("/auth/logout", headers=bearer(pair))).status_code == 204
        assert await me(client_b, pair) == "token_revoked"
    finally:
        subscriber.transport.resume_reading()


async def test_eviction_turned_on_at_run_time_turns_near_checks_off(
    make_app: AppFactory, private_redis: PrivateRedis
):
    a, b = await two_near_apps(make_app, private_redis.url)
    server = redis.Redis(port=private_redis.port)
    server.config_set("maxmemory", "512mb")
    server.config_set("maxmemory-policy", "allkeys-lru")
    for app in (a, b):
        why = await off_because(app)
        assert "maxmemory-policy allkeys-lru" in why
    # Both gave their lease back: an end waits for nobody.
    assert server.zrange(LEASE_KEY, 0, -1) == []
    await waits_for_redis(a)


async def test_a_subscription_that_brings_nothing_back_is_made_again(
    make_app: AppFactory, private_redis: PrivateRedis, caplog
):
    """A subscription that stops delivering without a word (a peer whose FIN never
    comes) would make every end wait out this instance's lease for as long as it runs:
    once its own heartbeats stop coming back, it is closed and made again."""
    app = await make_app(redis_url=private_redis.url)
    near = near_of(app)
    await wait_for_async(lambda: answering(near), what="the first heartbeat")
    silent = near._subscriber
    assert silent is not None and silent.transport is not None
    silent.transport.pause_reading()
    await wait_for_async(
        lambda: near._subscriber not in (None, silent) and answering(near),
        timeout=SILENT + 10,
        what="a new subscription",
    )
    assert "the subscription brings nothing" in caplog.text
    pair = await register_and_login(app.test_client())
    await warm(app.test_client(), pair, near)


async def test_a_command_holds_no_lease(redis_url: str, database_url: str, tmp_path, redis_client):
    """A `tokengate` command answers no request: it starts no near checks (no lease,
    no subscription left half made when it exits a moment later)."""
    from quart_tokengate.service.admin_cli import _started
    from tests.support import KEK, SECRET

    settings = Settings(
        secret_key=SECRET, key_encryption_key=KEK, redis_url=redis_url,
        database_url=database_url, instance_dir=tmp_path / "instance",
    )  # fmt: skip
    assert settings.near_cache is None  # the default: auto
    async with _started(settings) as gate:
        assert gate.near is None
    assert await redis_client.zrange(LEASE_KEY, 0, -1) == []


async def test_a_subscription_lost_before_it_was_made_leaves_no_unretrieved_error(caplog):
    """An instance shut down mid-subscription: nobody awaits the subscription any more,
    and its loss is no "Future exception was never retrieved" on the way out."""

    class Forgets:
        def forget(self, subscriber: object) -> None:
            pass

    subscriber = _Subscriber(Forgets())  # type: ignore[arg-type]
    subscriber.connection_lost(None)
    assert subscriber.subscribed.done() and subscriber.lost.done()
    del subscriber
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
