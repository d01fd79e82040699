"""The event loop ``serve`` runs: uvloop, accepting new connections as asyncio does.

libuv (since 1.45, bundled by uvloop 0.18 and later) accepts **one**
connection per turn of the loop. Under load a turn takes tens of
milliseconds, so a burst of new connections waits in the kernel's accept
queue: measured here, 200 connections arriving at a busy one-worker server
took 1.5 s to be accepted, one per turn (``ss -lt`` shows the queue draining),
and the requests they carried set a p99 of 1.0-1.5 s where asyncio's loop,
which accepts up to a backlog's worth per turn, had ~100 ms.

:func:`new_event_loop` makes a uvloop loop whose ``create_server`` (the
plain TCP case uvicorn uses) accepts up to :data:`ACCEPT_BATCH` connections
each time the listening socket is readable, and hands each one to uvloop's
own transport (``connect_accepted_socket``). Everything after the accept is
uvloop's, unchanged. TLS, Unix sockets and any other case go to uvloop's
own ``create_server``.

:class:`BoundedHttpProtocol` is uvicorn's httptools protocol with the bounds
uvicorn lacks (its keep-alive timer stops at a request's first byte, and its
``limit_concurrency`` counts a stalled connection without ever closing it):

- a request's headers must arrive within ``TOKENGATE_HEADER_TIMEOUT`` of its
  first byte, and its body within ``TOKENGATE_BODY_TIMEOUT`` of its headers,
  or the connection is answered ``408 request_timeout`` and closed;
- at most ``TOKENGATE_MAX_CONNECTIONS`` connections are open per worker. A new
  one past that closes the connection that has been *receiving* a request
  the longest (a stalled or idle one: no request of it is being served; one
  caught mid-request is answered ``503 server_busy``), so that slow clients
  can never keep a prompt one out. When every connection has a request being
  served, the new one is answered ``503 server_busy`` with
  ``Connection: close`` instead of running the app.

Deadlines are kept in two insertion-ordered dicts (headers, bodies), one
timeout each, so that a sweep every :data:`SWEEP_INTERVAL` seconds reads only
the expired entries at their heads: a request costs a few dict updates, not a
timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvloop
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .edge import SECURITY_HEADERS, json_error

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from .settings import Settings

log = logging.getLogger("tokengate")

# Connections accepted per readable event at most (asyncio takes its backlog,
# 100 by default). More than one burst's worth waits for the next turn, so
# a flood cannot hold the loop in ``accept`` for long.
ACCEPT_BATCH = 128
# Out of file descriptors: stop accepting for this long, as asyncio does.
PAUSE_ON_EMFILE = 1.0
# What uvicorn passes to ``create_server`` that this server understands.
HANDLED = frozenset({"backlog", "ssl"})


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop that accepts bursts of connections at once (uvicorn's ``--loop``)."""
    return Loop()


class Loop(uvloop.Loop):
    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> asyncio.AbstractServer:
        sock: socket.socket | None = kwargs.pop("sock", None)
        plain = kwargs.get("ssl") is None and set(kwargs) <= HANDLED
        if sock is None and (port is None or not _ip_literal(host)):
            plain = False  # a name may stand for several addresses: uvloop binds them all
        if sock is not None and sock.family not in (socket.AF_INET, socket.AF_INET6):
            plain = False
        if not plain:
            parent: Any = super()
            server: asyncio.AbstractServer = await parent.create_server(
                protocol_factory, host, port, sock=sock, **kwargs
            )
            return server
        backlog = int(kwargs.get("backlog") or 100)
        if sock is None:
            assert host is not None and port is not None
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            # IPv6 only on an IPv6 address, as asyncio's create_server binds it.
            sock = socket.create_server((host, port), family=family, backlog=backlog)
        else:
            sock.listen(backlog)
        return AcceptingServer(self, sock, protocol_factory)


def _ip_literal(host: object) -> bool:
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class AcceptingServer(asyncio.AbstractServer):
    """A listening socket whose connections are accepted in batches, served by uvloop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = protocol_factory
        self._serving = True
        self._closed = asyncio.Event()
        self._handshakes: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed (%s); pausing for %.0f s", exc, PAUSE_ON_EMFILE)
                    self._loop.remove_reader(self._sock.fileno())
                    self._loop.call_later(PAUSE_ON_EMFILE, self._resume)
                    return
                raise
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._serve(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _resume(self) -> None:
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception:
            conn.close()

    # -- asyncio.AbstractServer --------------------------------------------------
    def close(self) -> None:
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._closed.set()

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        await self._closed.wait()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,) if self._serving else ()


# -- bounds on what a connection may hold ------------------------------------------

# How often the deadlines are swept: a stalled request is cut within this much
# past its timeout.
SWEEP_INTERVAL = 0.25
# At most one "connection limit reached" line per worker this often.
LIMIT_LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """A worker's bounds on receiving requests and on open connections."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.header_timeout, settings.body_timeout, settings.max_connections)


_limits = ConnectionLimits()


def use_limits(limits: ConnectionLimits) -> None:
    """Set this worker's bounds (``serve``'s app factory calls it before any connection)."""
    global _limits  # one value per worker process, set once at start
    _limits = limits


class Receiving:
    """One worker's connections that are receiving a request, oldest first, per phase."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: ConnectionLimits) -> None:
        self.loop = loop
        self.limits = limits
        self.headers: dict[BoundedHttpProtocol, float] = {}
        self.bodies: dict[BoundedHttpProtocol, float] = {}
        self.sweep_handle: asyncio.TimerHandle | None = None
        self.logged_at = -LIMIT_LOG_INTERVAL

    def enter(self, conn: BoundedHttpProtocol, phase: dict[BoundedHttpProtocol, float]) -> None:
        """``conn`` starts waiting in ``phase`` now (moved to the end if it already was)."""
        if conn.phase is not None:
            del conn.phase[conn]
        phase[conn] = self.loop.time()
        conn.phase = phase
        if self.sweep_handle is None:
            self.sweep_handle = self.loop.call_later(SWEEP_INTERVAL, self.sweep)

    def leave(self, conn: BoundedHttpProtocol) -> None:
        if conn.phase is not None:
            del conn.phase[conn]
            conn.phase = None

    def sweep(self) -> None:
        self.sweep_handle = None
        now = self.loop.time()
        for phase, timeout, expire in (
            (self.headers, self.limits.header_timeout, BoundedHttpProtocol.headers_too_slow),
            (self.bodies, self.limits.body_timeout, BoundedHttpProtocol.body_too_slow),
        ):
            expired = []
            for conn, started in phase.items():
                if now - started < timeout:
                    break  # ordered by start: the rest are younger
                expired.append(conn)
            for conn in expired:
                expire(conn)
        if self.headers or self.bodies:
            self.sweep_handle = self.loop.call_later(SWEEP_INTERVAL, self.sweep)

    def oldest(self, besides: BoundedHttpProtocol) -> BoundedHttpProtocol | None:
        """The connection that has been receiving the longest, other than ``besides``."""
        found: BoundedHttpProtocol | None = None
        since = float("inf")
        for phase in (self.headers, self.bodies):
            for conn, started in phase.items():
                if conn is not besides:
                    if started < since:
                        found, since = conn, started
                    break
        return found

    def over_limit(self, open_connections: int) -> None:
        if self.loop.time() - self.logged_at >= LIMIT_LOG_INTERVAL:
            self.logged_at = self.loop.time()
            log.warning(
                "connection limit reached (%d open, TOKENGATE_MAX_CONNECTIONS=%d): closing the "
                "connections slowest to send a request",
                open_connections,
                self.limits.max_connections,
            )


_receiving: weakref.WeakKeyDictionary[ServerState, Receiving] = weakref.WeakKeyDictionary()


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with deadlines on receiving and a connection limit.

    ``serve`` runs it (uvicorn's ``http`` setting); see the module docstring.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        receiving = _receiving.get(server_state)
        if receiving is None:
            receiving = _receiving[server_state] = Receiving(self.loop, _limits)
        self.receiving = receiving
        self.phase: dict[BoundedHttpProtocol, float] | None = None
        # Whether a byte of the current request has arrived (else: idle).
        self.begun = False

    # -- the phases of a request -------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        receiving = self.receiving
        receiving.enter(self, receiving.headers)
        if len(self.connections) > receiving.limits.max_connections:
            receiving.over_limit(len(self.connections))
            victim = receiving.oldest(besides=self)
            if victim is not None:
                victim.evict()
            else:
                # Every other connection has a request being served: this one's
                # request is answered 503 instead of running the app.
                self.app = server_busy

    def connection_lost(self, exc: Exception | None) -> None:
        self.receiving.leave(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.begun = True
        if self.phase is None:  # a pipelined request: its own time starts now
            self.receiving.enter(self, self.receiving.headers)

    def on_headers_complete(self) -> None:
        self.receiving.enter(self, self.receiving.bodies)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.begun = False
        self.receiving.leave(self)

    def on_response_complete(self) -> None:
        if self.pipeline and self.phase is self.receiving.bodies:
            # The next request's body could not arrive while reading was paused
            # for this response: its time starts now.
            self.receiving.enter(self, self.receiving.bodies)
        super().on_response_complete()
        if (
            self.phase is None
            and not self.begun
            and self.cycle.response_complete
            and not self.transport.is_closing()
        ):
            # Idle, waiting for the next request: the first to go at the limit.
            self.receiving.enter(self, self.receiving.headers)

    # -- what the bounds do --------------------------------------------------------
    def headers_too_slow(self) -> None:
        if self.begun:
            self.answer(408, "request_timeout", "The request's headers took too long to arrive.")
        else:
            self.close()

    def body_too_slow(self) -> None:
        self.stop_cycle(408, "request_timeout", "The request's body took too long to arrive.")

    def evict(self) -> None:
        """Close this connection to make room for a new one."""
        if self.phase is self.receiving.bodies:
            self.stop_cycle(503, "server_busy", "The server has too many open connections.")
        elif self.begun:
            self.answer(503, "server_busy", "The server has too many open connections.")
        else:
            self.close()

    def stop_cycle(self, status: int, error: str, description: str) -> None:
        """End a request whose app is running: the answer if none started yet, then close."""
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            self.close()
            return
        # The app's next receive() sees a disconnect, and anything it sends is dropped.
        cycle.disconnected = True
        cycle.message_event.set()
        self.answer(status, error, description)

    def close(self) -> None:
        self.receiving.leave(self)
        if not self.transport.is_closing():
            self.transport.close()

    def answer(self, status: int, error: str, description: str) -> None:
        """Write the contract's JSON error straight to the socket, then close it."""
        self.receiving.leave(self)
        if self.transport.is_closing():
            return
        body = json.dumps({"error": error, "error_description": description}).encode()
        headers = [
            *self.server_state.default_headers,
            *SECURITY_HEADERS,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        if status == 503:
            headers.append((b"retry-after", b"1"))
        lines = [STATUS_LINE[status], *(name + b": " + value + b"\r\n" for name, value in headers)]
        self.transport.write(b"".join([*lines, b"\r\n", body]))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # What the HTTP parser refuses, in the contract's shape too.
        self.answer(400, "invalid_request", "The request is not valid HTTP/1.1.")


async def server_busy(scope: Any, receive: Any, send: Any) -> None:
    """The app a connection past the limit runs instead of the service: ``503``, then close."""
    await json_error(
        send,
        503,
        "server_busy",
        "The server has too many open connections; try again shortly.",
        [(b"retry-after", b"1"), (b"connection", b"close")],
    )
