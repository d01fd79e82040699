"""Cookie mode, and what the guard learns about each request.

Everything about cookies is here: reading a token from the request (header or
cookie, for the access and the refresh token alike), the double-submit CSRF
check that a token read from a cookie requires, setting the three cookies of
a login and clearing them, and the typed per-request state (``RequestAuth``)
that the guard, the routes and the ``after_request`` hook share.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quart import Response, g, request

from .errors import CsrfFailed, InvalidToken, MissingToken
from .settings import Settings

if TYPE_CHECKING:
    from .identity import Identity
    from .tokens import TokenPair

ACCESS_COOKIE, REFRESH_COOKIE, CSRF_COOKIE = "access_token", "refresh_token", "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
# The attribute of ``g`` that holds the request's ``RequestAuth``.
STATE_ATTR = "tokengate_request"


@dataclass(slots=True)
class RequestAuth:
    """What tokengate learned about the current request (one per request)."""

    # Who made it, once the guard accepted its access token.
    identity: Identity | None = None
    # The token came in a cookie (so the response may renew or clear cookies).
    via_cookie: bool = False
    # The session is over: the response clears the browser's cookies.
    clear_cookies: bool = False
    # The guard has run for this request (it may have let an anonymous one through).
    checked: bool = False
    # When the request started (``time.perf_counter``), for the access log and metrics.
    started: float = 0.0


def request_auth() -> RequestAuth:
    """The current request's ``RequestAuth`` (the ``before_request`` hook makes it)."""
    state: RequestAuth | None = g.get(STATE_ATTR)
    if state is None:
        # A view run without the hook (a host's earlier hook answered first).
        state = RequestAuth()
        setattr(g, STATE_ATTR, state)
    return state


# -- reading tokens ---------------------------------------------------------------
def check_csrf() -> None:
    """Double-submit check for an unsafe request authenticated by cookie."""
    if request.method not in UNSAFE_METHODS:
        return
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), header.encode()):
        raise CsrfFailed()


def _from_cookie(name: str) -> str | None:
    """The token in cookie ``name``; a token read from a cookie must pass the CSRF check."""
    token = request.cookies.get(name)
    if not token:
        return None
    request_auth().via_cookie = True
    check_csrf()
    return token


def read_access_token(settings: Settings) -> str:
    """The access token of this request, where ``TOKENGATE_TOKEN_LOCATION`` says to look."""
    header = request.headers.get("Authorization")
    if settings.use_headers and header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("The Authorization header must be 'Bearer <token>'.")
        return token.strip()
    cookie = _from_cookie(ACCESS_COOKIE) if settings.use_cookies else None
    if cookie is None:
        raise MissingToken()
    return cookie


def read_refresh_token(settings: Settings, sent: str | None) -> str:
    """The refresh token: the one ``sent`` in the body, else (cookie mode) the cookie's."""
    token = sent
    if token is None and settings.use_cookies:
        token = _from_cookie(REFRESH_COOKIE)
    if not token:
        raise MissingToken("No refresh token was sent.")
    return token


# -- setting and clearing cookies --------------------------------------------------
def _flags(settings: Settings) -> dict[str, Any]:
    host = request.host
    host = host[: host.index("]") + 1] if host.startswith("[") else host.split(":")[0]
    if settings.cookie_secure == "auto":
        secure = not (request.scheme == "http" and host in LOCAL_HOSTS)
    else:
        secure = settings.cookie_secure == "true"
    flags: dict[str, Any] = {
        "secure": secure, "samesite": settings.cookie_samesite, "max_age": settings.refresh_ttl,
    }  # fmt: skip
    if settings.cookie_domain:
        flags["domain"] = settings.cookie_domain
    return flags


def set_access_cookie(response: Response, settings: Settings, token: str) -> None:
    response.set_cookie(ACCESS_COOKIE, token, httponly=True, path="/", **_flags(settings))


def set_login_cookies(
    response: Response, settings: Settings, pair: TokenPair, refresh_path: str
) -> None:
    """Set the three cookies of cookie mode for a fresh token pair."""
    flags = _flags(settings)
    response.set_cookie(ACCESS_COOKIE, pair.access_token, httponly=True, path="/", **flags)
    response.set_cookie(
        REFRESH_COOKIE, pair.refresh_token, httponly=True, path=refresh_path, **flags
    )
    response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), httponly=False, path="/", **flags)


def set_device_cookie(
    response: Response, settings: Settings, name: str, token: str, path: str
) -> None:
    """Keep a browser's device token (``throttle.py``) in an HttpOnly cookie sent to ``path``
    (its login route) alone, living the token's lifetime; logouts leave it."""
    flags = _flags(settings)
    flags["max_age"] = settings.device_token_ttl
    response.set_cookie(name, token, httponly=True, path=path, **flags)


def clear_cookies(response: Response, settings: Settings, refresh_path: str) -> None:
    flags = _flags(settings)
    flags.pop("max_age")
    response.delete_cookie(ACCESS_COOKIE, path="/", httponly=True, **flags)
    response.delete_cookie(REFRESH_COOKIE, path=refresh_path, httponly=True, **flags)
    response.delete_cookie(CSRF_COOKIE, path="/", **flags)
