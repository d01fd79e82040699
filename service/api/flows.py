"""The session actions of the API and the account page, with their logs and metrics.

``/auth/*`` and the account page's own routes call these, so both write the
same security events (``tokengate.security``) and count the same metrics.
"""

from __future__ import annotations

from typing import Any

import jwt

from ..dpop import VerifiedProof
from ..errors import ApiError, RefreshReused, TooManyAttempts, Unauthorized
from ..guard import get_gate
from ..identity import ClientInfo, Identity
from ..logs import security_event
from ..metrics import metrics
from ..tokens import TokenPair

# A username is the user's to choose: enough of it to recognise, no more.
NAME_CHARS = 64


async def login(
    username: str, password: str, client: ClientInfo, device_token: str | None = None,
    jkt: str | None = None,
) -> TokenPair:  # fmt: skip
    """Password login; counts the outcome and logs failures and throttling."""
    try:
        pair = await get_gate().accounts.login(username, password, client, device_token, jkt=jkt)
    except ApiError as exc:
        metrics().logins.labels(exc.error).inc()
        if isinstance(exc, TooManyAttempts):
            security_event(
                "login_throttled", username=username[:NAME_CHARS], ip=client.ip,
                retry_after=exc.retry_after,
            )  # fmt: skip
        elif isinstance(exc, Unauthorized):
            security_event("login_failed", username=username[:NAME_CHARS], ip=client.ip)
        raise
    metrics().logins.labels("ok").inc()
    security_event(
        "login", username=username[:NAME_CHARS], session_id=pair.session_id, ip=client.ip
    )
    return pair


async def refresh(token: str, proof: VerifiedProof | None = None) -> TokenPair:
    """Refresh-token exchange; counts the outcome, logs reuse (the session ends)."""
    gate = get_gate()
    try:
        pair = await gate.manager.refresh(token, proof=proof, required=gate.proofs.required)
    except ApiError as exc:
        metrics().refreshes.labels(exc.error).inc()
        if isinstance(exc, RefreshReused):
            metrics().refresh_reuse.inc()
            claims = _unverified(token)
            security_event(
                "refresh_reused", user_id=claims.get("sub"), session_id=claims.get("sid")
            )
            security_event(
                "session_ended", reason="refresh_reused", user_id=claims.get("sub"),
                session_id=claims.get("sid"),
            )  # fmt: skip
        raise
    metrics().refreshes.labels("ok").inc()
    return pair


async def logout(identity: Identity) -> None:
    await get_gate().manager.logout(identity)
    _ended("logout", identity.user_id, identity.session_id)


async def logout_all(identity: Identity) -> None:
    await get_gate().manager.end_all(identity.user_id)
    _ended("logout_all", identity.user_id, "*")


async def end_session(identity: Identity, session_id: str) -> None:
    await get_gate().manager.end_session(identity, session_id)
    _ended("ended_by_user", identity.user_id, session_id, by=identity.session_id)


async def change_password(identity: Identity, current: str, new: str, address: str) -> None:
    try:
        await get_gate().accounts.change_password(identity, current, new, address)
    except Unauthorized as exc:
        security_event(
            "password_change_failed", user_id=identity.user_id, session_id=identity.session_id,
            code=exc.error,
        )  # fmt: skip
        raise
    security_event("password_changed", user_id=identity.user_id, session_id=identity.session_id)
    _ended("password_changed", identity.user_id, "*", kept=identity.session_id)


async def request_password_reset(username: str, ip: str) -> None:
    gate = get_gate()
    try:
        await gate.accounts.request_password_reset(username, gate.sender, ip)
    except TooManyAttempts:
        security_event("password_reset_throttled", username=username[:NAME_CHARS], ip=ip or None)
        raise
    # Whether the user exists is not logged either: the answer is the same.
    security_event("password_reset_requested", username=username[:NAME_CHARS], ip=ip or None)


async def reset_password(token: str, new_password: str) -> None:
    try:
        await get_gate().accounts.reset_password(token, new_password)
    except Unauthorized:
        security_event("password_reset_failed")
        raise
    user_id = _unverified(token).get("sub")  # the manager has just verified it
    security_event("password_reset", user_id=user_id)
    _ended("password_reset", user_id, "*")


def _ended(reason: str, user_id: Any, session_id: str, **fields: Any) -> None:
    security_event("session_ended", reason=reason, user_id=user_id, session_id=session_id, **fields)


def _unverified(token: str) -> dict[str, Any]:
    """The claims of a token the manager has checked, for the log line (ids only)."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims
