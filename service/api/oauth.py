"""What other services speak: token introspection (RFC 7662) and revocation (RFC 7009)."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any, TypeVar
from urllib.parse import parse_qs

from quart import Blueprint, Response, jsonify, request

from ..credentials.apikeys import looks_like_key
from ..errors import InvalidClient, InvalidRequest, Unauthorized, handle_exception
from ..guard import get_gate
from ..openapi import document
from . import schemas
from .auth import raw_body, token_request_proof, validate

oauth_bp = Blueprint("tokengate_oauth", __name__)
oauth_bp.register_error_handler(Exception, handle_exception)

# /auth/introspect's HTTP Basic scheme, as the OpenAPI document declares it.
INTROSPECTION_SCHEME = "introspection_client"
F = TypeVar("F", bound=schemas.OAuthForm)


async def token_form(model: type[F]) -> F:
    """The form (RFC 7662/7009) or JSON body, as ``model``; ``400`` when it is not one.

    Parameters the model does not name are ignored (RFC 6749 section 3.2); one
    sent twice counts as missing.
    """
    raw = await raw_body()
    params: dict[str, Any]
    if request.mimetype == "application/json":
        try:
            found = json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidRequest("The body must be a JSON object encoded as UTF-8.") from None
        if not isinstance(found, dict):
            raise InvalidRequest("The body must be a JSON object.")
        params = found
    else:
        try:
            # No cap on the number of fields (unknown ones are allowed): the
            # body's 64 KiB bound the parse.
            parsed = parse_qs(raw.decode("utf-8"), strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("The body must be a form (token=...) in UTF-8.") from None
        params = {k: v[0] for k, v in parsed.items() if len(v) == 1}
    return validate(model, params)


def authenticate_client() -> str:
    """The introspection client named by HTTP Basic, checked in constant time."""
    clients = get_gate().settings.introspection_clients
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not clients:
        raise InvalidClient()
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidClient() from None
    client_id, sep, secret = decoded.partition(":")
    known = False
    for cid, csecret in clients:
        # Every pair is compared, so that timing says nothing about which exist.
        same_id = hmac.compare_digest(cid.encode(), client_id.encode())
        same_secret = hmac.compare_digest(csecret.encode(), secret.encode())
        known |= bool(sep) and same_id and same_secret
    if not known:
        raise InvalidClient()
    return client_id


@oauth_bp.post("/introspect")
@document(
    form=schemas.TokenForm,
    responses={200: schemas.IntrospectionOut},
    errors={401: ["invalid_client"]},
    security=[{INTROSPECTION_SCHEME: []}],
)
async def introspect() -> Response:
    """Whether an access token is active now (RFC 7662), for a resource server.

    ``{"active": false}`` for any token the guard would refuse: expired,
    revoked, idle, replaced, forged, or not an access token.
    """
    authenticate_client()
    token = (await token_form(schemas.TokenForm)).token
    try:
        # Any token, bound or not, is described (its binding as cnf): no sender check.
        identity = await get_gate().manager.authenticate(token, implicit=False, sender=None)
    except Unauthorized:
        body: dict[str, Any] = {"active": False}
    else:
        c = identity.claims
        body = {
            "active": True, "sub": c["sub"], "username": identity.username,
            "sid": identity.session_id, "exp": c["exp"], "iat": c["iat"], "nbf": c["nbf"],
            "auth_time": c["auth_time"], "iss": c["iss"], "aud": c["aud"], "jti": c["jti"],
            "token_type": "Bearer" if "cnf" not in c else "DPoP",
        }  # fmt: skip
        if "scope" in c:
            body["scope"] = c["scope"]
        if "cnf" in c:  # bound: a resource server checks the proof's key against it
            body["cnf"] = c["cnf"]
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


@oauth_bp.post("/revoke")
@document(
    form=schemas.RevokeForm, responses={200: schemas.Empty},
    errors={400: ["invalid_dpop_proof", "use_dpop_nonce"]},
)  # fmt: skip
async def revoke() -> Response:
    """End the session of an access or refresh token, or revoke an API key (RFC 7009).

    ``200`` whatever the token. A DPoP-bound token's session ends only when the
    request carries a proof by its key (``DPoP`` header), as its refresh would.
    """
    token = (await token_form(schemas.RevokeForm)).token
    gate = get_gate()
    if looks_like_key(token) and gate.settings.api_keys:
        await gate.api_keys.revoke_key(token)
    else:
        # A DPoP-bound token ends its session only with a proof by its key.
        await gate.manager.revoke(token, await token_request_proof())
    return jsonify({})
