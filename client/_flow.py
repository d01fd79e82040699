"""The client's pure flows: generators that yield operations and do no I/O.

Written once, in the manner of ``httpx/_auth.py``: each flow yields an
*operation* and is sent its result. The edges (``_edges.py``), one blocking and
one async, run them; only they send, wait, sleep or call the user's callbacks.

The request flow, ``request_flow``, yields:

    Load()                    the stored tokens
    Renew(stale, ...)         tokens newer than ``stale``: at most one refresh
    Send(request, proof_token) the response (yielded to httpx; a 401's body is read);
                              with ``proof_token``, the edge adds a fresh DPoP
                              proof for that token first
    Push(stamped, token)      None; stores an access token the service pushed

The token flows, ``obtain`` and ``login_flow``, yield:

    Call(method, path, body)  the response of an ``/auth`` (or ``/oauth/token``, a
                              form) request the edge sends itself (a
                              transport error is thrown back in); with
                              ``dpop``, carrying a fresh DPoP proof
    AskCredentials()          ``(username, password)`` from ``credentials``
    DeviceToken(username)     the device token the store keeps for ``username``
    DeviceToken(username, t)  None; the store keeps ``t`` for ``username`` from now on

A ``Renew`` is served by the single flight (``_flight.py``), which also yields
``Wait``, ``Sleep`` and ``Hook``.

DPoP (RFC 9449): the flows say which request carries a proof, for which
access token (``Send.proof_token``; ``Call.dpop`` at a token endpoint), and
send a request once more, with a fresh proof, when the service answers
``use_dpop_nonce``; once only. The edge makes each proof just before the
request goes out, with ``_dpop.make_proof`` (a pure function of the key, the
method, the URL, the token, the origin's latest ``DPoP-Nonce`` and the
clock), and notes the ``DPoP-Nonce`` of every response, per origin.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from ._exceptions import (
    AuthError,
    FreshLoginRequired,
    InvalidCredentials,
    LoginRequired,
    RateLimited,
)
from ._tokens import KEEP, Change, Tokens, unverified_claims

if TYPE_CHECKING:
    from ._flight import Flight

LOGIN_PATH = "/auth/login"
REFRESH_PATH = "/auth/refresh"
TOKEN_EXPIRED = "token_expired"  # noqa: S105 - an error code, not a secret
MISSING_TOKEN = "missing_token"  # noqa: S105 - an error code, not a secret
FRESH_LOGIN_REQUIRED = "fresh_login_required"
# The service wants a proof carrying its nonce (RFC 9449 sections 8 and 9).
USE_DPOP_NONCE = "use_dpop_nonce"
INVALID_DPOP_PROOF = "invalid_dpop_proof"
# 401 codes after which the session is over: only a new login helps.
SESSION_OVER = frozenset({"token_revoked", "session_expired", "session_replaced", "invalid_token"})

Clock = Callable[[], float]
Credentials = Callable[[], "tuple[str, str] | Awaitable[tuple[str, str]]"]
TokensHook = Callable[[Tokens], object]
ErrorHook = Callable[[AuthError], object]
LoginRequiredHook = Callable[[LoginRequired], object]


# -- operations ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Load:
    pass


@dataclass(frozen=True, slots=True)
class Send:
    request: httpx.Request
    # A DPoP-bound access token the request presents: the edge adds a fresh
    # proof for it (its hash in ``ath``). None: no proof.
    proof_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Push:
    stamped: Tokens
    access_token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Renew:
    stale: Tokens | None
    origin: httpx.URL
    # Skip the refresh and log in again: the service said the session is over.
    relogin: bool = False
    # The service's 401 code that called for new tokens, if one did.
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    body: dict[str, Any] = field(repr=False)
    # A form body (the OAuth token endpoint) instead of JSON, and headers of its own.
    form: bool = False
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    # Carry a fresh DPoP proof (no ``ath``): ask for bound tokens, or refresh bound ones.
    dpop: bool = False


@dataclass(frozen=True, slots=True)
class AskCredentials:
    pass


@dataclass(frozen=True, slots=True)
class DeviceToken:
    """Read (``token`` None) or keep the device token of ``username``'s account."""

    username: str
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Wait:
    flight: Flight


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Hook:
    name: str
    value: Any = field(repr=False)


Op = Load | Renew | Send | Push | Call | AskCredentials | DeviceToken | Wait | Sleep | Hook


@dataclass(frozen=True, slots=True)
class Renewal:
    """What one renewal came to: new tokens, or the error every waiter gets."""

    tokens: Tokens | None = None
    error: AuthError | None = None
    # The old tokens are of no further use: clear them unless replaced.
    dead: bool = False
    # Hooks to call once the flight has landed: (name, argument).
    notes: tuple[tuple[str, Any], ...] = ()

    @property
    def change(self) -> Change:
        """What the store should hold now: the new tokens, nothing, or ``KEEP``."""
        if self.tokens is not None:
            return self.tokens
        return None if self.dead else KEEP


# -- pure helpers ---------------------------------------------------------------
def error_code(response: httpx.Response) -> str | None:
    """The service's machine code: the JSON ``error``, else the RFC 6750 header's."""
    try:
        body = response.json()
    except (httpx.ResponseNotRead, ValueError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    header = response.headers.get("WWW-Authenticate", "")
    found = re.search(r'error_description="([^"]*)"', header) or re.search(
        r'error="([^"]*)"', header
    )
    return found.group(1) if found else None


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds, when the service gave a number."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def failure(response: httpx.Response, doing: str) -> AuthError:
    """The typed error for a failed ``/auth`` response (``doing``: what was tried)."""
    code = error_code(response)
    status = response.status_code
    what = f"{status} {code}" if code else str(status)
    if status == 429:
        wait = retry_after(response)
        later = f"try again in {wait:g}s" if wait is not None else "try again later"
        return RateLimited(
            f"Too many attempts ({what}): {later}.",
            code=code,
            response=response,
            retry_after=wait,
        )
    if status == 401 and code == "invalid_credentials":
        return InvalidCredentials(
            "The service refused the username or password.", code=code, response=response
        )
    if status == 401:
        return LoginRequired(
            f"The session is over ({what}) while trying to {doing}: log in again.",
            code=code,
            response=response,
        )
    return AuthError(
        f"Could not {doing}: the service answered {what}.", code=code, response=response
    )


def parse_pair(response: httpx.Response, clock: Clock | None = None) -> Tokens:
    """The token pair in a ``200`` from login or refresh, noted as arrived now by ``clock``."""
    try:
        tokens = Tokens.from_json(response.json())
        return tokens if clock is None else tokens.received(clock())
    except (ValueError, AttributeError):
        raise AuthError(
            "The service's answer is not a token pair.", code=None, response=response
        ) from None


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# A multipart body up to this size is read into memory before it is sent, so
# that it can be sent again after a refresh; a larger one is streamed once.
MAX_REPLAY_BYTES = 8 * 1024 * 1024


def make_replayable(request: httpx.Request) -> bool:
    """Make the body of ``request`` sendable twice where it can be; say whether it is.

    Bytes, text, JSON and forms are in memory already. A multipart upload of
    known length up to ``MAX_REPLAY_BYTES`` is read into memory now (with
    httpx's public ``Request.read``), so a resend carries the same bytes even
    from a file that cannot seek. A generator or other stream, and a larger
    upload, is sent once: after a ``401`` the caller sends it again.
    """
    if isinstance(request.stream, httpx.ByteStream):
        return True
    multipart = request.headers.get("Content-Type", "").startswith("multipart/form-data")
    length = request.headers.get("Content-Length", "")
    if multipart and length.isdigit() and int(length) <= MAX_REPLAY_BYTES:
        request.read()
        return True
    return False


def origin_of(url: httpx.URL) -> httpx.URL:
    return url.copy_with(path="/", query=None, fragment=None)


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_key(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port of ``url`` (a default port spelled or not)."""
    return url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme)


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    """Do ``a`` and ``b`` share scheme, host and port (a default port spelled or not)?"""
    return origin_key(a) == origin_key(b)


def endpoint(base: httpx.URL, path: str) -> httpx.URL:
    """``path`` under ``base``, the way httpx merges a client's ``base_url``."""
    return base.copy_with(path=base.path.rstrip("/") + path, query=None, fragment=None)


def stamp(request: httpx.Request, tokens: Tokens) -> Send:
    """``request`` with ``tokens``' access token: a DPoP-bound one with a proof to come."""
    if tokens.bound:
        request.headers["Authorization"] = f"DPoP {tokens.access_token}"
        return Send(request, proof_token=tokens.access_token)
    request.headers["Authorization"] = f"Bearer {tokens.access_token}"
    request.headers.pop("DPoP", None)  # a proof from an earlier send with bound tokens
    return Send(request)


def wants_nonce(response: httpx.Response) -> bool:
    """Did the service refuse a proof for want of its nonce (``400``/``401 use_dpop_nonce``)?"""
    return response.status_code in (400, 401) and error_code(response) == USE_DPOP_NONCE


def send_call(call: Call) -> Generator[Op, Any, httpx.Response]:
    """Send ``call``; a DPoP call refused with ``use_dpop_nonce`` is sent once more.

    The resend carries a fresh proof with the nonce the refusal brought (the
    edge notes every ``DPoP-Nonce``). A second refusal is the caller's to
    judge: the service keeps changing its nonce, and looping helps nobody.
    """
    response: httpx.Response = yield call
    if call.dpop and wants_nonce(response):
        response = yield call
    return response


def absorb(response: httpx.Response, stamped: Tokens) -> Generator[Op, Any, None]:
    """Store an access token the service pushed (``X-Access-Token``, implicit refresh)."""
    pushed = response.headers.get("X-Access-Token")
    if pushed and pushed != stamped.access_token and unverified_claims(pushed):
        yield Push(stamped, pushed)


# -- the token flows ------------------------------------------------------------
def login_flow(
    username: str,
    password: str,
    device: str | None = None,
    clock: Clock | None = None,
    *,
    dpop: bool = False,
) -> Generator[Op, Any, Tokens]:
    """Log in: return the new pair (arrived by ``clock``), or raise the typed error.

    With ``dpop``, the login carries a proof and the pair is bound to its key.

    The device token kept from an earlier login to this account goes along, so
    that the service throttles this login on the device's own count (an attack
    on the account from elsewhere cannot lock this device out); the one the
    service answers with is kept for the next login.
    """
    body: dict[str, Any] = {"username": username, "password": password}
    if device is not None:
        body["device"] = device
    known = yield DeviceToken(username)
    if isinstance(known, str) and known:
        body["device_token"] = known
    try:
        response = yield from send_call(Call("POST", LOGIN_PATH, body, dpop=dpop))
    except httpx.HTTPError as exc:
        raise AuthError(f"Could not log in: {describe(exc)}.") from exc
    if response.status_code != 200:
        if not dpop and error_code(response) == INVALID_DPOP_PROOF:
            raise AuthError(
                "The service requires DPoP-bound tokens: log in with dpop=True "
                "(tokengate-client login --dpop).",
                code=INVALID_DPOP_PROOF,
                response=response,
            )
        raise failure(response, "log in")
    tokens = parse_pair(response, clock)
    issued = response.json().get("device_token")
    if isinstance(issued, str) and issued and issued != known:
        yield DeviceToken(username, issued)
    return tokens


def obtain(
    tokens: Tokens | None,
    *,
    relogin: bool,
    reason: str | None,
    can_login: bool,
    clock: Clock | None = None,
    dpop: bool = False,
) -> Generator[Op, Any, Renewal]:
    """Get new tokens: refresh ``tokens``, else log in through the credentials.

    ``clock`` notes when new tokens arrived (``Tokens.received_at``). The
    refresh and the login carry a DPoP proof with ``dpop``, and whenever
    ``tokens`` are bound: a bound session refreshes only with its key's proof.

    Never raises for a failure: the outcome carries the error, whether the old
    tokens are dead (a ``401`` from the refresh) or kept (network error, other
    status), and the hooks to call.
    """
    notes: list[tuple[str, Any]] = []
    dpop = dpop or (tokens is not None and tokens.bound)
    if tokens is None:
        ended = LoginRequired("Not logged in.", code=MISSING_TOKEN)
    elif relogin:
        ended = LoginRequired(f"The session is over ({reason}): log in again.", code=reason)
    else:
        try:
            body = {"refresh_token": tokens.refresh_token}
            response = yield from send_call(Call("POST", REFRESH_PATH, body, dpop=dpop))
        except httpx.HTTPError as exc:
            error = AuthError(f"Could not refresh the tokens ({describe(exc)}); they are kept.")
            error.__cause__ = exc
            return Renewal(error=error, notes=(("refresh_failed", error),))
        if response.status_code == 200:
            try:
                fresh = parse_pair(response, clock)
            except AuthError as exc:
                return Renewal(error=exc, notes=(("refresh_failed", exc),))
            return Renewal(tokens=fresh, notes=(("refreshed", fresh),))
        failed = failure(response, "refresh the tokens")
        if not isinstance(failed, LoginRequired):
            return Renewal(error=failed, notes=(("refresh_failed", failed),))
        ended = failed
        notes.append(("refresh_failed", ended))
    if not can_login:
        notes.append(("login_required", ended))
        return Renewal(error=ended, dead=True, notes=tuple(notes))
    try:
        pair = yield AskCredentials()
        if not (
            isinstance(pair, tuple | list)
            and len(pair) == 2
            and all(isinstance(p, str) for p in pair)
        ):
            raise TypeError("credentials must return (username, password)")
        fresh = yield from login_flow(pair[0], pair[1], clock=clock, dpop=dpop)
    except LoginRequired as exc:  # InvalidCredentials among them
        notes.append(("login_required", exc))
        return Renewal(error=exc, dead=True, notes=tuple(notes))
    except AuthError as exc:
        return Renewal(error=exc, dead=True, notes=tuple(notes))
    except Exception as exc:  # the user's credentials callable failed
        error = AuthError(f"The credentials callable failed ({describe(exc)}).")
        error.__cause__ = exc
        return Renewal(error=error, dead=True, notes=tuple(notes))
    notes.append(("refreshed", fresh))
    return Renewal(tokens=fresh, dead=True, notes=tuple(notes))


# -- the request flow -------------------------------------------------------------
# How many times one request is sent again after ``401 token_expired``. Each
# resend carries tokens newer than the ones refused (the newest stored, or a
# refresh's), so only a request that waits longer than a token's whole life
# before it goes out (queued for a pooled connection on a loaded machine) meets
# the answer again; the bound keeps a service that refuses every token from
# looping.
MAX_EXPIRED_RESENDS = 5


def request_flow(
    request: httpx.Request, *, expiring: Callable[[Tokens], bool], can_login: bool
) -> Generator[Op, Any, httpx.Response | None]:
    """A request to the service: stamp, refresh before or after sending, resend.

    ``expiring`` says whether tokens are due for a refresh before sending;
    ``can_login`` whether credentials can log in again when the session is over.
    Returns the last response (``None`` when none is the caller's to judge).

    httpx runs this flow before the request waits for a pooled connection, so
    a token fresh when stamped may have expired by the time it is sent. A
    ``401 token_expired`` is therefore resent with newer tokens: the newest
    stored ones when the refused token is not the newest (no refresh), else
    those of one refresh, shared by every concurrent request
    (``Renew``/``_flight.py``); up to ``MAX_EXPIRED_RESENDS`` times. Any other
    ``401`` that new tokens can cure is resent once. A DPoP-bound token goes
    with a fresh proof on every send, and ``401 use_dpop_nonce`` is resent
    once with the same tokens (the new proof carries the service's nonce).
    """
    origin = origin_of(request.url)
    tokens: Tokens | None = yield Load()
    if tokens is None:
        if not can_login:
            # Not logged in: the service answers for itself.
            answer: httpx.Response = yield Send(request)
            return answer
        tokens = yield Renew(None, origin, relogin=True, reason=MISSING_TOKEN)
    elif expiring(tokens):
        tokens = yield Renew(tokens, origin)
    assert tokens is not None
    resendable = make_replayable(request)
    response: httpx.Response = yield stamp(request, tokens)
    yield from absorb(response, tokens)
    expired_resends = 0
    renewed_session = False
    nonce_resent = False
    while response.status_code == 401:
        code = error_code(response)
        fresh: Tokens | None
        if code == USE_DPOP_NONCE:
            if nonce_resent or not tokens.bound:
                return response
            nonce_resent = True
            if not resendable:
                raise AuthError(
                    "The service asked for a DPoP proof with its nonce (401 use_dpop_nonce) "
                    "and this request's body is a stream that cannot be sent twice, so it "
                    "was not resent; the nonce is kept: send the request again.",
                    code=code,
                    response=response,
                )
            response = yield stamp(request, tokens)
            yield from absorb(response, tokens)
            continue
        if code == TOKEN_EXPIRED:
            if expired_resends == MAX_EXPIRED_RESENDS:
                return response
            expired_resends += 1
            # Tokens newer than the refused ones: the stored ones if they are
            # newer and usable, else one refresh for every request that needs it.
            fresh = yield Renew(tokens, origin, reason=code)
        elif renewed_session:
            return response  # new tokens were tried already for a session that was over
        elif code in SESSION_OVER and can_login:
            fresh = yield Renew(tokens, origin, relogin=True, reason=code)
        elif code in SESSION_OVER:
            # Someone logged in again since this request was stamped: use that.
            fresh = yield Load()
        elif code == FRESH_LOGIN_REQUIRED and can_login:
            # The session is fine, but this route wants a password login just now.
            fresh = yield Renew(tokens, origin, relogin=True, reason=code)
        elif code == FRESH_LOGIN_REQUIRED:
            raise FreshLoginRequired(
                f"{request.method} {request.url.path} needs a recent password login: "
                "log in again, then retry.",
                code=code,
                response=response,
            )
        else:
            return response
        if fresh is None or fresh == tokens:
            return response  # nothing newer to send it with: this answer is the caller's
        if code != TOKEN_EXPIRED:
            renewed_session = True
        if not resendable:
            raise AuthError(
                f"The service answered 401 {code} and this request's body is a stream that "
                "cannot be sent twice, so it was not resent; the tokens are renewed: send "
                "the request again with a new body.",
                code=code,
                response=response,
            )
        tokens = fresh
        response = yield stamp(request, tokens)
        yield from absorb(response, tokens)
    return response
