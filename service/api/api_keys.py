"""``/auth/api-keys``: a user's API keys (create, list, revoke) and leak reports from scanners."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from ..credentials.manager import key_info
from ..errors import NotFound, register_error_handler
from ..guard import current_identity, get_gate, login_required
from ..logs import security_event
from ..openapi import document
from . import schemas
from .auth import no_content, read_body, request_address

api_keys_bp = Blueprint("tokengate_api_keys", __name__)
register_error_handler(api_keys_bp, everything=True)


def require_api_keys() -> None:
    """With ``TOKENGATE_API_KEYS=false`` these routes do not exist."""
    if not get_gate().settings.api_keys:
        raise NotFound("API keys are turned off on this server.")


@api_keys_bp.post("/api-keys")
@login_required(fresh=True)  # implies api_key=False: a key never makes a key
@document(
    body=schemas.ApiKeyCreate,
    responses={201: schemas.ApiKeyCreated},
    errors={403: ["insufficient_scope"], 404: ["not_found"]},
)
async def create_api_key() -> tuple[Response, int]:
    """Make an API key (after a fresh password login); the key is shown this once."""
    require_api_keys()
    body = await read_body(schemas.ApiKeyCreate)
    me = current_identity()
    created = await get_gate().api_keys.create(me.user_id, body.name, body.scopes, body.expires_in)
    response = jsonify(created.to_json())
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@api_keys_bp.get("/api-keys")
@login_required(api_key=False)  # a key manages no keys; it revokes itself at /auth/revoke
@document(responses={200: schemas.ApiKeysOut}, errors={404: ["not_found"]})
async def list_api_keys() -> Response:
    """The user's API keys, revoked and expired ones too, with their last use."""
    require_api_keys()
    rows = await get_gate().api_keys.list(current_identity().user_id)
    return jsonify({"api_keys": [key_info(row) for row in rows]})


@api_keys_bp.delete("/api-keys/<key_id>")
@login_required(api_key=False)
@document(responses={204: None}, errors={404: ["not_found"]})
async def revoke_api_key(key_id: str) -> Response:
    """Revoke one of the user's API keys: refused by every instance from the next request."""
    require_api_keys()
    await get_gate().api_keys.revoke(key_id, owner=current_identity().user_id)
    return no_content()


@api_keys_bp.post("/api-keys/leaked")
@document(body=schemas.LeakedKeys, responses={200: schemas.LeakedOut})
async def report_leaked() -> Response:
    """Report API keys found where they should not be (a secret scanner): each real one is revoked.

    The answer, and its time, are the same whether or not any key was real.
    """
    require_api_keys()
    body = await read_body(schemas.LeakedKeys)
    taken = get_gate().api_keys.report_leaked(body.keys)
    security_event("api_keys_reported_leaked", keys=taken, ip=request_address())
    return jsonify({"revoked": taken})
