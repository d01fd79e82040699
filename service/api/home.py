"""``GET /``: a small page saying what this service is, with links to the rest.

Only the stand-alone service (``create_app``) has it: inside a host app, ``/``
belongs to the host.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

from quart import Blueprint, Response, render_template

from ..openapi import hidden
from .account import PAGE_HEADERS

home_bp = Blueprint("tokengate_home", __name__, template_folder="../templates")

DISTRIBUTION = "quart-tokengate"


@functools.cache
def service_version() -> str:
    """The installed version of the distribution (``unknown`` outside an install)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


@home_bp.get("/")
@hidden
async def home() -> Response:
    """What this is, its version, and links to the account page and the API docs."""
    html = await render_template("tokengate/home.html", version=service_version())
    response = Response(html, mimetype="text/html")
    response.headers.update(PAGE_HEADERS)
    return response
