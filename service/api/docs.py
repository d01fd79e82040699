"""``/docs`` (Swagger UI, every file served from here, no CDN) and ``/openapi.json``."""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response, current_app, jsonify, send_from_directory

from ..errors import NotFound, handle_exception
from ..openapi import STATIC_DIR, build_document, hidden

PACKAGE = Path(__file__).resolve().parent.parent

docs_bp = Blueprint("tokengate_docs", __name__, template_folder=str(PACKAGE / "templates"))
docs_bp.register_error_handler(Exception, handle_exception)

# Swagger UI's own files, from the swagger-ui-py distribution: no CDN.
DOCS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; "
        "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SWAGGER_FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"})


def swagger_ui_dir() -> Path:
    import swagger_ui

    return Path(swagger_ui.__file__).resolve().parent / "static"


@docs_bp.get("/openapi.json")
@hidden
async def openapi_json() -> Response:
    """The OpenAPI document (built on first use, then kept)."""
    from ..guard import get_gate

    gate = get_gate()
    if gate.openapi_document is None:
        gate.openapi_document = build_document(current_app, gate.settings)
    response = jsonify(gate.openapi_document)
    response.headers["Cache-Control"] = "no-cache"
    return response


@docs_bp.get("/docs")
@hidden
async def docs_page() -> Response:
    """Swagger UI on the document, every file served from this service."""
    from quart import render_template

    html = await render_template("tokengate/docs.html")
    response = Response(html, mimetype="text/html")
    response.headers.update(DOCS_HEADERS)
    return response


@docs_bp.get("/docs/static/<path:filename>")
@hidden
async def docs_static(filename: str) -> Response:
    """Swagger UI's script and style sheet, and the page's own starter script."""
    if filename == "docs.js":
        response = await send_from_directory(STATIC_DIR, filename)
    elif filename in SWAGGER_FILES:
        response = await send_from_directory(swagger_ui_dir(), filename)
    else:
        raise NotFound()
    response.headers.update(DOCS_HEADERS)
    return response
