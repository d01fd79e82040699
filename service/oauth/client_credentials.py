"""The client-credentials grant (RFC 6749 section 4.4): a service account's access token.

The client authenticates (``client_auth.py``) and gets an ordinary tokengate
access token (``typ: at+jwt``, minted by ``tokens.py``) whose ``sub`` is its
service account, carrying ``client_id`` (RFC 9068 section 2.2) and the scopes
granted: those asked for, each of which must be the client's, or all of the
client's when none is asked for. No refresh token (section 4.4.3): the
client asks again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from .. import tokens
from ..dpop import VerifiedProof
from ..errors import InvalidClient, InvalidScope
from ..identity import ClientInfo
from ..logs import security_event
from ..users import UserRecord
from .accounts import ServiceAccounts

GRANT_TYPE = "client_credentials"


def granted_scopes(asked: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The scopes of the token: all of ``allowed`` when none is asked, else the asked
    ones, each of which must be allowed (RFC 6749 section 3.3), or ``invalid_scope``."""
    if asked is None:
        return allowed
    wanted = tuple(dict.fromkeys(asked.split(" ")))
    if any(not scope for scope in wanted):
        raise InvalidScope("The scope parameter is malformed (scopes are separated by one space).")
    unknown = [scope for scope in wanted if scope not in allowed]
    if unknown:
        raise InvalidScope("A scope asked for is not granted to this client.")
    return wanted


async def grant(
    params: Mapping[str, str], accounts: ServiceAccounts, authorization: str, token_url: str,
    info: ClientInfo, proof: VerifiedProof | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Answer a client-credentials token request: the token response's JSON.

    With a DPoP ``proof`` the token is bound to its key (``cnf.jkt``, RFC 9449 section 6).
    """
    m = accounts.manager
    try:
        authenticated = await accounts.authenticator.authenticate(
            params, authorization, audiences=(token_url, m.settings.issuer), now=m.clock()
        )
    except InvalidClient:
        client_id = accounts.authenticator.claimed(params, authorization)
        security_event("client_auth_failed", client_id=client_id, ip=info.ip)
        raise
    client = authenticated.client
    scopes = granted_scopes(params.get("scope"), client.scopes)
    try:
        session = await accounts.sessions.session_for(client, authenticated.credential, info)
    except BaseException as exc:
        if not isinstance(exc, InvalidClient):  # an outage: the same request may come again
            with contextlib.suppress(Exception):
                await accounts.authenticator.forget(authenticated)
        raise
    now = m.clock()
    iat = int(now)
    ends = [iat + m.settings.access_ttl, int(session.ends_at)]
    if authenticated.credential.retire_at is not None:
        ends.append(int(authenticated.credential.retire_at))
    ttl = max(1, min(ends) - iat)
    user = UserRecord(id=client.user_id, username=client.client_id, scopes=frozenset(scopes))
    claims = {**(await m.access_claims(user, iat)), "client_id": client.client_id}
    if scopes:  # in the order granted, as the response says them
        claims["scope"] = " ".join(scopes)
    if proof is not None:
        claims["cnf"] = {"jkt": proof.jkt}
    token = tokens.mint_access(
        m.signing, user_id=str(client.user_id), username=client.client_id,
        session_id=session.session_id, jti=tokens.new_jti(), iat=iat, ttl=ttl, claims=claims,
    )  # fmt: skip
    return {
        "access_token": token,
        "token_type": "Bearer" if proof is None else "DPoP",
        "expires_in": tokens.seconds_left(iat, ttl, now),
        "scope": " ".join(scopes),
    }
