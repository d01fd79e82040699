"""The HTTP edge: what is refused before Quart sees a request.

Quart (through werkzeug) binds its URL map to the ``Host`` header, and a host
werkzeug cannot IDNA-encode (an empty label as in ``a..b``, a label longer
than 63 characters) raises before any error handler runs: the server answers
a plain-text ``500`` and logs a traceback. :class:`RejectMalformedRequests`
checks the ``Host`` header first and answers the contract's ``400`` JSON for
anything that is not a host name, an IPv4 address or a bracketed IPv6
literal with an optional port. It also stands behind the app: an exception
that escapes Quart before a response started becomes a JSON ``500``.

Every response that passes it carries ``X-Content-Type-Options: nosniff``
(no browser guesses a JSON error into a script or a page), and every HTML
one ``X-Frame-Options: DENY`` too, where the page did not say otherwise: no
page of the service may be framed (clickjacking).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("tokengate")

# Loose ASGI types: the server's and Quart's own typed dicts all fit.
Scope = Any
Message = Any
Receive = Any
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Any], Awaitable[None]]

# RFC 1123 labels (underscores allowed, as real internal names use them),
# at most 63 characters each and 253 in all, an optional trailing dot.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_PORT = re.compile(r"^[0-9]{0,5}$")

# On every response of the service, the app's and the server's own.
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"),)
FRAME_HEADERS = ((b"x-frame-options", b"DENY"),)


def valid_host(raw: bytes) -> bool:
    """Whether ``raw`` is a usable ``Host`` header value (empty counts: HTTP/1.0 may omit it)."""
    try:
        host = raw.decode("ascii")
    except UnicodeDecodeError:
        return False
    if not host:
        return True
    if host.startswith("["):
        literal, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return False
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
        has_port, port = bool(rest), rest[1:]
    else:
        name, has_colon, port = host.partition(":")
        if not _NAME.match(name):
            return False
        has_port = bool(has_colon)
    return not has_port or (bool(_PORT.match(port)) and int(port or 0) <= 65535)


class RejectMalformedRequests:
    """ASGI middleware: ``400`` JSON for a malformed ``Host``, JSON ``500`` as a last resort."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [value for name, value in scope.get("headers", ()) if name.lower() == b"host"]
        if len(hosts) > 1 or (hosts and not valid_host(hosts[0])):
            await json_error(send, 400, "invalid_request", "The Host header is malformed.")
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = _with_security_headers(message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            log.error("request failed before a response: %s", type(exc).__name__, exc_info=exc)
            await json_error(send, 500, "server_error", "Internal error.")


def _with_security_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """``headers`` with nosniff, and frame protection for HTML, unless already there."""
    out = list(headers)
    names = {bytes(name).lower() for name, _ in out}
    if b"x-content-type-options" not in names:
        out.extend(SECURITY_HEADERS)
    html = any(
        bytes(name).lower() == b"content-type" and bytes(value).lower().startswith(b"text/html")
        for name, value in out
    )
    if html and b"x-frame-options" not in names:
        out.extend(FRAME_HEADERS)
    return out


async def json_error(
    send: Send,
    status: int,
    error: str,
    description: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send the contract's JSON error as a whole ASGI response."""
    body = json.dumps({"error": error, "error_description": description}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
