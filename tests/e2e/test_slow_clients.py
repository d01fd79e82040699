"""Slow clients against the real ``tokengate serve``, over raw sockets.

A connection may take ``TOKENGATE_HEADER_TIMEOUT`` to send its headers and
``TOKENGATE_BODY_TIMEOUT`` to send its body, then it is answered
``408 request_timeout`` and closed; past ``TOKENGATE_MAX_CONNECTIONS`` the
connections slowest to send a request make room for new ones. The service
runs with a small open-file limit, as on many machines, so that held
connections would exhaust it if nothing closed them.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import ServiceProcess

SLOW = 1000
HALF_LINE = b"GET /auth/m"
SLOW_BODY = (
    b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    b"Content-Length: 64\r\n\r\n{"
)


def connect(service: ServiceProcess, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.sendall(first)
    return sock


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes, waiting at most ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def json_error(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body), head.lower()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_a_thousand_slow_connections_do_not_keep_a_prompt_client_out(service_factory, sockets):
    # 768 descriptors: today's server would run out after ~750 held connections
    # and stop accepting; the limit keeps it well inside them.
    service = service_factory(file_limit=768, max_connections=300)
    for n in range(SLOW):
        sockets.append(connect(service, HALF_LINE if n % 2 else SLOW_BODY))

    started = time.perf_counter()
    r = httpx.get(service.base_url + "/healthz", timeout=5)
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text
    assert elapsed < 1.0, elapsed

    # The oldest slow connections made room, each told so in the contract's
    # shape; none had anything else.
    # epoll, not select(): a test process may hold descriptors past select()'s 1024.
    with selectors.DefaultSelector() as waiting:
        for sock in sockets:
            waiting.register(sock, selectors.EVENT_READ)
        readable = [key.fileobj for key, _ in waiting.select(5)]
    answers = [read_answer(sock, 5) for sock in readable]  # type: ignore[arg-type]
    refused = [a for a in answers if a]
    assert len(refused) >= SLOW - 300 - 50, len(refused)
    for answer in refused:
        status, body, head = json_error(answer)
        assert (status, body["error"]) == (503, "server_busy"), answer
        assert b"connection: close" in head and b"x-content-type-options: nosniff" in head
    log = service.log.read_text()
    assert "accept failed" not in log and "Traceback" not in log, log[-3000:]


def test_headers_sent_too_slowly_are_cut_after_the_header_timeout(service_factory, sockets):
    service = service_factory(header_timeout=1)
    sock = connect(service, HALF_LINE)
    sockets.append(sock)
    status, body, head = json_error(read_answer(sock, 10))
    assert (status, body["error"]) == (408, "request_timeout")
    assert b"connection: close" in head
    # A connection that never sent a byte is closed without an answer.
    idle = connect(service, b"")
    sockets.append(idle)
    assert read_answer(idle, 10) == b""


def test_a_body_sent_a_byte_at_a_time_is_cut_after_the_body_timeout(service_factory, sockets):
    service = service_factory(body_timeout=2)
    sock = connect(service, SLOW_BODY)
    sockets.append(sock)
    sent = 1
    # One byte every half second: the whole body would take 32 s.
    with selectors.DefaultSelector() as answer:
        answer.register(sock, selectors.EVENT_READ)
        while not answer.select(0.5):
            sock.sendall(b" ")
            sent += 1
            assert sent < 20, "the body was never cut"
    status, body, head = json_error(read_answer(sock, 10))
    assert (status, body["error"]) == (408, "request_timeout")
    assert b"connection: close" in head and b"application/json" in head
    # The service is as prompt as ever.
    assert httpx.get(service.base_url + "/healthz", timeout=5).status_code == 200


def test_a_prompt_keep_alive_client_is_not_cut(service_factory):
    service = service_factory(header_timeout=1, body_timeout=1)
    with httpx.Client(base_url=service.base_url, timeout=5) as client:
        for _ in range(5):
            r = client.post("/auth/login", json={"username": "nobody", "password": "whatever1"})
            assert r.status_code == 401, r.text
