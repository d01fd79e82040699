"""``TokenAuth``: the ``httpx.Auth`` that keeps a client logged in.

The pieces it puts together, each in its own module:

    _flow.py     the pure flows: operations, the request flow, refresh and login
    _device.py   the pure flows of the device login (RFC 8628)
    _flight.py   the single flight: one renewal for any number of requests
    _edges.py    the blocking and the async edge that run the flows
    _tokens.py   ``Tokens`` and the ``TokenStore`` protocol
    _store.py    ``MemoryTokenStore`` and ``FileTokenStore``
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator
from functools import partial
from typing import Any

import httpx

from ._device import DeviceCode, poll_flow, start_flow
from ._edges import (
    AsyncEdge,
    SyncEdge,
    async_client_call,
    client_call,
    resolve_async,
    resolve_sync,
)
from ._flight import SingleFlight
from ._flow import (
    Clock,
    Credentials,
    ErrorHook,
    LoginRequiredHook,
    Op,
    Push,
    Renew,
    Send,
    TokensHook,
    endpoint,
    login_flow,
    request_flow,
    same_origin,
)
from ._grants import TOKEN_PATH, ClientCredentials, fetch_flow
from ._program_flows import check_api_key, key_flow, limit_flow
from ._store import MemoryTokenStore
from ._tokens import Tokens, TokenStore

log = logging.getLogger("tokengate.client")
# on_code(verification_uri, verification_uri_complete, user_code), sync or async.
OnCode = Callable[[str, str, str], object]


class TokenAuth(httpx.Auth):
    """Bearer tokens that refresh themselves, for any ``httpx.Client`` or ``AsyncClient``.

    It attaches the stored access token to each request, refreshes it first
    when it is within ``refresh_margin`` seconds of expiry (never earlier than
    half its lifetime), and on ``401 token_expired`` sends the request again
    with newer tokens (the newest stored, or a refresh's; a token may expire
    while its request waits for a pooled connection). Concurrent requests
    share one refresh. ``base_url``
    is where the ``/auth`` routes live (default: the origin of each request);
    when it, or the base URL of the client it is bound to (``bind``), is known,
    only requests to that origin carry the token or may push a new one;
    ``credentials``, a callable returning ``(username, password)``, sync or
    async, lets it log in again when the session is over; the ``on_*`` hooks,
    sync or async, hear of new tokens, failed refreshes and required logins.
    ``clock`` is the time source, for tests and skewed hosts.

    ``api_key="tgk_..."`` sends that key instead (as is, never refreshed: a
    ``401`` raises ``LoginRequired``). A ``429`` raises ``RateLimited``
    unless its ``Retry-After`` is at most ``rate_limit_wait`` seconds (default
    0): then the request waits and is sent once more.
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
        api_key: str | None = None,
        rate_limit_wait: float = 0,
    ) -> None:
        if refresh_margin < 0:
            raise ValueError("refresh_margin must not be negative")
        if rate_limit_wait < 0:
            raise ValueError("rate_limit_wait must not be negative")
        if api_key is not None and credentials is not None:
            raise ValueError("an API key needs no credentials: pass one or the other")
        self._api_key = check_api_key(api_key) if api_key is not None else None
        self.rate_limit_wait = rate_limit_wait
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
        self._single_flight = SingleFlight()
        self._sync = SyncEdge(self)
        self._async = AsyncEdge(self, self._sync)
        # The base_url of the client this auth is bound to, if one is.
        self._client_base_url: Callable[[], httpx.URL] | None = None
        # A service account's client credentials: renewals fetch a new token with them.
        self.grant: ClientCredentials | None = None

    def __repr__(self) -> str:
        return f"TokenAuth(token_store={self.token_store!r}, refresh_margin={self.refresh_margin})"

    @property
    def tokens(self) -> Tokens | None:
        """The stored tokens (their repr shows neither token)."""
        return self.token_store.load()

    def bind(self, client: httpx.Client | httpx.AsyncClient) -> None:
        """Send this auth's own ``/auth`` requests (refresh, login) through ``client``.

        Its transport, timeouts, proxies and event hooks then apply to them
        too, and its ``base_url`` names the service when this auth has none:
        only requests to that origin carry the token. ``AuthClient`` and
        ``AsyncAuthClient`` bind their auth to themselves.
        """
        if isinstance(client, httpx.AsyncClient):
            self._async.call = async_client_call(client)
        else:
            self._sync.call = client_call(client)
        self._client_base_url = lambda: client.base_url

    # -- the policy the flows follow ---------------------------------------------
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

    def _service_url(self) -> httpx.URL | None:
        if self.base_url is not None:
            return self.base_url
        return self._client_base_url() if self._client_base_url is not None else None

    def _for_service(self, url: httpx.URL) -> bool:
        """Is ``url`` on the service? Any URL is when the service's origin is unknown."""
        service = self._service_url()
        if service is None or not service.host:
            return True
        return same_origin(url, service)

    def flow(self, request: httpx.Request) -> Generator[Op, Any, None]:
        """The request flow: stamp, refresh before or after sending, resend with newer tokens."""
        if not self._for_service(request.url):
            # Another host gets no token, and cannot push one.
            yield Send(request)
            return
        key = self._api_key

        def once() -> Generator[Op, Any, httpx.Response | None]:
            if key is not None:
                return key_flow(request, key)
            return request_flow(request, expiring=self._expiring, can_login=self._can_login)

        yield from limit_flow(once, request, self.rate_limit_wait)

    @property
    def _can_login(self) -> bool:
        """Whether new tokens can be had without the user: credentials, or a client's grant."""
        return self.credentials is not None or self.grant is not None

    def renewal(self, op: Renew) -> Generator[Op, Any, Tokens]:
        """Serve a ``Renew`` through the single flight."""
        grant, fetch = self.grant, None
        if grant is not None:
            token_url = str(endpoint(self._service_url() or op.origin, TOKEN_PATH))
            fetch = partial(fetch_flow, grant, token_url, self.clock)
        return self._single_flight.renewal(
            op, self.token_store, usable=self._usable, can_login=self._can_login,
            clock=self.clock, fetch=fetch,
        )  # fmt: skip

    def _push(self, op: Push) -> None:
        def change(current: Tokens | None) -> Tokens | None:
            if current is None or current.refresh_token != op.stamped.refresh_token:
                return current  # refreshed or logged out meanwhile: the push is stale
            pushed = current.with_access_token(op.access_token, received_at=self.clock())
            if (pushed.expires_at or 0) < (current.expires_at or 0):
                return current
            return pushed

        self.token_store.update(change)

    def hook(self, name: str) -> Callable[[Any], object] | None:
        return self._hooks.get(name)

    def hook_failed(self, name: str) -> None:
        log.exception("the on_%s hook raised", name)

    # -- httpx's entry points --------------------------------------------------
    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        return self._sync.auth_flow(request)

    def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        return self._async.auth_flow(request)

    # -- login and refresh on demand (what the clients' methods use) ------------
    def _origin(self, doing: str) -> httpx.URL:
        origin = self._service_url()
        if origin is None or not str(origin):
            raise ValueError(f"base_url is required for {doing}()")
        return origin

    def sync_login(self, username: str, password: str, device: str | None = None) -> Tokens:
        """Log in through the blocking edge and store the new tokens."""
        flow = login_flow(username, password, device, clock=self.clock)
        tokens = self._sync.run(flow, self._origin("login"))
        self.token_store.save(tokens)
        return tokens

    async def async_login(self, username: str, password: str, device: str | None = None) -> Tokens:
        """Log in through the async edge and store the new tokens."""
        flow = login_flow(username, password, device, clock=self.clock)
        tokens = await self._async.run(flow, self._origin("login"))
        self.token_store.save(tokens)
        return tokens

    def sync_login_device(
        self, on_code: OnCode, *, client_id: str | None, scope: str | None, device: str | None
    ) -> Tokens:
        """The device login through the blocking edge; store and return the new tokens."""
        origin = self._origin("login_device")
        code: DeviceCode = self._sync.run(
            start_flow(client_id=client_id, scope=scope, device=device), origin
        )
        resolve_sync(on_code(code.verification_uri, code.verification_uri_complete, code.user_code))
        tokens = self._sync.run(poll_flow(code, client_id=client_id, clock=self.clock), origin)
        self.token_store.save(tokens)
        return tokens

    async def async_login_device(
        self, on_code: OnCode, *, client_id: str | None, scope: str | None, device: str | None
    ) -> Tokens:
        """The device login through the async edge; store and return the new tokens."""
        origin = self._origin("login_device")
        code: DeviceCode = await self._async.run(
            start_flow(client_id=client_id, scope=scope, device=device), origin
        )
        await resolve_async(
            on_code(code.verification_uri, code.verification_uri_complete, code.user_code)
        )
        flow = poll_flow(code, client_id=client_id, clock=self.clock)
        tokens = await self._async.run(flow, origin)
        self.token_store.save(tokens)
        return tokens

    def sync_refresh(self) -> Tokens:
        """Refresh now (shared with any refresh under way); return the new tokens."""
        origin = self._origin("refresh")
        return self._sync.run(self.renewal(Renew(self.tokens, origin)), origin)

    async def async_refresh(self) -> Tokens:
        """Refresh now (shared with any refresh under way); return the new tokens."""
        origin = self._origin("refresh")
        return await self._async.run(self.renewal(Renew(self.tokens, origin)), origin)
