"""The device login (RFC 8628) as pure flows: ask for a code, then poll until it is confirmed.

Like ``_flow.py``, these generators yield operations and do no I/O; the
edges run them. ``start_flow`` yields one ``Call`` (a form to
``/oauth/device_authorization``) and returns a ``DeviceCode``; the client
hands its addresses and user code to the caller's ``on_code``; then
``poll_flow`` yields ``Sleep(interval)`` and a ``Call`` to ``/oauth/token``
in turn until the service answers with a token pair (returned),
``access_denied`` or ``expired_token`` (raised). ``slow_down`` adds 5
seconds to the interval, for that wait and every later one (section 3.5).
A network error or a ``5xx`` (the service is briefly unavailable) is waited
out like ``authorization_pending``: the code is still good afterwards. The
flow counts the seconds it has asked to sleep and stops at ``expires_in``,
so tests drive it by hand without sleeping.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._exceptions import AuthError, DeviceAccessDenied, DeviceCodeExpired
from ._flow import (
    Call,
    Clock,
    Op,
    Sleep,
    describe,
    error_code,
    failure,
    parse_pair,
    retry_after,
    send_call,
)
from ._tokens import Tokens

DEVICE_AUTHORIZATION_PATH = "/oauth/device_authorization"
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path, not a secret
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5
DEFAULT_INTERVAL = 5  # RFC 8628 section 3.2, when the service names none


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """What the service answered to a device authorization request (section 3.2)."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int

    @classmethod
    def from_json(cls, data: Any) -> DeviceCode:
        """Read a section 3.2 response; ``ValueError`` if it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        texts = ("device_code", "user_code", "verification_uri")
        if not all(isinstance(data.get(name), str) and data[name] for name in texts):
            raise ValueError("device_code, user_code and verification_uri are required")
        expires_in, interval = data.get("expires_in"), data.get("interval", DEFAULT_INTERVAL)
        if not isinstance(expires_in, int) or not isinstance(interval, int) or interval < 0:
            raise ValueError("expires_in and interval must be whole seconds")
        complete = data.get("verification_uri_complete")
        return cls(
            device_code=data["device_code"],
            user_code=data["user_code"],
            verification_uri=data["verification_uri"],
            verification_uri_complete=(
                complete if isinstance(complete, str) and complete else data["verification_uri"]
            ),
            expires_in=expires_in,
            interval=interval,
        )


def start_flow(
    *, client_id: str | None = None, scope: str | None = None, device: str | None = None
) -> Generator[Op, Any, DeviceCode]:
    """Ask the service for a device code and a user code."""
    body = {
        name: value
        for name, value in (("client_id", client_id), ("scope", scope), ("device", device))
        if value is not None
    }
    try:
        response = yield Call("POST", DEVICE_AUTHORIZATION_PATH, body, form=True)
    except httpx.HTTPError as exc:
        raise AuthError(f"Could not start the device login: {describe(exc)}.") from exc
    if response.status_code != 200:
        raise failure(response, "start the device login")
    try:
        return DeviceCode.from_json(response.json())
    except ValueError as exc:
        raise AuthError(
            f"The service's answer is not a device code ({exc}).", response=response
        ) from None


def poll_flow(
    code: DeviceCode,
    *,
    client_id: str | None = None,
    clock: Clock | None = None,
    dpop: bool = False,
) -> Generator[Op, Any, Tokens]:
    """Poll the token endpoint until the code is confirmed: the session's token pair.

    With ``dpop`` every poll carries a fresh proof and the pair is bound to its key.
    """
    body = {"grant_type": DEVICE_GRANT, "device_code": code.device_code}
    if client_id is not None:
        body["client_id"] = client_id
    interval, waited = code.interval, 0.0
    while True:
        if waited >= code.expires_in:
            raise DeviceCodeExpired(
                "Nobody confirmed the code in time: start the device login again.",
                code="expired_token",
            )
        wait: float = interval
        yield Sleep(wait)
        waited += wait
        try:
            response = yield from send_call(Call("POST", TOKEN_PATH, body, form=True, dpop=dpop))
        except httpx.HTTPError:
            continue  # the network or the service is down for now: the code still is good
        if response.status_code == 200:
            return parse_pair(response, clock)
        error = error_code(response)
        if response.status_code >= 500:
            extra = retry_after(response) or 0.0
            if extra > interval:
                yield Sleep(extra - interval)
                waited += extra - interval
            continue
        if error in ("authorization_pending", "use_dpop_nonce"):
            # A nonce refused twice in a row (it changed meanwhile): the next
            # poll's proof carries the newest, and the code is still good.
            continue
        if error == "slow_down":
            interval += SLOW_DOWN_STEP
            continue
        if error == "access_denied":
            raise DeviceAccessDenied(
                "The login was denied on the confirmation page.", code=error, response=response
            )
        if error == "expired_token":
            raise DeviceCodeExpired(
                "Nobody confirmed the code in time: start the device login again.",
                code=error,
                response=response,
            )
        raise failure(response, "log in with the device code")
