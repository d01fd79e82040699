"""The guard: an async ``before_request`` hook, ``login_required`` and ``current_identity``.

``login_required`` only marks a view; the hook, which the extension installs
on the app, does the check before the view runs, so every guarded route in
the app (ours and yours) goes through the same code. The wrapper checks again
only if the hook did not run (a view called some other way).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from quart import Quart, Response, current_app, request

from . import cookies
from .cookies import read_access_token, request_auth
from .errors import (
    AuthUnavailable,
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
# Errors after which a browser's cookies are of no further use.
SESSION_OVER = (TokenRevoked, SessionExpired, SessionReplaced, InvalidToken)


def login_required(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Require a valid access token and a live session for ``view``."""

    @wraps(view)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if request_auth().identity is None:
            await authenticate_request()
        return await view(*args, **kwargs)

    setattr(wrapper, REQUIRED_ATTR, True)
    return wrapper


def current_identity() -> Identity:
    """The identity the guard established for this request."""
    identity = request_auth().identity
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


async def authenticate_request() -> Identity:
    """Run the full check for this request and remember the identity."""
    state = request_auth()
    token = read_access_token(get_gate().settings)
    try:
        identity = await get_gate().manager.authenticate(token)
    except SESSION_OVER:
        state.clear_cookies = state.via_cookie
        raise
    except Exception as exc:
        # Inside a host app no catch-all handler may exist: fail closed as
        # the contract's 503 here, not as the host's 500.
        if is_infrastructure_failure(exc):
            raise AuthUnavailable() from exc
        raise
    state.identity = identity
    return identity


async def guard() -> None:
    """The ``before_request`` hook: check the views marked ``login_required``."""
    endpoint = request.endpoint
    view = current_app.view_functions.get(endpoint) if endpoint else None
    if view is not None and getattr(view, REQUIRED_ATTR, False):
        await authenticate_request()


async def finish_response(response: Response) -> Response:
    """The ``after_request`` hook: hand out re-issued tokens, clear dead cookies."""
    gate = get_gate()
    state = request_auth()
    if state.clear_cookies and gate.settings.use_cookies:
        cookies.clear_cookies(response, gate.settings, gate.refresh_path)
        return response
    identity = state.identity
    if identity is None:
        return response
    via_cookie = state.via_cookie
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
            cookies.set_access_cookie(response, gate.settings, token)
    return response
