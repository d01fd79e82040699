"""Malformed requests at the HTTP layer, sent over raw sockets to the real service process."""

from __future__ import annotations

import json
import socket

import pytest

from tests.support import ServiceProcess, start_service

BAD_HOSTS = [
    b"a..b", b"a" * 64, b"a" * 64 + b">", b"a" * 64 + b".example", b".", b"..", b".a",
    b"a>b", b"ex ample", b"[::1", b"[zz]", b"a:b:c", b"a:99999", b"\xc3\xa9.example",
    b"a" * 300, b"x/y", b"x@y",
]  # fmt: skip
GOOD_HOSTS = [b"localhost", b"localhost:8000", b"127.0.0.1:80", b"[::1]:8000", b"a_b.example."]
# Headers the server or the framework might choke on, each on two routes.
ODD_HEADERS = [
    b"Cookie: \xff\xfe=\x00x", b"Cookie: " + b"a=" * 3000, b"Authorization: Bearer \xff\xfe",
    b"Authorization: \xff", b"Content-Type: application/json; charset=\xff",
    b"Content-Type: application/json; charset=ebcdic", b"Accept: */*;q=nan",
    b"Accept-Encoding: \xff", b"X-Forwarded-For: \xff, ::::", b"If-Modified-Since: \xff",
    b"Range: bytes=9-1", b"Transfer-Encoding: chunked, gzip",
    b"Content-Length: 5\r\nContent-Length: 6",
    b"Host: a\r\nHost: b", b"User-Agent: " + b"\xff" * 2000,
]  # fmt: skip


def raw_request(
    service: ServiceProcess, head: bytes, body: bytes = b""
) -> tuple[int, bytes, bytes]:
    """Send one request as bytes; return the status, the headers block and the body."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(head + b"Connection: close\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    headers, _, payload = data.partition(b"\r\n\r\n")
    return int(headers.split(b" ")[1]), headers, payload


def get(host: bytes) -> bytes:
    return b"GET /auth/me HTTP/1.1\r\nHost: " + host + b"\r\n"


@pytest.fixture(scope="module")
def edge_service(module_redis, tmp_path_factory) -> ServiceProcess:
    service = start_service(tmp_path_factory.mktemp("edge"), module_redis.url)
    yield service
    service.stop()


@pytest.mark.parametrize("host", BAD_HOSTS, ids=lambda h: h[:20].decode("latin-1"))
def test_a_malformed_host_is_a_400_json_error(edge_service, host):
    status, headers, body = raw_request(edge_service, get(host))
    assert status == 400, (status, body)
    assert b"application/json" in headers.lower()
    assert json.loads(body)["error"] == "invalid_request"


@pytest.mark.parametrize("host", GOOD_HOSTS, ids=lambda h: h.decode())
def test_well_formed_hosts_reach_the_app(edge_service, host):
    status, _, body = raw_request(edge_service, get(host))
    assert status == 401 and json.loads(body)["error"] == "missing_token"


@pytest.mark.parametrize("header", ODD_HEADERS, ids=lambda h: h[:24].decode("latin-1"))
@pytest.mark.parametrize("route", [b"GET /auth/me", b"POST /auth/login"])
def test_odd_headers_get_a_4xx_never_a_5xx(edge_service, header, route):
    body = b'{"username": "nobody", "password": "whatever1"}'
    head = route + b" HTTP/1.1\r\nHost: localhost\r\n" + header + b"\r\n"
    head += b"Content-Length: %d\r\n" % len(body)
    status, headers, payload = raw_request(edge_service, head, body)
    assert 400 <= status < 500, (status, payload)
    # Refused by the HTTP parser itself or by the app: the contract's JSON either way.
    assert b"application/json" in headers.lower(), (status, headers, payload)
    assert json.loads(payload)["error"], payload


def test_nothing_above_left_a_traceback_in_the_log(edge_service):
    for host in BAD_HOSTS:
        raw_request(edge_service, get(host))
    log = edge_service.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


# -- headers and the framework's own text -------------------------------------------

EVIL = b"evil.example"
# Every kind of answer: the app's JSON, its pages, its errors, the edge's and the
# HTTP parser's own refusals.
EVERY_KIND = [
    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n",
    b"GET /auth/me HTTP/1.1\r\nHost: localhost\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\n",
    b"GET /account HTTP/1.1\r\nHost: localhost\r\n",
    b"GET /docs HTTP/1.1\r\nHost: localhost\r\n",
    b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n",
    b"GET /no/such/page HTTP/1.1\r\nHost: localhost\r\n",
    b"DELETE /auth/me HTTP/1.1\r\nHost: localhost\r\n",
    b"GET /auth/me HTTP/1.1\r\nHost: a..b\r\n",
    b"GARBAGE\r\n",
]
HTML_PAGES = [b"/", b"/account", b"/docs"]
# Paths werkzeug would "correct" with a redirect built from the Host header.
REDIRECTABLE = [
    b"/auth//me", b"//auth/me", b"/auth/me/", b"/docs/", b"/account/", b"//docs",
    b"/account//static/account.js", b"/auth//login", b"/.well-known//jwks.json",
]  # fmt: skip


@pytest.mark.parametrize("head", EVERY_KIND, ids=lambda h: h.split(b"\r\n")[0].decode())
def test_every_answer_is_nosniff_and_does_not_name_the_server(edge_service, head):
    status, headers, _ = raw_request(edge_service, head)
    lines = headers.lower().split(b"\r\n")
    assert b"x-content-type-options: nosniff" in lines, (status, headers)
    assert not any(line.startswith(b"server:") for line in lines), headers


@pytest.mark.parametrize("path", HTML_PAGES, ids=lambda p: p.decode())
def test_no_html_page_may_be_framed(edge_service, path):
    status, headers, _ = raw_request(edge_service, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n")
    lines = headers.lower().split(b"\r\n")
    assert status == 200 and b"content-type: text/html; charset=utf-8" in lines
    assert b"x-frame-options: deny" in lines, headers
    csp = [line for line in lines if line.startswith(b"content-security-policy:")]
    assert csp and b"frame-ancestors 'none'" in csp[0], headers


@pytest.mark.parametrize("path", REDIRECTABLE, ids=lambda p: p.decode())
@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_the_host_header_is_never_reflected_into_a_redirect(edge_service, path, method):
    head = method + b" " + path + b" HTTP/1.1\r\nHost: " + EVIL + b"\r\nContent-Length: 0\r\n"
    status, headers, payload = raw_request(edge_service, head)
    assert not 300 <= status < 400, (status, headers)
    assert EVIL not in headers.lower() and EVIL not in payload, (headers, payload)
    if status >= 400:
        assert b"application/json" in headers.lower()


def test_404_and_405_are_the_contracts_json_without_the_frameworks_text(edge_service):
    status, _, body = raw_request(edge_service, b"GET /no/such/page HTTP/1.1\r\nHost: x\r\n")
    answer = json.loads(body)
    assert status == 404 and answer["error"] == "not_found", answer
    assert "URL" not in answer["error_description"], answer
    assert "manually" not in answer["error_description"], answer
    status, headers, body = raw_request(edge_service, b"DELETE /auth/me HTTP/1.1\r\nHost: x\r\n")
    answer = json.loads(body)
    assert status == 405 and answer["error"] == "method_not_allowed", answer
    assert "requested URL" not in answer["error_description"], answer
    assert b"allow: " in headers.lower()


def test_what_the_http_parser_refuses_is_the_contracts_json(edge_service):
    status, headers, body = raw_request(edge_service, b"GARBAGE\r\n")
    assert status == 400 and b"application/json" in headers.lower()
    assert json.loads(body)["error"] == "invalid_request"
