"""The guard's lean Redis path: replies in order, script reloads, failures as redis-py's."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from quart_tokengate.service.errors import is_infrastructure_failure
from quart_tokengate.service.store import pipelined

ECHO = "return {ARGV[1], redis.call('INCR', KEYS[1])}"
SHA = hashlib.sha1(ECHO.encode()).hexdigest()


@pytest.fixture
def server(private_redis):
    return private_redis


def calls(port: int) -> dict[str, int]:
    stats = redis.Redis(port=port).info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


async def test_concurrent_calls_each_get_their_own_reply(server):
    path = pipelined.for_client(Redis.from_url(server.url), timeout=2.0)
    assert path is not None
    replies = await asyncio.gather(*(path.run(SHA, ECHO, ["n"], [f"c{i}"]) for i in range(300)))
    assert [r[0] for r in replies] == [f"c{i}".encode() for i in range(300)]
    assert sorted(r[1] for r in replies) == list(range(1, 301))
    path.close()


async def test_a_script_redis_does_not_have_is_sent_once_then_called_by_sha(server):
    path = pipelined.for_client(Redis.from_url(server.url), timeout=2.0)
    await path.run(SHA, ECHO, ["n"], ["a"])  # NOSCRIPT, then EVAL
    await path.run(SHA, ECHO, ["n"], ["b"])
    stats = calls(server.port)
    assert stats["eval"] == 1 and stats["evalsha"] == 2
    path.close()


async def test_auth_and_database_come_from_the_client_url(server):
    redis.Redis(port=server.port).config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
    path = pipelined.for_client(Redis.from_url(url), timeout=2.0)
    await path.run(SHA, ECHO, ["in-db-3"], ["x"])
    assert redis.Redis(port=server.port, password="s3cret", db=3).get("in-db-3") == b"1"
    path.close()
    wrong = pipelined.for_client(Redis.from_url(url.replace("s3cret", "nope")), timeout=2.0)
    with pytest.raises(RedisConnectionError):
        await wrong.run(SHA, ECHO, ["k"], ["x"])


async def test_a_stopped_redis_is_an_infrastructure_failure_and_a_restart_heals(server):
    path = pipelined.for_client(Redis.from_url(server.url), timeout=2.0)
    await path.run(SHA, ECHO, ["n"], ["a"])
    server.stop()
    with pytest.raises(RedisConnectionError) as caught:
        await path.run(SHA, ECHO, ["n"], ["b"])
    assert is_infrastructure_failure(caught.value)
    server.start()  # same port, empty: the script is gone too
    assert (await path.run(SHA, ECHO, ["n"], ["c"]))[0] == b"c"
    path.close()


async def test_a_frozen_redis_times_out_and_later_calls_recover(server):
    path = pipelined.for_client(Redis.from_url(server.url), timeout=0.3)
    await path.run(SHA, ECHO, ["n"], ["a"])
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        # The path's own timeout must end the calls: the outer one, far longer,
        # only turns a hang into a failure. How fast the guard answers 503 is
        # the contract's promise, asserted where the guard is tested.
        async with asyncio.timeout(30):
            results = await asyncio.gather(
                *(path.run(SHA, ECHO, ["n"], [f"f{i}"]) for i in range(5)), return_exceptions=True
            )
        assert all(isinstance(r, RedisTimeoutError | RedisConnectionError) for r in results)
        assert all(is_infrastructure_failure(r) for r in results)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert (await path.run(SHA, ECHO, ["n"], ["after"]))[0] == b"after"
    path.close()


def test_tls_and_clusters_keep_to_redis_py():
    assert pipelined.for_client(Redis.from_url("rediss://127.0.0.1:6380/0"), 1.0) is None
    unix = pipelined.for_client(Redis.from_url("unix:///tmp/redis.sock?db=2"), 1.0)
    assert unix is not None and unix.params["path"] == "/tmp/redis.sock"
    assert unix.params["db"] == 2


def test_it_works_on_uvloop_as_served(server):
    """``serve`` runs on uvloop, which calls ``connection_made`` on its own schedule."""
    import uvloop

    async def run() -> list:
        path = pipelined.for_client(Redis.from_url(server.url), timeout=2.0)
        try:
            return await asyncio.gather(*(path.run(SHA, ECHO, ["u"], [f"u{i}"]) for i in range(50)))
        finally:
            path.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        replies = runner.run(run())
    assert [r[0] for r in replies] == [f"u{i}".encode() for i in range(50)]


async def test_the_app_checks_sessions_over_the_pipelined_path(make_app, monkeypatch):
    """The service's own Redis client records metrics: it must not push the guard off this path."""
    from quart_tokengate.service import get_gate
    from quart_tokengate.service.store.pipelined import PipelinedScripts
    from tests.conftest import me, register_and_login

    app = await make_app(near_cache=False)  # their heartbeats run scripts on this path too
    path = get_gate(app).manager.store.pipelined
    assert isinstance(path, PipelinedScripts)
    client = app.test_client()
    pair = await register_and_login(client)
    sent: list[bytes] = []
    run = path.run

    async def counted(sha, source, keys, args):
        sent.append(sha)
        return await run(sha, source, keys, args)

    monkeypatch.setattr(path, "run", counted)
    assert await me(client, pair) == 200
    assert len(sent) == 1
