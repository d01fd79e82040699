"""The account page: a small browser UI on cookie mode (see docs/browser.md).

``GET /account`` serves one HTML page and its static script and style sheet;
everything else happens in the browser against the ``/auth`` routes, with the
cookies and CSRF header of cookie mode. No inline script or style, so the
page runs under a strict Content-Security-Policy.
"""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response, render_template, send_from_directory, url_for

from ..errors import NotFound, register_error_handler
from ..guard import get_gate
from ..openapi import hidden

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

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


@account_bp.get("/account")
@hidden
async def account_page() -> Response:
    """The account page; only in cookie mode, which is what it runs on."""
    gate = get_gate()
    if not gate.settings.use_cookies:
        raise NotFound(
            "The account page needs cookie mode: set TOKENGATE_TOKEN_LOCATION "
            "to cookies or headers,cookies."
        )
    auth_prefix = url_for("tokengate_auth.login").removesuffix("/login")
    html = await render_template("tokengate/account.html", auth_prefix=auth_prefix)
    response = Response(html, mimetype="text/html")
    response.headers.update(PAGE_HEADERS)
    return response


@account_bp.get("/account/static/<path:filename>")
@hidden
async def account_static(filename: str) -> Response:
    """The page's script and style sheet."""
    response = await send_from_directory(STATIC_DIR, filename)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
