"""``GET /.well-known/jwks.json``: the public keys that verify access tokens (RFC 7517)."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from ..errors import handle_exception
from ..guard import get_gate
from ..keys import JWKS_MAX_AGE
from ..openapi import document
from . import schemas

wellknown_bp = Blueprint("tokengate_wellknown", __name__)
wellknown_bp.register_error_handler(Exception, handle_exception)


@wellknown_bp.get("/.well-known/jwks.json")
@document(responses={200: schemas.JwksOut})
async def jwks() -> Response:
    """The JWK Set of the public keys that verify access tokens (no keys with HS256).

    A key is published a few seconds before it starts signing and stays until
    no token it signed can still be valid; a verifier that meets an unknown
    ``kid`` fetches the set again.
    """
    response = jsonify(get_gate().keyring.jwks)
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return response
