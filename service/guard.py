"""The guard: an async ``before_request`` hook, ``login_required`` and ``current_identity``.

``login_required`` only marks a view with what it requires (scopes, a fresh
login, or nothing at all for optional authentication); the hook, which the
extension installs on the app, does the check before the view runs, so every
guarded route in the app (ours and yours) goes through the same code. The
wrapper checks again only if the hook did not run (a view called some other
way). Scopes and freshness are claims of the token: checking them costs no
lookup.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from quart import Quart, Response, current_app, request

from . import cookies
from .cookies import RequestAuth, request_auth
from .credentials.kinds import CredentialKind, read_credential, sent_api_key
from .credentials.proofs import bearer_required_check, refuse_bound, resource_check
from .dpop import DPoPError
from .errors import (
    ApiError,
    ApiKeyNotAllowed,
    AuthUnavailable,
    DPoPProofRefused,
    FreshLoginRequired,
    InsufficientScope,
    InvalidToken,
    MissingToken,
    SessionExpired,
    SessionReplaced,
    TokenRevoked,
    Unauthorized,
    is_infrastructure_failure,
)
from .identity import Identity
from .metrics import metrics
from .proxies import client_address

if TYPE_CHECKING:
    from .app import TokenGate

P = ParamSpec("P")
R = TypeVar("R")

REQUIRED_ATTR = "__tokengate_login_required__"
# Errors after which a browser's cookies are of no further use.
SESSION_OVER = (TokenRevoked, SessionExpired, SessionReplaced, InvalidToken)


# RFC 6749 section 3.3: a scope token is printable ASCII without space, '"' or '\\'.
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a view marked ``login_required`` asks of the request."""

    scopes: frozenset[str] = frozenset()
    fresh: bool = False
    optional: bool = False
    api_key: bool = True


@overload
def login_required(view: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...


@overload
def login_required(
    *, scopes: Iterable[str] = (), fresh: bool = False, optional: bool = False,
    api_key: bool = True,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]: ...  # fmt: skip


def login_required(
    view: Callable[P, Awaitable[R]] | None = None,
    /,
    *,
    scopes: Iterable[str] = (),
    fresh: bool = False,
    optional: bool = False,
    api_key: bool = True,
) -> Callable[P, Awaitable[R]] | Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Require a valid access token and a live session for a view.

    ``@login_required`` alone, or with flags: ``scopes=[...]`` answers
    ``403 insufficient_scope`` unless the token carries every one of them;
    ``fresh=True`` answers ``401 fresh_login_required`` unless the session's
    password login is at most ``TOKENGATE_FRESH_TTL`` seconds old;
    ``optional=True`` lets a request without a token through, with
    ``current_identity_or_none()`` returning ``None`` (a token that is sent is
    still checked, and refused if bad); ``api_key=False`` answers ``403
    api_key_not_allowed`` to an API key (routes that manage credentials).
    ``fresh=True`` implies ``api_key=False``: a key is never a fresh login.
    """
    needed = frozenset(scopes) if not isinstance(scopes, str) else frozenset({scopes})
    for scope in needed:
        if not SCOPE_TOKEN.match(scope):
            raise ValueError(f"not a valid scope (RFC 6749 section 3.3): {scope!r}")
    requirement = Requirement(needed, fresh, optional, api_key and not fresh)

    def decorate(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @wraps(view)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not request_auth().checked:
                await check_request(requirement)
            return await view(*args, **kwargs)

        setattr(wrapper, REQUIRED_ATTR, requirement)
        return wrapper

    return decorate(view) if view is not None else decorate


def current_identity() -> Identity:
    """The identity the guard established for this request."""
    identity = request_auth().identity
    if identity is None:
        raise MissingToken()
    return identity


def current_identity_or_none() -> Identity | None:
    """The identity of this request, or ``None`` for an anonymous one (``optional=True``)."""
    return request_auth().identity


def get_gate(app: Quart | None = None) -> TokenGate:
    """The ``TokenGate`` extension of ``app`` (default: the current app).

    The one way to reach the extension, its settings and its parts
    (``manager``, ``accounts``, ``purpose_tokens``) from application code.
    """
    gate: TokenGate = (app or current_app).extensions["tokengate"]
    return gate


async def authenticate_request(
    gate: TokenGate | None = None, state: RequestAuth | None = None
) -> Identity:
    """Run the full check for this request and remember the identity."""
    gate = gate or get_gate()
    state = state or request_auth()
    proofs = gate.proofs
    dpop_scheme = False
    try:
        # The one place that tells credential kinds apart (docs/design.md).
        try:
            credential = read_credential(gate.settings)
        except DPoPError as exc:  # two DPoP headers, which only the DPoP scheme reads
            raise DPoPProofRefused(exc.reason) from None
        kind = credential.kind
        dpop_scheme = kind is CredentialKind.DPOP_JWT
        try:
            if kind is CredentialKind.API_KEY:
                identity = await gate.api_keys.authenticate(credential.text, _address)
            elif dpop_scheme:
                check = resource_check(proofs, credential.proof, credential.text)
                identity = await gate.manager.authenticate(credential.text, sender=check)
            else:
                sender = bearer_required_check if proofs.required else refuse_bound
                identity = await gate.manager.authenticate(credential.text, sender=sender)
        except SESSION_OVER:
            state.clear_cookies = state.via_cookie
            raise
        except ApiError:
            raise
        except Exception as exc:
            # Inside a host app no catch-all handler may exist: fail closed as
            # the contract's 503 here, not as the host's 500.
            if is_infrastructure_failure(exc):
                raise AuthUnavailable() from exc
            raise
    except ApiError as exc:
        # A request that used the DPoP scheme (even one refused while it was read), or
        # any under `required`, is challenged in that scheme (RFC 9449 section 7.1).
        if isinstance(exc, Unauthorized) and (
            dpop_scheme or proofs.required or (proofs.enabled and _sent_dpop_scheme())
        ):
            exc.dpop_algs = proofs.algs
        guard_outcome(exc.error).inc()
        raise
    guard_outcome("ok").inc()
    state.identity = identity
    return identity


def _sent_dpop_scheme() -> bool:
    """Whether this request's ``Authorization`` header names the DPoP scheme."""
    scheme = request.headers.get("Authorization", "").strip().partition(" ")[0]
    return scheme.lower() == "dpop"


def _address() -> str | None:
    """The client's address through the trusted proxies (an API key's last use)."""
    settings = get_gate().settings
    found = client_address(
        request.remote_addr, request.headers.getlist("X-Forwarded-For"), settings.trusted_proxies
    )
    return found or None


def guard_outcome(outcome: str) -> Any:
    """The guard counter's child for ``outcome``, kept (``labels()`` locks on every call)."""
    m = metrics()
    child = m.guard_children.get(outcome)
    if child is None:
        child = m.guard_children[outcome] = m.guard.labels(outcome)
    return child


async def check_request(
    requirement: Requirement, gate: TokenGate | None = None, state: RequestAuth | None = None
) -> Identity | None:
    """Check this request against what its view requires; remember the identity."""
    state = state or request_auth()
    state.checked = True
    gate = gate or get_gate()
    if requirement.optional and not token_sent(gate):
        return None
    identity = await authenticate_request(gate, state)
    if identity.api_key_id is not None and not requirement.api_key:
        raise ApiKeyNotAllowed()
    if requirement.scopes and not requirement.scopes <= identity.scopes:
        raise InsufficientScope(requirement.scopes)
    if requirement.fresh and not identity.login_is_fresh(gate.clock(), gate.settings.fresh_ttl):
        raise FreshLoginRequired()
    return identity


def token_sent(gate: TokenGate) -> bool:
    """Whether this request carries an access token where the settings say to look."""
    settings = gate.settings
    if settings.use_headers and "Authorization" in request.headers:
        return True
    if sent_api_key() is not None:
        return True
    return settings.use_cookies and bool(request.cookies.get(cookies.ACCESS_COOKIE))


async def guard_view(gate: TokenGate, view: Callable[..., Any], state: RequestAuth) -> None:
    """The guard of the ``before_request`` hook: check a view marked ``login_required``."""
    requirement = getattr(view, REQUIRED_ATTR, None)
    if isinstance(requirement, Requirement):
        await check_request(requirement, gate, state)


def response_work(state: RequestAuth) -> bool:
    """Whether ``finish_response`` has anything to do for a request in this state."""
    identity = state.identity
    return state.clear_cookies or (
        identity is not None and (state.via_cookie or identity.new_access_token is not None)
    )


async def finish_response(
    response: Response, gate: TokenGate | None = None, state: RequestAuth | None = None
) -> Response:
    """The ``after_request`` hook: hand out re-issued tokens, clear dead cookies."""
    gate = gate or get_gate()
    state = state or request_auth()
    if state.clear_cookies and gate.settings.use_cookies:
        cookies.clear_cookies(response, gate.settings, gate.refresh_path)
        return response
    identity = state.identity
    if identity is None:
        return response
    via_cookie = state.via_cookie
    token, expires_in = identity.new_access_token, identity.new_access_expires_in
    if token is None and via_cookie and response.status_code < 400:
        # A browser page: re-issue the cookie before it expires, so an active
        # user never meets an expired token.
        try:
            reissued = await gate.manager.reissue_if_near_expiry(identity)
        except Exception as exc:
            # The request itself succeeded; the next one will re-issue.
            if not is_infrastructure_failure(exc):
                raise
            reissued = None
        if reissued is not None:
            token, expires_in = reissued
    if token is not None:
        response.headers["X-Access-Token"] = token
        response.headers["X-Access-Token-Expires-In"] = str(expires_in)
        if gate.settings.use_cookies and (via_cookie or not gate.settings.use_headers):
            cookies.set_access_cookie(response, gate.settings, token)
    return response
