"""The device confirmation page, ``/account/device``: a person approves or denies a device login.

``GET /account/device`` (``?user_code=`` from ``verification_uri_complete``)
serves the page, rendered by the server in the account page's style; the
page runs on the account page's own cookies and routes (``api/account.py``):
it logs in through ``/account/login`` and asks, with the CSRF header, its
own three routes below. Each needs a fresh password login
(``TOKENGATE_FRESH_TTL``; otherwise ``401 fresh_login_required`` and the
page asks for the password again), so that a device is never approved by a
browser left logged in. The page shows what asked (device name, address,
user agent, when, which scopes) before the person decides: that is what
makes a phished code visible (docs/device-login.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints
from quart import Blueprint, Response, jsonify, render_template, request

from ..credentials.apikeys import looks_like_key
from ..errors import ApiKeyNotAllowed, FreshLoginRequired, TokenRevoked, register_error_handler
from ..guard import get_gate
from ..identity import Identity
from ..oauth.device_codes import read_user_code, show_user_code
from ..oauth.device_logins import DeviceRequest, device_logins
from ..openapi import hidden
from .account import PAGE_HEADERS, PAGE_PATH, _finish, page_identity
from .auth import read_body, request_address

device_page_bp = Blueprint("tokengate_device_page", __name__, template_folder="../templates")
register_error_handler(device_page_bp, everything=True)
# The account page's own ending: its renewed access cookie written, its cookies cleared
# when the session ended, and nothing of it kept in a cache.
device_page_bp.after_request(_finish)

DEVICE_PATH = f"{PAGE_PATH}/device"


class UserCodeBody(BaseModel):
    """The code a person typed."""

    user_code: Annotated[str, StringConstraints(min_length=1, max_length=64)]


@device_page_bp.get(DEVICE_PATH)
@hidden
async def device_page() -> Response:
    """The confirmation page, with the code of ``?user_code=`` filled in when it is one."""
    typed = request.args.get("user_code", "")
    code = read_user_code(typed) if len(typed) <= 64 else None
    html = await render_template(
        "tokengate/device.html",
        user_code=show_user_code(code) if code is not None else "",
        fresh_ttl=get_gate().settings.fresh_ttl,
    )
    response = Response(html, mimetype="text/html")
    response.headers.update(PAGE_HEADERS)
    return response


async def fresh_identity() -> Identity:
    """The page's caller, whose password login is fresh; else ``fresh_login_required``.

    An API key is never one (contract section 9): a program that sends one here is
    told so (``403 api_key_not_allowed``) rather than asked for the page's cookies.
    """
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and looks_like_key(sent.strip()):
        raise ApiKeyNotAllowed()
    me = await page_identity()
    gate = get_gate()
    if not me.login_is_fresh(gate.clock(), gate.settings.fresh_ttl):
        raise FreshLoginRequired()
    return me


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _shown(found: DeviceRequest, me: Identity) -> dict[str, Any]:
    # A device session is a session like a password login's: its tokens carry every
    # scope of the account, whatever the device asked for. The page says so.
    return {
        "grants": sorted(me.scopes),
        "user_code": show_user_code(found.user_code),
        "device": found.device,
        "ip": found.ip,
        "user_agent": found.user_agent,
        "client_id": found.client_id,
        "scopes": list(found.scopes),
        "requested_at": _iso(found.requested_at),
        "expires_at": _iso(found.expires_at),
    }


@device_page_bp.post(f"{DEVICE_PATH}/lookup")
@hidden
async def device_lookup() -> Response:
    """What the typed code asks for: device, address, user agent, when, scopes."""
    me = await fresh_identity()
    body = await read_body(UserCodeBody)
    logins = device_logins(get_gate().manager)
    found = await logins.lookup(body.user_code, me.user_id, request_address())
    return jsonify(_shown(found, me))


async def _decide(approve: bool) -> Response:
    me = await fresh_identity()
    body = await read_body(UserCodeBody)
    gate = get_gate()
    user = await gate.manager.users.get_by_id(me.user_id)
    if user is None or user.disabled:
        raise TokenRevoked()
    found = await device_logins(gate.manager).decide(
        body.user_code, user, request_address(), approve=approve
    )
    return jsonify({**_shown(found, me), "status": "approved" if approve else "denied"})


@device_page_bp.post(f"{DEVICE_PATH}/approve")
@hidden
async def device_approve() -> Response:
    """Approve the code: the device's next poll gets its session."""
    return await _decide(True)


@device_page_bp.post(f"{DEVICE_PATH}/deny")
@hidden
async def device_deny() -> Response:
    """Deny the code: the device's next poll gets ``access_denied``."""
    return await _decide(False)
