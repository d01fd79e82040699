"""The guard: an async ``before_request`` hook, ``login_required`` and ``current_identity``.

``login_required`` only marks a view; the hook, which the extension installs
on the app, does the check before the view runs, so every guarded route in
the app (ours and yours) goes through the same code. The wrapper checks again
only if the hook did not run (a view called some other way).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from quart import Quart, Response, after_this_request, current_app, g, request

from .errors import (
    AuthUnavailable,
    CsrfFailed,
    InvalidToken,
    MissingToken,
    SessionExpired,
    SessionReplaced,
    TokenRevoked,
    is_infrastructure_failure,
)
from .sessions import Identity

if TYPE_CHECKING:
    from .app import TokenGate

P = ParamSpec("P")
R = TypeVar("R")

REQUIRED_ATTR = "__tokengate_login_required__"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ACCESS_COOKIE, REFRESH_COOKIE, CSRF_COOKIE = "access_token", "refresh_token", "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
# Errors after which a browser's cookies are of no further use.
SESSION_OVER = (TokenRevoked, SessionExpired, SessionReplaced, InvalidToken)


def login_required(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Require a valid access token and a live session for ``view``."""

    @wraps(view)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if getattr(g, "tokengate_identity", None) is None:
            await authenticate_request()
        return await view(*args, **kwargs)

    setattr(wrapper, REQUIRED_ATTR, True)
    return wrapper


def current_identity() -> Identity:
    """The identity the guard established for this request."""
    identity: Identity | None = getattr(g, "tokengate_identity", None)
    if identity is None:
        raise MissingToken()
    return identity


def get_gate(app: Quart | None = None) -> TokenGate:
    """The ``TokenGate`` extension of ``app`` (default: the current app).

    The one way to reach the extension, its settings and its parts
    (``manager``, ``accounts``, ``purpose_tokens``) from application code.
    """
    gate: TokenGate = (app or current_app).extensions["tokengate"]
    return gate


def read_token() -> tuple[str, bool]:
    """The access token sent with this request and whether it came in a cookie."""
    settings = get_gate().settings
    header = request.headers.get("Authorization")
    if settings.use_headers and header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("The Authorization header must be 'Bearer <token>'.")
        return token.strip(), False
    if settings.use_cookies:
        cookie = request.cookies.get(ACCESS_COOKIE)
        if cookie:
            return cookie, True
    raise MissingToken()


def check_csrf() -> None:
    """Double-submit check for an unsafe request authenticated by cookie."""
    if request.method not in UNSAFE_METHODS:
        return
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), header.encode()):
        raise CsrfFailed()


async def authenticate_request() -> Identity:
    """Run the full check for this request and remember the identity."""
    token, via_cookie = read_token()
    g.tokengate_via_cookie = via_cookie
    if via_cookie:
        check_csrf()
    finish_later()
    try:
        identity = await get_gate().manager.authenticate(token)
    except SESSION_OVER:
        g.tokengate_clear_cookies = via_cookie
        raise
    except Exception as exc:
        # Inside a host app no catch-all handler may exist: fail closed as
        # the contract's 503 here, not as the host's 500.
        if is_infrastructure_failure(exc):
            raise AuthUnavailable() from exc
        raise
    g.tokengate_identity = identity
    return identity


async def guard() -> None:
    """The ``before_request`` hook: check the views marked ``login_required``."""
    endpoint = request.endpoint
    view = current_app.view_functions.get(endpoint) if endpoint else None
    if view is not None and getattr(view, REQUIRED_ATTR, False):
        await authenticate_request()


def finish_later() -> None:
    """Run :func:`finish_response` after this request (once).

    Registered per request, by the guard and the routes that may clear
    cookies, and not as an app-wide ``after_request`` hook: a host app's
    own routes never pay for it.
    """
    if not getattr(g, "tokengate_finishing", False):
        g.tokengate_finishing = True
        after_this_request(finish_response)  # type: ignore[arg-type]


async def finish_response(response: Response) -> Response:
    """Hand out re-issued tokens, clear dead cookies (after a checked request)."""
    gate = get_gate()
    if getattr(g, "tokengate_clear_cookies", False) and gate.settings.use_cookies:
        gate.clear_cookies(response)
        return response
    identity: Identity | None = getattr(g, "tokengate_identity", None)
    if identity is None:
        return response
    via_cookie = getattr(g, "tokengate_via_cookie", False)
    token, expires_in = identity.new_access_token, identity.new_access_expires_in
    if token is None and via_cookie and response.status_code < 400:
        # A browser page: re-issue the cookie before it expires, so an active
        # user never meets an expired token.
        try:
            reissued = await gate.manager.reissue_if_near_expiry(identity)
        except Exception as exc:
            # The request itself succeeded; the next one will re-issue.
            if not is_infrastructure_failure(exc):
                raise
            reissued = None
        if reissued is not None:
            token, expires_in = reissued
    if token is not None:
        response.headers["X-Access-Token"] = token
        response.headers["X-Access-Token-Expires-In"] = str(expires_in)
        if gate.settings.use_cookies and (via_cookie or not gate.settings.use_headers):
            gate.set_access_cookie(response, token)
    return response
