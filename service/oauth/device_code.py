"""The device-code grant (RFC 8628 sections 3.4 and 3.5): a device polls for its session.

``grant_type=urn:ietf:params:oauth:grant-type:device_code`` with the
``device_code`` from ``POST /oauth/device_authorization`` and the same
``client_id`` (if one was given there; the device is a public client and
does not authenticate, section 3.4). Until a person confirms the code the
answer is ``authorization_pending``; a poll sooner than the interval after
the previous one is ``slow_down`` and the interval grows by 5 seconds, each
time; then ``access_denied``, ``expired_token``, or the pair of a normal
session (access and refresh tokens) exactly once: a code is used once, and a
second poll is ``invalid_grant``, as is a code of another client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..dpop import VerifiedProof
from ..errors import InvalidRequest
from ..identity import ClientInfo
from .accounts import ServiceAccounts
from .device_logins import device_logins

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
# What a poll may answer besides a pair (RFC 8628 section 3.5), for the OpenAPI document.
ERRORS = ("invalid_grant", "authorization_pending", "slow_down", "access_denied", "expired_token")


async def grant(
    params: Mapping[str, str], accounts: ServiceAccounts, authorization: str, token_url: str,
    info: ClientInfo, proof: VerifiedProof | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Answer a device-code token request: the token response's JSON.

    With a DPoP ``proof`` on the poll that succeeds, the session is bound to its key.
    """
    device_code = params.get("device_code")
    if device_code is None:
        raise InvalidRequest("device_code is missing.")
    logins = device_logins(accounts.manager)
    jkt = proof.jkt if proof is not None else None
    pair, scope = await logins.poll(device_code, params.get("client_id"), jkt=jkt)
    return {**pair.to_json(), "scope": scope}
