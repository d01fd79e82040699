"""``TokenAuth``: one pure flow that keeps a client logged in, and its two edges.

The flow is written once, as generators that do no I/O (the manner of
``httpx/_auth.py``): they yield *operations* and are sent their results.
Two small interpreters run them, one blocking and one async; only they send,
wait, sleep or call the user's callbacks.

The request flow, ``TokenAuth.flow(request)``, yields:

    Load()                    the stored tokens
    Renew(stale, ...)         tokens newer than ``stale``: at most one refresh
    Send(request)             the response (yielded to httpx; a 401's body is read)
    Push(stamped, token)      None; stores an access token the service pushed

The token flows, ``obtain`` and ``login_flow``, yield:

    Call(method, path, body)  the response of an ``/auth`` request the edge sends
                              itself (a transport error is thrown back in)
    AskCredentials()          ``(username, password)`` from ``credentials``

A ``Renew`` is served by ``TokenAuth._renewal``, the single flight, written once
for both edges. The first request to need new tokens becomes the *leader* and
starts a ``Flight``; every other request that needs them meanwhile waits for
that flight's outcome (``Wait``) instead of refreshing too. A request stamped
with tokens older than the stored ones simply takes the stored ones. The
leader asks the store first (``begin_refresh``: a ``FileTokenStore`` re-reads
the file, and may say another process is refreshing: ``Sleep`` and ask
again), runs ``obtain``, stores the result and lands the flight: every waiter
gets the new tokens, or its own copy of the error, once; the next request
starts afresh. The user's hooks run after landing (``Hook``). A leader that is
cancelled lands the flight empty, and one of the waiters takes over. No lock
is held across any ``yield``: ``TokenAuth``'s lock guards a few assignments,
and a store's lock one read-modify-write of its file.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import re
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import httpx
from httpx._multipart import FileField, MultipartStream

from ._exceptions import (
    AuthError,
    FreshLoginRequired,
    InvalidCredentials,
    LoginRequired,
    RateLimited,
)
from ._store import KEEP, Change, Lease, MemoryTokenStore, Tokens, TokenStore, unverified_claims

log = logging.getLogger("tokengate.client")

LOGIN_PATH = "/auth/login"
REFRESH_PATH = "/auth/refresh"
TOKEN_EXPIRED = "token_expired"  # noqa: S105 - an error code, not a secret
MISSING_TOKEN = "missing_token"  # noqa: S105 - an error code, not a secret
FRESH_LOGIN_REQUIRED = "fresh_login_required"
# 401 codes after which the session is over: only a new login helps.
SESSION_OVER = frozenset({"token_revoked", "session_expired", "session_replaced", "invalid_token"})

T = TypeVar("T")
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


@dataclass(frozen=True, slots=True)
class AskCredentials:
    pass


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


Op = Load | Renew | Send | Push | Call | AskCredentials | Wait | Sleep | Hook


@dataclass(frozen=True, slots=True)
class Outcome:
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


def replayable(request: httpx.Request) -> bool:
    """Can this request's body be sent a second time?

    Bytes, text, JSON and forms can; so can multipart uploads of seekable files
    (httpx rewinds them). A generator or other stream cannot.
    """
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        return True
    if isinstance(stream, MultipartStream):
        return all(
            isinstance(f.file, str | bytes) or bool(getattr(f.file, "seekable", bool)())
            for f in stream.fields
            if isinstance(f, FileField)
        )
    return False


def origin_of(url: httpx.URL) -> httpx.URL:
    return url.copy_with(path="/", query=None, fragment=None)


DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    """Do ``a`` and ``b`` share scheme, host and port (a default port spelled or not)?"""

    def key(url: httpx.URL) -> tuple[str, str, int | None]:
        return url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme)

    return key(a) == key(b)


def endpoint(base: httpx.URL, path: str) -> httpx.URL:
    """``path`` under ``base``, the way httpx merges a client's ``base_url``."""
    return base.copy_with(path=base.path.rstrip("/") + path, query=None, fragment=None)


def stamp(request: httpx.Request, tokens: Tokens) -> httpx.Request:
    request.headers["Authorization"] = f"Bearer {tokens.access_token}"
    return request


def absorb(response: httpx.Response, stamped: Tokens) -> Generator[Op, Any, None]:
    """Store an access token the service pushed (``X-Access-Token``, implicit refresh)."""
    pushed = response.headers.get("X-Access-Token")
    if pushed and pushed != stamped.access_token and unverified_claims(pushed):
        yield Push(stamped, pushed)


# -- the token flows ------------------------------------------------------------
def login_flow(
    username: str, password: str, device: str | None = None, clock: Clock | None = None
) -> Generator[Op, Any, Tokens]:
    """Log in: return the new pair (arrived by ``clock``), or raise the typed error."""
    body: dict[str, Any] = {"username": username, "password": password}
    if device is not None:
        body["device"] = device
    try:
        response = yield Call("POST", LOGIN_PATH, body)
    except httpx.HTTPError as exc:
        raise AuthError(f"Could not log in: {describe(exc)}.") from exc
    if response.status_code == 200:
        return parse_pair(response, clock)
    raise failure(response, "log in")


def obtain(
    tokens: Tokens | None,
    *,
    relogin: bool,
    reason: str | None,
    can_login: bool,
    clock: Clock | None = None,
) -> Generator[Op, Any, Outcome]:
    """Get new tokens: refresh ``tokens``, else log in through the credentials.

    ``clock`` notes when new tokens arrived (``Tokens.received_at``).

    Never raises for a failure: the outcome carries the error, whether the old
    tokens are dead (a ``401`` from the refresh) or kept (network error, other
    status), and the hooks to call.
    """
    notes: list[tuple[str, Any]] = []
    if tokens is None:
        ended = LoginRequired("Not logged in.", code=MISSING_TOKEN)
    elif relogin:
        ended = LoginRequired(f"The session is over ({reason}): log in again.", code=reason)
    else:
        try:
            response = yield Call("POST", REFRESH_PATH, {"refresh_token": tokens.refresh_token})
        except httpx.HTTPError as exc:
            error = AuthError(f"Could not refresh the tokens ({describe(exc)}); they are kept.")
            error.__cause__ = exc
            return Outcome(error=error, notes=(("refresh_failed", error),))
        if response.status_code == 200:
            try:
                fresh = parse_pair(response, clock)
            except AuthError as exc:
                return Outcome(error=exc, notes=(("refresh_failed", exc),))
            return Outcome(tokens=fresh, notes=(("refreshed", fresh),))
        failed = failure(response, "refresh the tokens")
        if not isinstance(failed, LoginRequired):
            return Outcome(error=failed, notes=(("refresh_failed", failed),))
        ended = failed
        notes.append(("refresh_failed", ended))
    if not can_login:
        notes.append(("login_required", ended))
        return Outcome(error=ended, dead=True, notes=tuple(notes))
    try:
        pair = yield AskCredentials()
        if not (
            isinstance(pair, tuple | list)
            and len(pair) == 2
            and all(isinstance(p, str) for p in pair)
        ):
            raise TypeError("credentials must return (username, password)")
        fresh = yield from login_flow(pair[0], pair[1], clock=clock)
    except LoginRequired as exc:  # InvalidCredentials among them
        notes.append(("login_required", exc))
        return Outcome(error=exc, dead=True, notes=tuple(notes))
    except AuthError as exc:
        return Outcome(error=exc, dead=True, notes=tuple(notes))
    except Exception as exc:  # the user's credentials callable failed
        error = AuthError(f"The credentials callable failed ({describe(exc)}).")
        error.__cause__ = exc
        return Outcome(error=error, dead=True, notes=tuple(notes))
    notes.append(("refreshed", fresh))
    return Outcome(tokens=fresh, dead=True, notes=tuple(notes))


# -- the single flight -------------------------------------------------------------
def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Flight:
    """One renewal in progress, which any number of requests, threads or tasks wait for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        # None when the leader was cancelled before it had an outcome.
        self.outcome: Outcome | None = None

    def land(self, outcome: Outcome | None) -> None:
        with self._lock:
            self.outcome = outcome
            self._done.set()
            waiters, self._waiters = self._waiters, []
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, future in waiters:
            if loop is running:
                _wake(future)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_wake, future)

    def wait(self) -> Outcome | None:
        self._done.wait()
        return self.outcome

    async def wait_async(self) -> Outcome | None:
        loop = asyncio.get_running_loop()
        # A future of this waiter's own: cancelling one waiter touches no other.
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._done.is_set():
                return self.outcome
            self._waiters.append((loop, future))
        await future
        return self.outcome


def deliver(outcome: Outcome, *, shared: bool) -> Tokens:
    """The outcome's tokens, or raise its error (a copy of it for each waiter)."""
    if outcome.error is not None:
        if not shared:
            raise outcome.error
        error = copy.copy(outcome.error)
        raise error.with_traceback(None) from outcome.error.__cause__
    assert outcome.tokens is not None
    return outcome.tokens


class _Step:
    """Drives a flow: sends the last result in, or throws the last error in."""

    __slots__ = ("error", "result", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.error: Exception | None = None
        self.result: Any = None

    def next(self, flow: Generator[Op, Any, Any]) -> Op | None:
        error, self.error = self.error, None
        try:
            return flow.throw(error) if error is not None else flow.send(self.value)
        except StopIteration as stop:
            self.result = stop.value
            return None


async def _awaited(value: Awaitable[T]) -> T:
    return await value


def _resolve_sync(value: Any) -> Any:
    # An async callable given to the blocking client runs on a loop of its own.
    return asyncio.run(_awaited(value)) if inspect.isawaitable(value) else value


async def _resolve_async(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


SyncCall = Callable[[Call, httpx.URL], httpx.Response]
AsyncCall = Callable[[Call, httpx.URL], Awaitable[httpx.Response]]


class TokenAuth(httpx.Auth):
    """Bearer tokens that refresh themselves, for any ``httpx.Client`` or ``AsyncClient``.

    It attaches the stored access token to each request, refreshes it first
    when it is within ``refresh_margin`` seconds of expiry (never earlier than
    half its lifetime), and on ``401 token_expired`` refreshes once and sends
    the request once more. Concurrent requests share one refresh. ``base_url``
    is where the ``/auth`` routes live (default: the origin of each request);
    when it, or the base URL of the ``AuthClient`` it belongs to, is known,
    only requests to that origin carry the token or may push a new one;
    ``credentials``, a callable returning ``(username, password)``, sync or
    async, lets it log in again when the session is over; the ``on_*`` hooks,
    sync or async, hear of new tokens, failed refreshes and required logins.
    ``clock`` is the time source, for tests and skewed hosts.
    """

    def __init__(
        self,
        base_url: httpx.URL | str | None = None,
        *,
        token_store: TokenStore | None = None,
        refresh_margin: float = 30,
        credentials: Credentials | None = None,
        on_refreshed: TokensHook | None = None,
        on_refresh_failed: ErrorHook | None = None,
        on_login_required: LoginRequiredHook | None = None,
        clock: Clock = time.time,
    ) -> None:
        if refresh_margin < 0:
            raise ValueError("refresh_margin must not be negative")
        self.base_url = httpx.URL(base_url) if base_url is not None else None
        self.token_store = token_store if token_store is not None else MemoryTokenStore()
        self.refresh_margin = refresh_margin
        self.credentials = credentials
        self.clock = clock
        self._hooks: dict[str, Callable[[Any], object] | None] = {
            "refreshed": on_refreshed,
            "refresh_failed": on_refresh_failed,
            "login_required": on_login_required,
        }
        self._lock = threading.Lock()
        self._flight: Flight | None = None
        # How /auth requests are sent; a client binds its own (same transport, same hooks).
        self._sync_call: SyncCall = self._own_sync_call
        self._async_call: AsyncCall = self._own_async_call
        # The base_url of the client this auth belongs to, when a client binds it.
        self._client_base_url: Callable[[], httpx.URL] | None = None

    def __repr__(self) -> str:
        return f"TokenAuth(token_store={self.token_store!r}, refresh_margin={self.refresh_margin})"

    @property
    def tokens(self) -> Tokens | None:
        """The stored tokens (their repr shows neither token)."""
        return self.token_store.load()

    # -- the pure part ----------------------------------------------------------
    def _expiring(self, tokens: Tokens) -> bool:
        """Is ``tokens``' access token within the refresh margin of its expiry?

        Judged by the local clock (``Tokens.local_expiry``), so a clock that runs
        ahead of or behind the service's does not refresh early or late.
        """
        expiry = tokens.local_expiry
        if expiry is None or tokens.expires_at is None:
            return False
        margin = self.refresh_margin
        if tokens.issued_at is not None:
            # A margin as long as the token's life would refresh on every request.
            margin = min(margin, (tokens.expires_at - tokens.issued_at) / 2)
        return self.clock() >= expiry - margin

    def _usable(self, tokens: Tokens) -> bool:
        return not self._expiring(tokens)

    def _for_service(self, url: httpx.URL) -> bool:
        """Is ``url`` on the service? Any URL is when the service's origin is unknown."""
        service = self.base_url
        if service is None and self._client_base_url is not None:
            service = self._client_base_url()
        if service is None or not service.host:
            return True
        return same_origin(url, service)

    def flow(self, request: httpx.Request) -> Generator[Op, Any, None]:
        """The request flow: stamp, refresh before or after sending, retry once."""
        if not self._for_service(request.url):
            # Another host gets no token, and cannot push one.
            yield Send(request)
            return
        origin = origin_of(request.url)
        tokens: Tokens | None = yield Load()
        if tokens is None:
            if self.credentials is None:
                yield Send(request)  # not logged in: the service answers for itself
                return
            tokens = yield Renew(None, origin, relogin=True, reason=MISSING_TOKEN)
        elif self._expiring(tokens):
            tokens = yield Renew(tokens, origin)
        assert tokens is not None
        response: httpx.Response = yield Send(stamp(request, tokens))
        yield from absorb(response, tokens)
        if response.status_code != 401:
            return
        code = error_code(response)
        fresh: Tokens | None
        if code == TOKEN_EXPIRED:
            fresh = yield Renew(tokens, origin, reason=code)
        elif code in SESSION_OVER and self.credentials is not None:
            fresh = yield Renew(tokens, origin, relogin=True, reason=code)
        elif code in SESSION_OVER:
            # Someone logged in again since this request was stamped: use that.
            fresh = yield Load()
            if fresh is None or fresh == tokens:
                return
        elif code == FRESH_LOGIN_REQUIRED and self.credentials is not None:
            fresh = yield Renew(tokens, origin, relogin=True, reason=code)
        elif code == FRESH_LOGIN_REQUIRED:
            raise FreshLoginRequired(
                f"{request.method} {request.url.path} needs a recent password login: "
                "log in again, then retry.",
                code=code,
                response=response,
            )
        else:
            return
        assert fresh is not None
        if not replayable(request):
            raise AuthError(
                f"The service answered 401 {code} and this request's body is a stream that "
                "cannot be sent twice, so it was not resent; the tokens are renewed: send "
                "the request again with a new body.",
                code=code,
                response=response,
            )
        response = yield Send(stamp(request, fresh))
        yield from absorb(response, fresh)

    # -- the single flight, shared by both edges -------------------------------
    def _join(self, stale: Tokens | None) -> Tokens | tuple[Flight, bool]:
        with self._lock:
            if self._flight is not None:
                return self._flight, False
            current = self.token_store.load()
            if current is not None and current != stale and self._usable(current):
                return current
            self._flight = Flight()
            return self._flight, True

    def _land(self, flight: Flight, outcome: Outcome | None) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None
        flight.land(outcome)

    def _renewal(self, op: Renew) -> Generator[Op, Any, Tokens]:
        """Serve a ``Renew``: join the flight in progress, or lead a new one."""
        while True:
            turn = self._join(op.stale)
            if isinstance(turn, Tokens):
                return turn
            flight, leading = turn
            if leading:
                break
            landed = yield Wait(flight)
            if landed is not None:
                return deliver(landed, shared=True)
            # Its leader was cancelled: lead in its place, or wait for whoever does.
        outcome: Outcome | None = None
        try:
            outcome = yield from self._lead(op)
        except AuthError as exc:  # the store could not be locked
            outcome = Outcome(error=exc)
        finally:
            self._land(flight, outcome)
        assert outcome is not None
        for name, value in outcome.notes:
            yield Hook(name, value)
        return deliver(outcome, shared=False)

    def _lead(self, op: Renew) -> Generator[Op, Any, Outcome]:
        while True:
            claim = self.token_store.begin_refresh(op.stale, self._usable)
            if isinstance(claim, Tokens):
                return Outcome(tokens=claim)  # another process refreshed already
            if isinstance(claim, Lease):
                break
            yield Sleep(claim)
        lease, change = claim, cast(Change, KEEP)
        try:
            outcome = yield from obtain(
                lease.tokens,
                relogin=op.relogin and lease.tokens == op.stale,
                reason=op.reason,
                can_login=self.credentials is not None,
                clock=self.clock,
            )
            change = outcome.change
        finally:
            self._end_refresh(lease, change)
        if outcome.error is not None:
            log.warning("could not renew the tokens: %s", outcome.error)
        else:
            assert outcome.tokens is not None
            log.info("tokens renewed (session %s)", outcome.tokens.session_id)
        return outcome

    def _end_refresh(self, lease: Lease, change: Change) -> None:
        """Store the refresh's result and release the lease; try twice, never raise.

        The outcome stands either way: the service has rotated the refresh
        token, so its new pair is what every waiter needs, even when the store
        could not take it (the file lock timed out, say).
        """
        for attempt in (1, 2):
            try:
                self.token_store.end_refresh(lease, change)
                return
            except Exception as exc:
                again = "; trying once more" if attempt == 1 else ""
                log.warning("could not store the refresh's result: %s%s", describe(exc), again)

    def _push(self, op: Push) -> None:
        def change(current: Tokens | None) -> Tokens | None:
            if current is None or current.refresh_token != op.stamped.refresh_token:
                return current  # refreshed or logged out meanwhile: the push is stale
            pushed = current.with_access_token(op.access_token, received_at=self.clock())
            if (pushed.expires_at or 0) < (current.expires_at or 0):
                return current
            return pushed

        self.token_store.update(change)

    def _hook_failed(self, name: str) -> None:
        log.exception("the on_%s hook raised", name)

    # -- the blocking edge --------------------------------------------------------
    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self.flow(request)
        origin = origin_of(request.url)
        step = _Step()
        try:
            while (op := step.next(flow)) is not None:
                if isinstance(op, Send):
                    response = yield op.request
                    if response.status_code == 401:
                        response.read()
                    step.value = response
                    continue
                try:
                    step.value = self._do_sync(op, origin)
                except Exception as exc:
                    step.error = exc
        finally:
            flow.close()

    def _run_sync(self, flow: Generator[Op, Any, T], origin: httpx.URL) -> T:
        """Run a flow that sends nothing through httpx (a token flow, a renewal)."""
        step = _Step()
        try:
            while (op := step.next(flow)) is not None:
                try:
                    step.value = self._do_sync(op, origin)
                except Exception as exc:
                    step.error = exc
            return cast(T, step.result)
        finally:
            flow.close()

    def _do_sync(self, op: Op, origin: httpx.URL) -> Any:
        if isinstance(op, Load):
            return self.token_store.load()
        if isinstance(op, Renew):
            return self._run_sync(self._renewal(op), op.origin)
        if isinstance(op, Push):
            return self._push(op)
        if isinstance(op, Call):
            return self._sync_call(op, origin)
        if isinstance(op, AskCredentials):
            assert self.credentials is not None
            return _resolve_sync(self.credentials())
        if isinstance(op, Wait):
            return op.flight.wait()
        if isinstance(op, Sleep):
            time.sleep(op.seconds)
            return None
        if isinstance(op, Hook):
            hook = self._hooks.get(op.name)
            if hook is not None:
                try:
                    _resolve_sync(hook(op.value))
                except Exception:
                    self._hook_failed(op.name)
            return None
        raise TypeError(f"unknown operation {op!r}")

    def _own_sync_call(self, call: Call, origin: httpx.URL) -> httpx.Response:
        with httpx.Client() as http:
            return http.request(
                call.method, endpoint(self.base_url or origin, call.path), json=call.body
            )

    # -- the async edge -----------------------------------------------------------
    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self.flow(request)
        origin = origin_of(request.url)
        step = _Step()
        try:
            while (op := step.next(flow)) is not None:
                if isinstance(op, Send):
                    response = yield op.request
                    if response.status_code == 401:
                        await response.aread()
                    step.value = response
                    continue
                try:
                    step.value = await self._do_async(op, origin)
                except Exception as exc:
                    step.error = exc
        finally:
            flow.close()

    async def _run_async(self, flow: Generator[Op, Any, T], origin: httpx.URL) -> T:
        """Run a flow that sends nothing through httpx (a token flow, a renewal)."""
        step = _Step()
        try:
            while (op := step.next(flow)) is not None:
                try:
                    step.value = await self._do_async(op, origin)
                except Exception as exc:
                    step.error = exc
            return cast(T, step.result)
        finally:
            flow.close()

    async def _do_async(self, op: Op, origin: httpx.URL) -> Any:
        # Load, Push and the store calls inside a renewal touch a file at most
        # (a stat; one locked read-modify-write of a small file), never the
        # network, so they run inline: in a thread, a cancelled caller could
        # leave a refresh lease behind.
        if isinstance(op, Renew):
            return await self._run_async(self._renewal(op), op.origin)
        if isinstance(op, Call):
            return await self._async_call(op, origin)
        if isinstance(op, AskCredentials):
            assert self.credentials is not None
            return await _resolve_async(self.credentials())
        if isinstance(op, Wait):
            return await op.flight.wait_async()
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            return None
        if isinstance(op, Hook):
            hook = self._hooks.get(op.name)
            if hook is not None:
                try:
                    await _resolve_async(hook(op.value))
                except Exception:
                    self._hook_failed(op.name)
            return None
        assert isinstance(op, Load | Push)
        return self._do_sync(op, origin)

    async def _own_async_call(self, call: Call, origin: httpx.URL) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            return await http.request(
                call.method, endpoint(self.base_url or origin, call.path), json=call.body
            )
