"""The guard's Redis call, on a lean path: one pipelined connection, one write, one read.

redis-py spends several times what Redis itself does on each call: a pool
checkout and release, a retry wrapper, ``asyncio.wait_for`` around the send
(a new task per call), a timeout context around the read, and its parser
layers. The guard makes exactly one call per request (``EVALSHA`` of the
check script), so that call goes over a connection of our own instead:
the commands of one turn of the event loop leave in one write, replies are
read in order by hiredis's C parser, and each caller waits for its own
future under ``asyncio.timeout``.

It speaks to one Redis (``redis://`` or ``unix://``, with AUTH and SELECT);
for anything else (TLS, a cluster) :func:`for_client` returns ``None`` and the
caller keeps to redis-py. Failures are redis-py's exceptions, so the guard
turns them into ``503 auth_unavailable`` as before; a timed-out call leaves
its future in line, so later replies still reach the right callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def _pack(*parts: Any) -> bytes:
    """A command in RESP (hiredis's C packer: str, bytes, int and float as ``repr``)."""
    packed: bytes = hiredis.pack_command(parts)
    return packed


P = TypeVar("P", bound=asyncio.Protocol)


async def open_connection(params: dict[str, Any], factory: Callable[[], P]) -> P:
    """A connection to the Redis of ``params`` (``path``, or ``host`` and ``port``)."""
    loop = asyncio.get_running_loop()
    if "path" in params:
        transport, protocol = await loop.create_unix_connection(factory, params["path"])
    else:
        transport, protocol = await loop.create_connection(factory, params["host"], params["port"])
    # uvloop may call connection_made only after this returns.
    protocol.transport = transport  # type: ignore[attr-defined]
    return protocol


def auth_command(params: dict[str, Any]) -> bytes | None:
    """``AUTH`` for ``params``' user and password, or ``None`` without a password."""
    if not params.get("password"):
        return None
    username, password = params.get("username"), params["password"]
    return _pack("AUTH", *((username, password) if username else (password,)))


# A call that keeps waiting on a live connection fails after this many timeouts.
STALL_LIMIT = 4


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.pending: deque[asyncio.Future[Any]] = deque()
        # When each pending command was sent (``time.monotonic``), in the same order.
        self.sent_at: deque[float] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        # Commands sent in one turn of the loop leave in one write (one syscall).
        self.outgoing: list[bytes] = []
        # Commands written and not yet answered, and since when the connection
        # has owed an answer without giving any: the last reply, or the write
        # that found nothing owed. A connection that owes and stays silent for
        # the whole timeout is stalled; one whose commands still wait in
        # ``outgoing`` (a busy loop has not flushed them yet) owes nothing.
        self.unanswered = 0
        self.dropped_stalled = False
        self.owing_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.owing_since = time.monotonic()
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            self.unanswered -= 1
            self.sent_at.popleft()
            future = self.pending.popleft()
            if not future.done():  # a caller that timed out is gone
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.sent_at.clear()
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                # Dropped for stalling: its callers have waited their timeout
                # already and are not sent again (a connection error would be).
                error = (
                    RedisTimeoutError("Timeout reading from Redis.")
                    if self.dropped_stalled
                    else RedisConnectionError("Connection to Redis lost.")
                )
                future.set_exception(error)

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append(future)
        self.sent_at.append(time.monotonic())
        if not self.outgoing:
            loop.call_soon(self._flush)
        self.outgoing.append(payload)
        return future

    def stalled(self, timeout: float) -> bool:
        """Owed an answer, and silent for ``timeout`` seconds."""
        return self.unanswered > 0 and time.monotonic() - self.owing_since >= timeout

    def _flush(self) -> None:
        commands, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.lost:
            if self.unanswered == 0:
                self.owing_since = time.monotonic()
            self.unanswered += len(commands)
            self.transport.write(b"".join(commands))


# Told each call's round trip in seconds, and the error it failed with (else None).
Observer = Callable[[float, BaseException | None], None]


def _observed(observe: Observer, started: float, future: asyncio.Future[Any]) -> None:
    failed = None if future.cancelled() else future.exception()
    observe(time.perf_counter() - started, failed)


class PipelinedScripts:
    """``EVALSHA`` over one pipelined connection, ``EVAL`` when Redis lacks the script."""

    def __init__(
        self, params: dict[str, Any], timeout: float, observe: Observer | None = None
    ) -> None:
        self.params = params
        self.timeout = timeout
        self.observe = observe
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._watch: asyncio.TimerHandle | None = None

    async def warm(self) -> None:
        """Connect now, at start-up, so that the first burst of requests finds the
        connection open (a connect timed while the loop is busy with that burst
        could fail a healthy Redis). A Redis that cannot be reached now is left
        for the first request, which reports it."""
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
            await self._connection()

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            protocol = self._protocol
            if protocol is not None and not protocol.lost:
                return protocol
            self._protocol = await self._connect()
            return self._protocol

    async def _connect(self) -> _Protocol:
        p = self.params
        try:
            async with asyncio.timeout(self.timeout):
                protocol = await open_connection(p, _Protocol)
                setup: list[asyncio.Future[Any]] = []
                auth = auth_command(p)
                if auth is not None:
                    setup.append(protocol.send(auth))
                if p.get("db"):
                    setup.append(protocol.send(_pack("SELECT", p["db"])))
                for reply in await asyncio.gather(*setup):
                    if isinstance(reply, hiredis.ReplyError):
                        if protocol.transport is not None:
                            protocol.transport.close()
                        raise RedisConnectionError(f"Redis refused the connection: {reply}")
        except TimeoutError:
            raise RedisTimeoutError("Timeout connecting to Redis.") from None
        except OSError as exc:
            raise RedisConnectionError(f"Cannot connect to Redis: {exc}") from exc
        return protocol

    async def _call(self, payload: bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connection()  # bounded by its own timeout
        future = protocol.send(payload)
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(self.timeout, self._watch_calls)
        reply = await future
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            if message.startswith("NOSCRIPT"):
                raise NoScriptError(message)
            raise ResponseError(message)
        return reply

    async def call(self, *command: Any) -> Any:
        """One command other than a script (``CONFIG GET``, say); its reply as hiredis
        gives it, or ``ResponseError`` for an error reply."""
        return await self._call(_pack(*command))

    def send_nowait(
        self, sha: str, keys: Sequence[str], args: Sequence[Any]
    ) -> asyncio.Future[Any] | None:
        """``EVALSHA`` without a coroutine: the future of its raw reply (a
        ``hiredis.ReplyError`` such as ``NOSCRIPT`` is a reply, not an error), or
        ``None`` when no connection is open. The same timeouts hold as for :meth:`run`.

        For a check nobody awaits (``sessions.checking.Checking._check_behind``): a
        task per call would cost more than the call.
        """
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return None
        future = protocol.send(_pack("EVALSHA", sha, len(keys), *keys, *args))
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(self.timeout, self._watch_calls)
        if self.observe is not None:
            future.add_done_callback(partial(_observed, self.observe, time.perf_counter()))
        return future

    def _watch_calls(self) -> None:
        """One timer for all calls in flight (a timer per call cost more than the call).

        A connection that has answered nothing for the whole timeout while it
        owes replies (a frozen server, a lost peer) is dropped: its callers fail
        with a timeout and the next call reconnects. A call still unanswered
        after ``STALL_LIMIT`` timeouts in all fails alone. A connection that
        keeps answering while this process's loop is too busy to read in time
        keeps its callers waiting instead of failing them.
        """
        self._watch = None
        protocol = self._protocol
        if protocol is None or protocol.lost or not protocol.pending:
            return
        now = time.monotonic()
        if protocol.stalled(self.timeout):
            protocol.dropped_stalled = True
            self.close()  # connection_lost fails every pending call
            return
        limit = self.timeout * STALL_LIMIT
        waiting = None
        for future, sent in zip(protocol.pending, protocol.sent_at, strict=True):
            if future.done():
                continue
            if now - sent < limit:
                waiting = sent  # the oldest call still in time
                break
            future.set_exception(RedisTimeoutError("Timeout reading from Redis."))
        if waiting is None:
            return
        quiet_from = protocol.owing_since if protocol.unanswered else now
        due = min(quiet_from + self.timeout, waiting + limit)
        loop = asyncio.get_running_loop()
        self._watch = loop.call_later(max(due - now, 0.001), self._watch_calls)

    async def run(
        self, sha: str, source: str | bytes, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run the script ``sha`` (its text: ``source``); the reply as hiredis gives it."""
        started = time.perf_counter()
        try:
            payload = _pack("EVALSHA", sha, len(keys), *keys, *args)
            try:
                try:
                    reply = await self._call(payload)
                except RedisConnectionError:
                    # As redis-py's one retry: a connection that died with a
                    # restarted server is replaced once; a server that is down
                    # fails the new connection at once.
                    reply = await self._call(payload)
            except NoScriptError:
                # A restarted or flushed Redis: EVAL runs it and caches it again.
                reply = await self._call(_pack("EVAL", source, len(keys), *keys, *args))
        except Exception as exc:
            if self.observe is not None:
                self.observe(time.perf_counter() - started, exc)
            raise
        if self.observe is not None:
            self.observe(time.perf_counter() - started, None)
        return reply

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._protocol is not None and self._protocol.transport is not None:
            with contextlib.suppress(Exception):
                self._protocol.transport.close()
        self._protocol = None


def for_client(
    redis: Redis, timeout: float, observe: Observer | None = None
) -> PipelinedScripts | None:
    """A pipelined path to the same Redis as ``redis``, or ``None`` where it cannot be.

    ``redis`` may be a subclass (the service's ``TimedRedis``): what counts is
    its connection pool's class and parameters.
    """
    if not isinstance(redis, Redis):
        return None
    pool = redis.connection_pool
    kwargs = pool.connection_kwargs
    if pool.connection_class is UnixDomainSocketConnection:
        params: dict[str, Any] = {"path": kwargs["path"]}
    elif pool.connection_class is Connection:
        params = {"host": kwargs.get("host", "localhost"), "port": int(kwargs.get("port", 6379))}
    else:  # TLS and anything else: redis-py's own path
        return None
    params.update(
        db=int(kwargs.get("db") or 0),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
    )
    return PipelinedScripts(params, timeout, observe)
