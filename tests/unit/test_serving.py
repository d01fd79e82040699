"""The loop ``serve`` runs: uvloop that accepts a burst of new connections at once.

Real sockets on 127.0.0.1; the loop is the one ``serve`` hands uvicorn.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

import pytest

from quart_tokengate.service import serving

BURST = 100


class Counting(asyncio.Protocol):
    made: ClassVar[list[asyncio.BaseTransport]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counting.made.append(transport)


def on_serving_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=serving.new_event_loop) as runner:
        runner.run(test())


def connect_burst(port: int, count: int) -> list[socket.socket]:
    """``count`` connections the kernel completes before the loop looks: they wait in line."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def test_a_burst_of_connections_is_accepted_in_a_few_turns_of_the_loop():
    # libuv alone accepts one connection per turn: 100 connections would take
    # 100 turns, each of them tens of milliseconds on a loaded server.
    Counting.made = []

    async def test() -> None:
        server = await asyncio.get_running_loop().create_server(Counting, "127.0.0.1", 0)
        assert isinstance(server, serving.AcceptingServer)
        port = server.sockets[0].getsockname()[1]
        clients = connect_burst(port, BURST)
        try:
            for _ in range(10):
                await asyncio.sleep(0)
            assert len(Counting.made) == BURST
            # The connections are uvloop's own transports, and they work both ways.
            clients[0].sendall(b"ping")
            Counting.made[0].write(b"pong")  # type: ignore[attr-defined]
            await asyncio.sleep(0)
            assert await asyncio.to_thread(clients[0].recv, 4) == b"pong"
        finally:
            for client in clients:
                client.close()
            server.close()
            await server.wait_closed()

    on_serving_loop(test)


def test_a_closed_server_accepts_nothing_more():
    Counting.made = []

    async def test() -> None:
        server = await asyncio.get_running_loop().create_server(Counting, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        assert not server.is_serving() and server.sockets == ()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        assert Counting.made == []

    on_serving_loop(test)


def test_a_socket_handed_over_is_served_the_same_way():
    # uvicorn's workers are handed the socket their parent bound.
    Counting.made = []

    async def test() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        server = await asyncio.get_running_loop().create_server(Counting, sock=listener)
        assert isinstance(server, serving.AcceptingServer)
        clients = connect_burst(listener.getsockname()[1], 20)
        try:
            for _ in range(10):
                await asyncio.sleep(0)
            assert len(Counting.made) == 20
        finally:
            for client in clients:
                client.close()
            server.close()

    on_serving_loop(test)


def test_tls_unix_sockets_and_host_names_stay_with_uvloop():
    async def test() -> None:
        loop = asyncio.get_running_loop()
        named = await loop.create_server(Counting, "localhost", 0)
        assert not isinstance(named, serving.AcceptingServer)
        named.close()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls = await loop.create_server(Counting, "127.0.0.1", 0, ssl=context)
        assert not isinstance(tls, serving.AcceptingServer)
        tls.close()
        unix = socket.socket(socket.AF_UNIX)
        unix.bind("")  # an abstract address
        server = await loop.create_server(Counting, sock=unix)
        assert not isinstance(server, serving.AcceptingServer)
        server.close()

    on_serving_loop(test)


# -- the bounded protocol ------------------------------------------------------------


def test_past_the_limit_with_every_request_being_served_a_new_one_gets_503_server_busy():
    import json

    import uvicorn

    release = asyncio.Event()
    served: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        served.append(scope["path"])
        await release.wait()  # the request is being served as long as the test holds it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def ask(port: int, path: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return sock

    def answer(sock: socket.socket) -> bytes:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data

    async def test() -> None:
        serving.use_limits(serving.ConnectionLimits(max_connections=2))
        config = uvicorn.Config(
            app, port=0, http=serving.BoundedHttpProtocol, lifespan="off", log_level="error"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            busy = [ask(port, "/one"), ask(port, "/two")]
            while len(served) < 2:
                await asyncio.sleep(0.01)
            third = ask(port, "/three")
            refused = await asyncio.to_thread(answer, third)
            head, _, body = refused.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), refused
            assert json.loads(body)["error"] == "server_busy"
            assert b"connection: close" in head.lower() and b"retry-after: 1" in head.lower()
            assert served == ["/one", "/two"]  # the app never saw the third
            release.set()
            for sock in busy:
                first = await asyncio.to_thread(sock.recv, 65536)
                assert first.startswith(b"HTTP/1.1 200 "), first
                sock.close()
            third.close()
        finally:
            serving.use_limits(serving.ConnectionLimits())
            server.should_exit = True
            await task

    on_serving_loop(test)
