"""The service's one error tree and its one handler.

::

    HTTPException (werkzeug)
    └── ApiError                     any error with a stable machine ``code``;
        │                            each subclass is also werkzeug's class
        │                            for its status, so Quart finds the handler
        ├── InvalidRequest           400 invalid_request
        │   └── OAuthError           400 invalid_scope, unsupported_grant_type,
        │                            invalid_grant (RFC 6749 section 5.2),
        │                            authorization_pending, slow_down,
        │                            access_denied, expired_token (RFC 8628 3.5),
        │                            invalid_dpop_proof, use_dpop_nonce (RFC 9449 5)
        ├── RequestTooLarge          413 request_too_large
        ├── NotFound                 404 not_found
        ├── Conflict                 409 username_taken
        ├── Forbidden                403 registration_disabled, csrf_failed
        │   ├── InsufficientScope    403 insufficient_scope (+ WWW-Authenticate, RFC 6750)
        │   └── ApiKeyNotAllowed     403 api_key_not_allowed
        ├── TooManyAttempts          429 too_many_attempts (+ Retry-After)
        │   └── RateLimited          429 rate_limited (+ Retry-After, RateLimit, RateLimit-Policy)
        ├── AuthUnavailable          503 auth_unavailable (+ Retry-After)
        └── Unauthorized             401 + WWW-Authenticate (RFC 6750)
            ├── MissingToken         missing_token
            ├── InvalidToken         invalid_token
            ├── TokenExpired         token_expired (carries the claims)
            ├── TokenRevoked         token_revoked
            ├── SessionExpired       session_expired
            ├── SessionReplaced      session_replaced
            ├── RefreshReused        refresh_reused
            ├── FreshLoginRequired   fresh_login_required
            ├── InvalidCredentials   invalid_credentials
            ├── InvalidClient        invalid_client (RFC 6749/7662, + Basic challenge)
            └── DPoPProofRefused     invalid_dpop_proof (+ DPoP challenge, RFC 9449 7.1)
                └── DPoPNonceRequired  use_dpop_nonce (+ DPoP-Nonce)

``HandsOutNonce`` is mixed into both DPoP refusals (the token endpoint's and the
resource's): with a nonce, their answer carries ``DPoP-Nonce``.

The handler renders every ``HTTPException`` (ours and Quart's own 404, 405,
413...) as ``{"error", "error_description"}``; infrastructure failures become
``503 auth_unavailable``; anything else is a logged ``500`` with no traceback
sent to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from quart import Blueprint, Quart, Response, jsonify
from werkzeug import exceptions as wz
from werkzeug.exceptions import HTTPException

log = logging.getLogger("tokengate")

REALM = "tokengate"


class ApiError(HTTPException):
    """An error with a machine code that renders itself as contract JSON."""

    code = 400
    error = "invalid_request"
    description = "The request is invalid."

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description or type(self).description)

    def extra_headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(ApiError, wz.BadRequest):
    code = 400
    error = "invalid_request"
    description = "The request is malformed."


class OAuthError(InvalidRequest):
    """A token endpoint's own ``400`` (RFC 6749 section 5.2)."""


class InvalidScope(OAuthError):
    error = "invalid_scope"
    description = "A scope asked for is unknown or not granted to this client."


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
    description = "This grant type is not supported."


class InvalidGrant(OAuthError):
    error = "invalid_grant"
    description = "The grant is invalid, expired or revoked."


class AuthorizationPending(OAuthError):
    error = "authorization_pending"
    description = "The code has not been confirmed yet; ask again after the interval."


class SlowDown(OAuthError):
    error = "slow_down"
    description = "Polling too fast: the interval is now 5 seconds longer."


class AccessDenied(OAuthError):
    error = "access_denied"
    description = "The person who confirmed the code denied the login."


class ExpiredToken(OAuthError):
    error = "expired_token"
    description = "The device code expired; start the device login again."


class HandsOutNonce(ApiError):
    """A refused DPoP proof's answer; with ``nonce``, it hands out the server's
    ``DPoP-Nonce`` (RFC 9449 sections 8 and 9), at a token endpoint or a resource."""

    def __init__(self, description: str | None = None, *, nonce: str | None = None) -> None:
        super().__init__(description)
        self.nonce = nonce

    def extra_headers(self) -> dict[str, str]:
        headers = super().extra_headers()
        if self.nonce is not None:
            headers["DPoP-Nonce"] = self.nonce
        return headers


class TokenRequestProofRefused(HandsOutNonce, OAuthError):
    """A token request's ``DPoP`` proof failed a check (RFC 9449 section 5)."""

    error = "invalid_dpop_proof"
    description = "The DPoP proof is invalid."


class TokenRequestNonceRequired(TokenRequestProofRefused):
    """A token request must carry the server's nonce (RFC 9449 section 8)."""

    error = "use_dpop_nonce"
    description = "Send the proof again with the nonce in the DPoP-Nonce header."


class RequestTooLarge(ApiError, wz.RequestEntityTooLarge):
    code = 413
    error = "request_too_large"
    description = "The request body is too large."


class NotFound(ApiError, wz.NotFound):
    code = 404
    error = "not_found"
    description = "No such resource."


class Conflict(ApiError, wz.Conflict):
    code = 409
    error = "username_taken"
    description = "That username is taken."


class Forbidden(ApiError, wz.Forbidden):
    code = 403
    error = "forbidden"
    description = "This is not allowed."


class RegistrationDisabled(Forbidden):
    error = "registration_disabled"
    description = "Registration is turned off on this server."


class CsrfFailed(Forbidden):
    error = "csrf_failed"
    description = "The X-CSRF-Token header is missing or does not match the csrf_token cookie."


class InsufficientScope(Forbidden):
    error = "insufficient_scope"
    description = "The token lacks a scope this route needs."

    def __init__(self, scopes: frozenset[str] | set[str], description: str | None = None) -> None:
        super().__init__(description)
        self.scopes = " ".join(sorted(scopes))

    def extra_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{self.scopes}"'}


class TooManyAttempts(ApiError, wz.TooManyRequests):
    code = 429
    error = "too_many_attempts"
    description = "Too many attempts; try again later."

    def __init__(self, retry_after: int, description: str | None = None) -> None:
        super().__init__(description)
        self.retry_after = max(1, int(retry_after))

    def extra_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ApiKeyNotAllowed(Forbidden):
    error = "api_key_not_allowed"
    description = "This route needs a session of a password login, not an API key."


class RateLimited(TooManyAttempts):
    """Over ``TOKENGATE_RATE_LIMIT``; the headers of the IETF httpapi RateLimit draft."""

    error = "rate_limited"
    description = "Too many requests with this credential; try again later."

    def __init__(self, retry_after: int, limit: int, window: int) -> None:
        super().__init__(retry_after)
        self.limit, self.window = limit, window

    def extra_headers(self) -> dict[str, str]:
        return {
            "Retry-After": str(self.retry_after),
            "RateLimit-Policy": f'"credential";q={self.limit};w={self.window}',
            "RateLimit": f'"credential";r=0;t={self.retry_after}',
        }


class AuthUnavailable(ApiError, wz.ServiceUnavailable):
    code = 503
    error = "auth_unavailable"
    description = "Authentication is temporarily unavailable; try again shortly."

    def extra_headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class Unauthorized(ApiError, wz.Unauthorized):
    code = 401
    error = "invalid_token"
    description = "The token is invalid."
    # The challenge's error (RFC 6750 section 3.1; RFC 9449 section 7.1 adds its own two).
    challenge_error = "invalid_token"
    # Set by the guard for a request that used the DPoP scheme (or must): the
    # challenge then names that scheme and the proof algorithms accepted.
    dpop_algs: str | None = None

    def extra_headers(self) -> dict[str, str]:
        params = f'error="{self.challenge_error}", error_description="{self.error}"'
        if self.dpop_algs is not None:
            return {"WWW-Authenticate": f'DPoP realm="{REALM}", algs="{self.dpop_algs}", {params}'}
        return {"WWW-Authenticate": f'Bearer realm="{REALM}", {params}'}


class MissingToken(Unauthorized):
    error = "missing_token"
    description = "No access token was sent."

    def extra_headers(self) -> dict[str, str]:
        if self.dpop_algs is not None:
            return {"WWW-Authenticate": f'DPoP realm="{REALM}", algs="{self.dpop_algs}"'}
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}


class DPoPProofRefused(HandsOutNonce, Unauthorized):
    """A guarded request's ``DPoP`` proof failed a check (RFC 9449 section 7.1)."""

    error = challenge_error = "invalid_dpop_proof"
    description = "The DPoP proof is invalid."


class DPoPNonceRequired(DPoPProofRefused):
    """The server wants its own nonce in the proof (RFC 9449 section 9); ``DPoP-Nonce`` has it."""

    error = challenge_error = "use_dpop_nonce"
    description = "Send the proof again with the nonce in the DPoP-Nonce header."


class InvalidToken(Unauthorized):
    error = "invalid_token"
    description = "The token is invalid."


class TokenExpired(Unauthorized):
    error = "token_expired"
    description = "The token has expired."

    def __init__(self, description: str | None = None, *, claims: dict[str, Any]) -> None:
        super().__init__(description)
        self.claims = claims


class TokenRevoked(Unauthorized):
    error = "token_revoked"
    description = "The session this token belongs to has ended."


class SessionExpired(Unauthorized):
    error = "session_expired"
    description = "The session has expired."


class SessionReplaced(Unauthorized):
    error = "session_replaced"
    description = "A newer login ended this session."


class RefreshReused(Unauthorized):
    error = "refresh_reused"
    description = "This refresh token was already used; the session has been ended."


class FreshLoginRequired(Unauthorized):
    error = "fresh_login_required"
    description = "This needs a recent password login: log in again, then retry."


class InvalidCredentials(Unauthorized):
    error = "invalid_credentials"
    description = "The username or password is wrong."


class InvalidClient(Unauthorized):
    error = "invalid_client"
    description = "The client is unknown or its secret is wrong."

    def extra_headers(self) -> dict[str, str]:
        # RFC 6749 section 5.2 requires it where the client sent Basic; HTTP wants
        # a challenge on every 401, and it tells a client how to authenticate.
        return {"WWW-Authenticate": f'Basic realm="{REALM}"'}


def is_infrastructure_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis or the database could not answer."""
    # Imported here so this module stays importable without the drivers loaded.
    import redis.exceptions
    import sqlalchemy.exc

    return isinstance(
        exc,
        redis.exceptions.ConnectionError
        | redis.exceptions.TimeoutError
        | redis.exceptions.BusyLoadingError
        | redis.exceptions.ReadOnlyError
        # A cluster that is failing over or resharding: CLUSTERDOWN, TRYAGAIN,
        # MOVED/ASK past the redirect budget, a slot no node serves yet.
        | redis.exceptions.ClusterError
        | redis.exceptions.ClusterDownError
        | redis.exceptions.TryAgainError
        | redis.exceptions.AskError
        | redis.exceptions.SlotNotCoveredError
        | redis.exceptions.MasterDownError
        # The cluster client could not (re)load the slot map from any node.
        | redis.exceptions.RedisClusterException
        | sqlalchemy.exc.OperationalError
        | sqlalchemy.exc.InterfaceError
        | sqlalchemy.exc.TimeoutError
        | ConnectionError
        | TimeoutError
        | asyncio.TimeoutError,
    ) or (
        isinstance(exc, sqlalchemy.exc.DBAPIError)
        and (exc.connection_invalidated or _sqlstate(exc).startswith(_UNAVAILABLE_SQLSTATES))
    )


# PostgreSQL errors that say the server cannot serve now, not that the request
# was wrong: a statement or lock wait it cancelled (57014, 55P03: our own
# statement_timeout and lock_timeout, db/engine.py), a shutdown or other
# operator intervention (class 57), too many connections or no disk space
# (class 53), a broken connection (class 08). psycopg files them all under
# OperationalError; through asyncpg SQLAlchemy raises a plain DBAPIError.
_UNAVAILABLE_SQLSTATES = ("08", "53", "57", "55P03")


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a database error (``57014``), or ``""`` when it has none."""
    import sqlalchemy.exc

    if not isinstance(exc, sqlalchemy.exc.DBAPIError):
        return ""
    # SQLAlchemy's asyncpg adapter copies the code onto its error; the driver's
    # own error (its cause) has it too.
    for error in (exc.orig, exc.orig.__cause__ if exc.orig is not None else None):
        code = getattr(error, "sqlstate", None)
        if isinstance(code, str):
            return code
    return ""


_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_CREDENTIALS.sub(r"\g<head>:***@", text)


def describe(exc: BaseException) -> str:
    """One log-safe line naming what went wrong: the error's class and its message.

    A database error is described by the driver's error it wraps (SQLAlchemy's
    own text adds the statement and a link); passwords in URLs are masked.
    """
    import sqlalchemy.exc

    inner: BaseException = exc
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        inner = exc.orig
    lines = str(inner).strip().splitlines()
    message = lines[0] if lines else "(no message)"
    return mask_url(f"{type(inner).__name__}: {message}")


# Our sentences for the framework's own errors: werkzeug's are written for a
# person at a browser ("If you entered the URL manually please check your
# spelling and try again.") and name the framework to whoever reads them.
_FRAMEWORK_DESCRIPTIONS = {
    400: "The request is malformed.",
    404: "No such resource.",
    405: "This method is not allowed here; the Allow header lists those that are.",
    408: "The request took too long to arrive.",
    413: "The request body is too large.",
    415: "The body's content type is not supported here.",
    431: "The request's headers are too large.",
}


def render(exc: HTTPException) -> Response:
    """Build the contract's JSON error response for ``exc``."""
    description = exc.description
    if isinstance(exc, ApiError):
        error, headers = exc.error, exc.extra_headers()
    else:
        error = {
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
            413: "request_too_large",
            415: "invalid_request",
            431: "invalid_request",
        }.get(exc.code or 400, "invalid_request" if (exc.code or 500) < 500 else "server_error")
        headers = {}
        if description == type(exc).description:  # the framework's sentence, not a caller's
            code = exc.code or 500
            fallback = "The request failed." if code < 500 else "Internal error."
            description = _FRAMEWORK_DESCRIPTIONS.get(code, fallback)
    description = description or "The request failed."
    response = jsonify({"error": error, "error_description": description})
    response.status_code = exc.code or 500
    if exc.code == 405:
        headers.update({k: v for k, v in exc.get_headers() if k.lower() == "allow"})
    response.headers.update(headers)
    return response


def api_error_codes() -> set[int]:
    """Every status code an ``ApiError`` can carry."""
    found: set[int] = set()
    pending: list[type[ApiError]] = [ApiError]
    while pending:
        cls = pending.pop()
        found.add(cls.code)
        pending.extend(cls.__subclasses__())
    return found


async def handle_api_error(exc: HTTPException) -> Response | HTTPException:
    """Render our errors inside a host app; leave the host's own HTTP errors alone."""
    return render(exc) if isinstance(exc, ApiError) else exc


async def handle_exception(exc: Exception) -> Response:
    """The one handler: every exception a request raises ends here."""
    if isinstance(exc, HTTPException):
        return render(exc)
    if is_infrastructure_failure(exc):
        log.warning("auth backend unavailable: %s", describe(exc))
        return render(AuthUnavailable())
    log.error("unhandled error in request", exc_info=exc)
    response = jsonify({"error": "server_error", "error_description": "Internal error."})
    response.status_code = 500
    return response


def register_error_handler(target: Quart | Blueprint, *, everything: bool) -> None:
    """The one way tokengate registers its error handling, on an app or a blueprint.

    ``everything`` (our blueprints, and the app of ``create_app``): every
    exception becomes contract JSON, through ``handle_exception``. Otherwise
    (a host app): our own errors render as contract JSON wherever they are
    raised (the guard runs before any view), and the host's errors stay the
    host's. Quart files handlers of HTTP errors by status code, so the handler
    is filed under each code we use, where a host has none of its own.
    """
    handler = handle_exception if everything else handle_api_error
    if everything:
        target.register_error_handler(Exception, handler)
    for code in sorted(api_error_codes()):
        if everything or code not in target.error_handler_spec[None]:
            target.register_error_handler(code, handler)
