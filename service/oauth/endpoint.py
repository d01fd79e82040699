"""The token endpoint, ``POST /oauth/token`` (RFC 6749 section 3.2): parse, dispatch to a grant.

A form body only (section 3.2: ``application/x-www-form-urlencoded``); a
parameter sent twice is ``invalid_request``, one sent empty counts as
omitted (section 3.1). Each grant is a module of its own, named by its
``grant_type``; an unknown one is ``unsupported_grant_type``. Every answer,
errors included, is JSON with ``Cache-Control: no-store`` (section 5.1).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from quart import Blueprint, Response, jsonify, request

from ..api.auth import client_info, raw_body, token_request_proof
from ..dpop import VerifiedProof
from ..errors import InvalidRequest, UnsupportedGrantType, handle_exception
from ..guard import get_gate
from ..identity import ClientInfo
from ..openapi import document
from . import client_credentials, device_code, schemas
from .accounts import ServiceAccounts, service_accounts

oauth_token_bp = Blueprint("tokengate_oauth_token", __name__, url_prefix="/oauth")
oauth_token_bp.register_error_handler(Exception, handle_exception)

FORM = "application/x-www-form-urlencoded"
MAX_FIELDS = 20

Grant = Callable[
    [Mapping[str, str], ServiceAccounts, str, str, ClientInfo, VerifiedProof | None],
    Awaitable[dict[str, Any]],
]
# grant_type -> the module's grant.
GRANTS: dict[str, Grant] = {
    client_credentials.GRANT_TYPE: client_credentials.grant,
    device_code.GRANT_TYPE: device_code.grant,
}


@oauth_token_bp.after_request
async def no_store(response: Response) -> Response:
    """Token responses, and errors about them, are never cached (RFC 6749 section 5.1)."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


async def form_parameters() -> dict[str, str]:
    """The form's parameters: each at most once, empty ones dropped; else ``invalid_request``."""
    if request.mimetype != FORM:
        raise InvalidRequest(f"The body must be a form ({FORM}).")
    raw = await raw_body()
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
            max_num_fields=MAX_FIELDS,
        )  # fmt: skip
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("The body must be a form in UTF-8.") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise InvalidRequest(f"The parameter {name} is sent more than once.")
        params[name] = value
    return {name: value for name, value in params.items() if value}


@oauth_token_bp.post("/token")
@document(
    form=schemas.ClientCredentialsForm,
    responses={200: schemas.OAuthTokenOut},
    errors={
        400: [
            "invalid_request",
            "unsupported_grant_type",
            "invalid_scope",
            *device_code.ERRORS,
            "invalid_dpop_proof",
            "use_dpop_nonce",
        ],
        401: ["invalid_client"],
    },
)
async def token() -> Response:
    """Issue an access token to a client (RFC 6749 section 4.4: client credentials).

    The client authenticates with ``client_secret_basic``, ``client_secret_post``
    or ``private_key_jwt`` (RFC 7523), one way only. No refresh token is
    issued: the client asks again.
    """
    params = await form_parameters()
    grant_type = params.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is missing.")
    grant = GRANTS.get(grant_type)
    if grant is None:
        raise UnsupportedGrantType()
    # The URL the client addressed, as its assertion's aud names it (RFC 7523 section 3).
    token_url = request.base_url
    proof = await token_request_proof()  # binds what the grant issues (RFC 9449 section 5)
    answer = await grant(
        params, service_accounts(get_gate()), request.headers.get("Authorization", ""),
        token_url, client_info(None), proof,
    )  # fmt: skip
    return jsonify(answer)
