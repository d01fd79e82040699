"""The ``/auth`` routes of CONTRACT section 3."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError
from quart import Blueprint, Response, jsonify, request

from .. import cookies
from ..cookies import read_refresh_token, request_auth
from ..credentials import proofs
from ..dpop import VerifiedProof
from ..errors import (
    InvalidRequest,
    NotFound,
    RegistrationDisabled,
    RequestTooLarge,
    Unauthorized,
    register_error_handler,
)
from ..guard import current_identity, get_gate, login_required
from ..identity import ClientInfo
from ..openapi import GUARD_CODES, document
from ..proxies import client_address
from ..tokens import TokenPair
from . import flows, schemas

log = logging.getLogger("tokengate")

auth_bp = Blueprint("tokengate_auth", __name__)
# Inside a host app too, anything these routes raise is contract JSON, and a
# Redis or database failure is 503 auth_unavailable.
register_error_handler(auth_bp, everything=True)

M = TypeVar("M", bound=BaseModel)
# Our bodies are a few hundred bytes; this holds inside someone else's app too.
MAX_BODY_BYTES = 64 * 1024
# Token pairs are never cached; a pair response in cookie mode also sets cookies.
PAIR_HEADERS = {
    200: {
        "Cache-Control": {"required": True, "schema": {"type": "string", "const": "no-store"}},
    }
}


async def raw_body() -> bytes:
    """The request body, refused past ``MAX_BODY_BYTES`` whatever the host app allows."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise RequestTooLarge()
    raw = cast(bytes, await request.get_data(as_text=False))
    if len(raw) > MAX_BODY_BYTES:
        raise RequestTooLarge()
    return raw


async def read_body(model: type[M], *, optional: bool = False) -> M:
    """Parse and validate the JSON body; every fault is a ``400 invalid_request``."""
    raw = await raw_body()
    if not raw.strip() and optional:
        return model()
    try:
        data: Any = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("The body must be a JSON object encoded as UTF-8.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return validate(model, data)


def validate(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``; the first fault is a ``400 invalid_request`` naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"{where}: {first['msg']}.") from None


async def require_json_in_cookie_mode() -> None:
    """In cookie mode, a body that sets cookies must come as ``application/json``.

    A cross-site form can post a JSON-shaped ``text/plain`` body, but not this
    type. Without the check a page could log a browser into an account of the
    attacker's choosing (login CSRF), through login or through a refresh
    token of the attacker's own in the body.
    """
    if not get_gate().settings.use_cookies:
        return
    has_body = bool((await raw_body()).strip())
    if has_body and request.mimetype != "application/json":
        raise InvalidRequest("The body must be sent as application/json.")


def request_address() -> str:
    """The client's address, through the trusted proxies' ``X-Forwarded-For``."""
    return client_address(
        request.remote_addr,
        request.headers.getlist("X-Forwarded-For"),
        get_gate().settings.trusted_proxies,
    )


def client_info(device: str | None) -> ClientInfo:
    agent = request.headers.get("User-Agent")
    return ClientInfo(
        device=device, ip=request_address() or None, user_agent=agent[:400] if agent else None
    )


async def token_request_proof() -> VerifiedProof | None:
    """This token request's DPoP proof, checked and noted once (``TOKENGATE_DPOP``).

    Never in cookie mode: a browser page has no key to keep, so its tokens are never bound.
    """
    gate = get_gate()
    if gate.settings.use_cookies and not gate.settings.use_headers:
        return None
    return await proofs.token_request_proof(gate.proofs, gate.manager.store, gate.clock())


def pair_response(pair: TokenPair) -> Response:
    response = jsonify(pair.to_json())
    response.headers["Cache-Control"] = "no-store"
    gate = get_gate()
    # A bound pair is a program's: no cookie (a browser has no key to prove it with).
    if gate.settings.use_cookies and pair.token_type == "Bearer":  # noqa: S105 - a scheme
        cookies.set_login_cookies(response, gate.settings, pair, gate.refresh_path)
    return response


def require_own_users() -> None:
    """Passwords are the application's to change when it brings its own user store."""
    if not get_gate().own_users:
        raise NotFound("Passwords are managed by the application on this server.")


def no_content() -> Response:
    """A ``204``: no body, so no content type either."""
    response = Response(b"", status=204)
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    return response


@auth_bp.post("/register")
@document(
    body=schemas.Registration,
    responses={201: schemas.UserOut},
    errors={403: ["registration_disabled"], 409: ["username_taken"], 429: ["too_many_attempts"]},
)
async def register() -> tuple[Response, int]:
    """Create a user."""
    gate = get_gate()
    if not gate.settings.allow_registration or not gate.own_users:
        raise RegistrationDisabled()
    body = await read_body(schemas.Registration)
    user = await gate.accounts.register(body.username, body.password, request_address())
    return jsonify({"id": user.id, "username": user.username}), 201


@auth_bp.post("/login")
@document(
    body=schemas.LoginRequest,
    responses={200: schemas.LoginOut},
    errors={
        400: ["invalid_dpop_proof", "use_dpop_nonce"],
        401: ["invalid_credentials"],
        429: ["too_many_attempts"],
    },
    headers=PAIR_HEADERS,
)
async def login() -> Response:
    """Check a username and password and open a session: returns a token pair."""
    await require_json_in_cookie_mode()
    body = await read_body(schemas.LoginRequest)
    proof = await token_request_proof()
    pair = await flows.login(
        body.username, body.password, client_info(body.device), body.device_token,
        proof.jkt if proof is not None else None,
    )  # fmt: skip
    return pair_response(pair)


@auth_bp.post("/refresh")
@document(
    body=schemas.RefreshRequest,
    body_required=False,
    responses={200: schemas.TokenPairOut},
    errors={
        400: ["invalid_dpop_proof", "use_dpop_nonce"],
        401: [*GUARD_CODES, "refresh_reused"],
    },
    headers=PAIR_HEADERS,
)
async def refresh() -> Response:
    """Trade a refresh token for a new pair; the refresh token rotates."""
    gate = get_gate()
    await require_json_in_cookie_mode()
    body = await read_body(schemas.RefreshRequest, optional=True)
    token = read_refresh_token(gate.settings, body.refresh_token)
    try:
        pair = await flows.refresh(token, await token_request_proof())
    except Unauthorized:
        state = request_auth()
        state.clear_cookies = state.via_cookie
        raise
    return pair_response(pair)


@auth_bp.get("/me")
@login_required
@document(responses={200: schemas.MeOut})
async def me() -> Response:
    """Who the access token belongs to."""
    me = current_identity()
    return jsonify({
        "id": me.user_id, "username": me.username, "session_id": me.session_id or None,
        **({"api_key_id": me.api_key_id} if me.api_key_id is not None else {}),
    })  # fmt: skip


@auth_bp.post("/logout")
@login_required(api_key=False)  # a key is no session: it is revoked, not logged out
@document(responses={204: None})
async def logout() -> Response:
    """End this session: its access and refresh tokens stop working at once."""
    await flows.logout(current_identity())
    request_auth().clear_cookies = True
    return no_content()


@auth_bp.post("/logout-all")
@login_required(api_key=False)
@document(responses={204: None})
async def logout_all() -> Response:
    """End every session of the user."""
    await flows.logout_all(current_identity())
    request_auth().clear_cookies = True
    return no_content()


@auth_bp.get("/sessions")
@login_required(api_key=False)  # a program's key does not read where its owner logs in
@document(responses={200: schemas.SessionsOut})
async def sessions() -> Response:
    """The user's live sessions."""
    found = await get_gate().manager.sessions(current_identity())
    return jsonify({"sessions": [s.to_json() for s in found]})


@auth_bp.delete("/sessions/<session_id>")
@login_required(api_key=False)
@document(responses={204: None}, errors={404: ["not_found"]})
async def delete_session(session_id: str) -> Response:
    """End one of the user's sessions."""
    me = current_identity()
    await flows.end_session(me, session_id)
    if session_id == me.session_id:
        request_auth().clear_cookies = True
    return no_content()


@auth_bp.post("/password")
@login_required(api_key=False)
@document(
    body=schemas.PasswordChange,
    responses={204: None},
    errors={401: ["invalid_credentials"], 403: ["api_key_not_allowed"], 429: ["too_many_attempts"]},
)
async def change_password() -> Response:
    """Change the password; every other session ends."""
    require_own_users()
    body = await read_body(schemas.PasswordChange)
    await flows.change_password(
        current_identity(), body.current_password, body.new_password, request_address()
    )
    return no_content()


@auth_bp.post("/password-reset/request")
@document(
    body=schemas.ResetRequest,
    responses={202: schemas.Empty},
    errors={429: ["too_many_attempts"]},
)
async def password_reset_request() -> tuple[Response, int]:
    """Send a single-use reset token to the user, if there is one; always 202."""
    require_own_users()
    body = await read_body(schemas.ResetRequest)
    await flows.request_password_reset(body.username, request_address())
    return jsonify({}), 202


@auth_bp.post("/password-reset/confirm")
@document(
    body=schemas.ResetConfirm,
    responses={204: None},
    errors={401: ["invalid_token"]},
)
async def password_reset_confirm() -> Response:
    """Set a new password with a reset token; every session of the user ends."""
    require_own_users()
    body = await read_body(schemas.ResetConfirm)
    await flows.reset_password(body.token, body.new_password)
    return no_content()
