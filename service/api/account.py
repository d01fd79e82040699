"""The account page: a small browser UI that works whatever the API's token location.

``GET /account`` serves one HTML page and its static files. The page talks
to its own routes under ``/account/`` (login, refresh, me, sessions, logout,
password), which always run on cookies with a CSRF header, whatever
``TOKENGATE_TOKEN_LOCATION`` says for API clients:

- the page's cookies (``account_access``, ``account_refresh``,
  ``account_csrf``) have ``Path=/account``, so the browser never sends them
  to ``/auth/*`` or to the host app, and the guard of those routes never
  reads them: an operator who chose headers only keeps an API with no cookie
  authentication at all;
- every unsafe page route needs ``X-CSRF-Token`` equal to the readable
  ``account_csrf`` cookie, and login needs an ``application/json`` body (a
  cross-site form cannot send one), as cookie mode does for ``/auth``.

Registration and password reset need no cookie: the page calls
``/auth/register`` and ``/auth/password-reset/*`` directly. API keys are made,
listed and revoked on the page's own routes too (``/account/api-keys``). No inline script
or style, so the page runs under a strict Content-Security-Policy. See
docs/browser.md.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
from pathlib import Path

from quart import Blueprint, Response, g, jsonify, render_template, request, send_from_directory

from ..cookies import CSRF_HEADER, UNSAFE_METHODS, request_auth, set_device_cookie
from ..cookies import _flags as cookie_flags
from ..credentials.manager import key_info
from ..errors import (
    ApiError,
    AuthUnavailable,
    CsrfFailed,
    FreshLoginRequired,
    InvalidRequest,
    MissingToken,
    Unauthorized,
    is_infrastructure_failure,
    register_error_handler,
)
from ..guard import SESSION_OVER, get_gate
from ..identity import Identity
from ..metrics import metrics
from ..openapi import hidden
from ..tokens import TokenPair
from . import flows, schemas
from .api_keys import require_api_keys
from .auth import (
    client_info,
    no_content,
    raw_body,
    read_body,
    request_address,
    require_own_users,
)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGE_PATH = "/account"
PAGE_ACCESS, PAGE_REFRESH, PAGE_CSRF = "account_access", "account_refresh", "account_csrf"
# The browser's device token (throttle.py): sent to the page's login alone, and
# kept through logouts, since it marks the browser, not a session.
PAGE_DEVICE = "account_device"

account_bp = Blueprint("tokengate_account", __name__, template_folder="../templates")
# Inside a host app too, anything these routes raise is contract JSON, and a
# Redis or database failure is 503 auth_unavailable.
register_error_handler(account_bp, everything=True)

# The page talks only to its own origin and may not be framed (its buttons
# end sessions, so clickjacking it would be worth something).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@account_bp.get(PAGE_PATH)
@hidden
async def account_page() -> Response:
    """The account page; it runs on its own cookie routes in every token location."""
    gate = get_gate()
    html = await render_template(
        "tokengate/account.html",
        auth_prefix=gate.url_prefix,
        registration="on" if gate.settings.allow_registration else "off",
    )
    response = Response(html, mimetype="text/html")
    response.headers.update(PAGE_HEADERS)
    return response


@account_bp.get(f"{PAGE_PATH}/static/<path:filename>")
@hidden
async def account_static(filename: str) -> Response:
    """The page's script, style sheet and icon."""
    response = await send_from_directory(STATIC_DIR, filename)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# -- the page's cookies -------------------------------------------------------


def _set_cookies(response: Response, pair: TokenPair) -> None:
    flags = cookie_flags(get_gate().settings)
    response.set_cookie(PAGE_ACCESS, pair.access_token, httponly=True, path=PAGE_PATH, **flags)
    response.set_cookie(
        PAGE_REFRESH, pair.refresh_token, httponly=True, path=f"{PAGE_PATH}/refresh", **flags
    )
    response.set_cookie(
        PAGE_CSRF, secrets.token_urlsafe(24), httponly=False, path=PAGE_PATH, **flags
    )


def _clear_cookies(response: Response) -> None:
    flags = cookie_flags(get_gate().settings)
    flags.pop("max_age", None)
    response.delete_cookie(PAGE_ACCESS, path=PAGE_PATH, httponly=True, **flags)
    response.delete_cookie(PAGE_REFRESH, path=f"{PAGE_PATH}/refresh", httponly=True, **flags)
    response.delete_cookie(PAGE_CSRF, path=PAGE_PATH, **flags)


@account_bp.after_request
async def _finish(response: Response) -> Response:
    if getattr(g, "tokengate_page_clear", False):
        _clear_cookies(response)
    elif (access := getattr(g, "tokengate_page_access", None)) is not None:
        flags = cookie_flags(get_gate().settings)
        response.set_cookie(PAGE_ACCESS, access, httponly=True, path=PAGE_PATH, **flags)
    response.headers["Cache-Control"] = "no-store"
    return response


def _check_csrf() -> None:
    if request.method not in UNSAFE_METHODS:
        return
    cookie = request.cookies.get(PAGE_CSRF, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), header.encode()):
        raise CsrfFailed()


async def _require_json() -> None:
    """A body that sets cookies must be ``application/json``: no cross-site form can send it."""
    if (await raw_body()).strip() and request.mimetype != "application/json":
        raise InvalidRequest("The body must be sent as application/json.")


async def page_identity() -> Identity:
    """The guard for the page's routes: the page's access cookie, CSRF, the session."""
    try:
        token = request.cookies.get(PAGE_ACCESS)
        if not token:
            raise MissingToken()
        _check_csrf()
        try:
            # A page's tokens are never bound: a bound one (stolen, with no key to
            # prove it) is refused, as by default wherever no proof is checked.
            identity = await get_gate().manager.authenticate(token)
        except SESSION_OVER:
            g.tokengate_page_clear = True
            raise
        except Exception as exc:
            if is_infrastructure_failure(exc):
                raise AuthUnavailable() from exc
            raise
    except ApiError as exc:
        metrics().guard.labels(exc.error).inc()
        raise
    metrics().guard.labels("ok").inc()
    if identity.new_access_token is not None:
        # Implicit refresh: the new token goes into the page's cookie, and
        # nowhere else (the app's own hook would put it in a header).
        g.tokengate_page_access = identity.new_access_token
        identity = dataclasses.replace(identity, new_access_token=None)
    request_auth().identity = identity  # for the access log
    return identity


# -- the page's routes --------------------------------------------------------


@account_bp.post(f"{PAGE_PATH}/login")
@hidden
async def page_login() -> Response:
    """Log in from the page: the tokens go into the page's cookies, never the body."""
    await _require_json()
    body = await read_body(schemas.LoginRequest)
    device_token = body.device_token or request.cookies.get(PAGE_DEVICE)
    pair = await flows.login(body.username, body.password, client_info(body.device), device_token)
    response = jsonify({"username": body.username, "session_id": pair.session_id})
    _set_cookies(response, pair)
    if pair.device_token is not None:
        set_device_cookie(
            response, get_gate().settings, PAGE_DEVICE, pair.device_token, f"{PAGE_PATH}/login"
        )
    return response


@account_bp.post(f"{PAGE_PATH}/refresh")
@hidden
async def page_refresh() -> Response:
    """Rotate the page's refresh cookie for a new pair of cookies."""
    token = request.cookies.get(PAGE_REFRESH)
    if not token:
        raise MissingToken("No refresh token was sent.")
    _check_csrf()
    try:
        pair = await flows.refresh(token)
    except Unauthorized:
        g.tokengate_page_clear = True
        raise
    response = no_content()
    _set_cookies(response, pair)
    return response


@account_bp.get(f"{PAGE_PATH}/me")
@hidden
async def page_me() -> Response:
    me = await page_identity()
    return jsonify({"id": me.user_id, "username": me.username, "session_id": me.session_id})


@account_bp.get(f"{PAGE_PATH}/sessions")
@hidden
async def page_sessions() -> Response:
    me = await page_identity()
    found = await get_gate().manager.sessions(me)
    return jsonify({"sessions": [s.to_json() for s in found]})


@account_bp.delete(f"{PAGE_PATH}/sessions/<session_id>")
@hidden
async def page_end_session(session_id: str) -> Response:
    me = await page_identity()
    await flows.end_session(me, session_id)
    if session_id == me.session_id:
        g.tokengate_page_clear = True
    return no_content()


@account_bp.post(f"{PAGE_PATH}/logout")
@hidden
async def page_logout() -> Response:
    await flows.logout(await page_identity())
    g.tokengate_page_clear = True
    return no_content()


@account_bp.post(f"{PAGE_PATH}/logout-all")
@hidden
async def page_logout_all() -> Response:
    await flows.logout_all(await page_identity())
    g.tokengate_page_clear = True
    return no_content()


@account_bp.post(f"{PAGE_PATH}/password")
@hidden
async def page_password() -> Response:
    require_own_users()
    me = await page_identity()
    body = await read_body(schemas.PasswordChange)
    await flows.change_password(me, body.current_password, body.new_password, request_address())
    return no_content()


# -- API keys on the page -------------------------------------------------------


@account_bp.get(f"{PAGE_PATH}/api-keys")
@hidden
async def page_api_keys() -> Response:
    """The user's keys, and the scopes a new key may carry (the user's own)."""
    require_api_keys()
    me = await page_identity()
    gate = get_gate()
    rows = await gate.api_keys.list(me.user_id)
    user = await gate.manager.users.get_by_id(me.user_id)
    scopes = sorted(user.scopes) if user is not None else []
    return jsonify({"api_keys": [key_info(row) for row in rows], "scopes": scopes})


@account_bp.post(f"{PAGE_PATH}/api-keys")
@hidden
async def page_create_api_key() -> tuple[Response, int]:
    """Make a key from the page: after a fresh password login, as ``POST /auth/api-keys``."""
    require_api_keys()
    me = await page_identity()
    gate = get_gate()
    if not me.login_is_fresh(gate.clock(), gate.settings.fresh_ttl):
        raise FreshLoginRequired()
    body = await read_body(schemas.ApiKeyCreate)
    created = await gate.api_keys.create(me.user_id, body.name, body.scopes, body.expires_in)
    return jsonify(created.to_json()), 201


@account_bp.delete(f"{PAGE_PATH}/api-keys/<key_id>")
@hidden
async def page_revoke_api_key(key_id: str) -> Response:
    require_api_keys()
    me = await page_identity()
    await get_gate().api_keys.revoke(key_id, owner=me.user_id)
    return no_content()
