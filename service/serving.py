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
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvloop

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
