"""``POST /oauth/device_authorization`` (RFC 8628 sections 3.1 and 3.2): a device asks to log in.

A form with ``client_id``, ``scope`` and ``device`` (the name the session
will be listed with), each optional; the answer carries the device code (the
device's secret, for polling ``POST /oauth/token``), the user code a person
types at ``verification_uri`` (``/account/device``), the address with the
code filled in, the codes' lifetime and the polling interval.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic.json_schema import SkipJsonSchema
from quart import Blueprint, Response, jsonify, url_for

from ..api.auth import client_info, raw_body
from ..credentials.proofs import request_origin
from ..errors import InvalidRequest, InvalidScope, handle_exception
from ..guard import get_gate
from ..openapi import document
from .device_codes import show_user_code
from .device_logins import device_logins
from .endpoint import form_parameters, no_store
from .schemas import _SCOPE_WORD as SCOPE_WORD

device_bp = Blueprint("tokengate_device_authorization", __name__, url_prefix="/oauth")
device_bp.register_error_handler(Exception, handle_exception)
device_bp.after_request(no_store)

# RFC 6749 appendix A: a client_id is printable ASCII (VSCHAR).
_CLIENT_ID = re.compile(r"[\x20-\x7e]{1,64}")
_SCOPE_WORD = re.compile(SCOPE_WORD)
MAX_SCOPE = 1000
# As long as the column that keeps it; one space between scopes (RFC 6749 section 3.3).
Scope = Annotated[
    str, StringConstraints(max_length=1000, pattern=rf"^{SCOPE_WORD}( {SCOPE_WORD})*$")
]
# A device name: what a person will read on the confirmation page; no control characters,
# and no bidirectional controls, which could make it read as something else there.
_NOT_SHOWN = r"\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069"
_DEVICE = re.compile(rf"[^{_NOT_SHOWN}]{{1,200}}")
PAGE_ENDPOINT = "tokengate_device_page.device_page"


class DeviceAuthorizationForm(BaseModel):
    """A device authorization request (RFC 8628 section 3.1); every field is optional."""

    # Other parameters are ignored (RFC 6749 section 3.2), each sent once.
    model_config = ConfigDict(
        json_schema_extra={"additionalProperties": {"type": "string"}, "maxProperties": 20}
    )

    client_id: (
        Annotated[str, StringConstraints(pattern=r"^[\x20-\x7e]{1,64}$", max_length=64)]
        | SkipJsonSchema[None]
    ) = None
    scope: Scope | SkipJsonSchema[None] = None
    device: (
        Annotated[
            str,
            StringConstraints(pattern=rf"^[^{_NOT_SHOWN}]{{1,200}}$", max_length=200),
        ]
        | SkipJsonSchema[None]
    ) = None


class DeviceAuthorizationOut(BaseModel):
    """A device authorization response (RFC 8628 section 3.2)."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


def read_scopes(raw: str | None) -> tuple[str, ...]:
    """The scopes asked for, in order and once each; ``invalid_scope`` when malformed."""
    if raw is None:
        return ()
    if len(raw) > MAX_SCOPE:
        raise InvalidRequest(f"scope must be at most {MAX_SCOPE} characters.")
    words = raw.split(" ")
    if not all(_SCOPE_WORD.fullmatch(word) for word in words):
        raise InvalidScope("The scope parameter is malformed (scopes are separated by one space).")
    return tuple(dict.fromkeys(words))


@device_bp.post("/device_authorization")
@document(
    form=DeviceAuthorizationForm,
    responses={200: DeviceAuthorizationOut},
    errors={400: ["invalid_request", "invalid_scope"]},
)
async def device_authorization() -> Response:
    """Start a device login: a code for the device to poll with, one for a person to confirm."""
    # Every parameter is optional, so an empty body (with no form type) asks for defaults.
    params = await form_parameters() if (await raw_body()).strip() else {}
    client_id, device = params.get("client_id"), params.get("device")
    if client_id is not None and not _CLIENT_ID.fullmatch(client_id):
        raise InvalidRequest("client_id must be up to 64 printable ASCII characters.")
    if device is not None and not _DEVICE.fullmatch(device):
        raise InvalidRequest("device must be up to 200 characters, none of them control ones.")
    scopes = read_scopes(params.get("scope"))
    info = client_info(device)
    started = await device_logins(get_gate().manager).start(
        client_id=client_id, scopes=scopes, info=info
    )
    # The page's address as the person will reach it: through the trusted proxies.
    page = request_origin(get_gate().settings.trusted_proxies) + url_for(PAGE_ENDPOINT)
    return jsonify(
        {
            "device_code": started.device_code,
            "user_code": show_user_code(started.user_code),
            "verification_uri": page,
            "verification_uri_complete": f"{page}?user_code={show_user_code(started.user_code)}",
            "expires_in": started.expires_in,
            "interval": started.interval,
        }
    )
