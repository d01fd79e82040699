"""``TokenAuth``: the ``httpx.Auth`` that keeps a client logged in.

The pieces it puts together, each in its own module:

    _flow.py     the pure flows: operations, the request flow, refresh and login
    _device.py   the pure flows of the device login (RFC 8628)
    _dpop.py     DPoP keys and proofs (RFC 9449), pure
    _flight.py   the single flight: one renewal for any number of requests
    _edges.py    the blocking and the async edge that run the flows
    _tokens.py   ``Tokens`` and the ``TokenStore`` protocol
    _store.py    ``MemoryTokenStore`` and ``FileTokenStore``
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from functools import partial
from typing import Any

import httpx

from ._device import DeviceCode, poll_flow, start_flow
from ._dpop import (
    HAVE_CRYPTOGRAPHY,
    DPoPKeyError,
    DPoPUnavailable,
    ProofKey,
    generate_key,
    key_from_json,
    key_to_json,
    make_proof,
)
from ._edges import (
    AsyncEdge,
    SyncEdge,
    async_client_call,
    client_call,
    resolve_async,
    resolve_sync,
)
from ._exceptions import AuthError
from ._flight import SingleFlight
from ._flow import (
    Call,
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
    origin_key,
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
# A service's nonce longer than this is not kept: it would go into every proof.
MAX_NONCE_LENGTH = 1024


def _dpop_setting(dpop: object) -> tuple[bool, ProofKey | None]:
    """What ``dpop=`` asks for: bound tokens or not, and the caller's own key if one is given.

    ``True`` asks for a key made once and kept in the token store; a
    ``ProofKey``, a ``cryptography`` P-256 or Ed25519 private key, or a
    private JWK (as ``_dpop.key_to_json`` writes it) is the caller's own.
    """
    if dpop is False or dpop is None:
        return False, None
    if not HAVE_CRYPTOGRAPHY:
        raise DPoPUnavailable
    if dpop is True:
        return True, None
    if isinstance(dpop, ProofKey):
        return True, dpop
    if isinstance(dpop, Mapping):
        return True, key_from_json(dpop)
    return True, ProofKey.from_private_key(dpop)


def _new_key() -> dict[str, str]:
    return key_to_json(generate_key())


class Nonces:
    """The latest ``DPoP-Nonce`` each origin sent (RFC 9449 sections 8 and 9).

    Every response may bring one, an error's or a success's; the next proof
    for that origin carries it. A plain dict: one assignment or lookup at a
    time, atomic for threads.
    """

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str, int | None], str] = {}

    def get(self, url: httpx.URL) -> str | None:
        return self._latest.get(origin_key(url))

    def keep(self, url: httpx.URL, nonce: str) -> None:
        # RFC 9449's NQCHAR: printable ASCII but for the double quote and backslash.
        if 0 < len(nonce) <= MAX_NONCE_LENGTH and all(
            "!" <= c <= "~" and c not in '"\\' for c in nonce
        ):
            self._latest[origin_key(url)] = nonce


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

    ``dpop=True`` binds the tokens to a key (DPoP, RFC 9449): a P-256 key
    made once and kept in the token store beside the tokens (in the file of
    a ``FileTokenStore``, so processes sharing it share the key), or
    ``dpop=<key>``, a key of the caller's (a ``cryptography`` P-256 or
    Ed25519 private key). Logins, refreshes and token fetches then carry a
    proof and get bound tokens, and every request with a bound token carries
    a fresh proof; a ``use_dpop_nonce`` answer is met by one resend with the
    service's nonce, remembered per origin. Tokens the store holds as bound
    are sent with proofs by the stored key whatever ``dpop`` says. Needs
    ``pip install "quart-tokengate[dpop]"``.
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
        dpop: bool | ProofKey | Any = False,
    ) -> None:
        if refresh_margin < 0:
            raise ValueError("refresh_margin must not be negative")
        if rate_limit_wait < 0:
            raise ValueError("rate_limit_wait must not be negative")
        if api_key is not None and credentials is not None:
            raise ValueError("an API key needs no credentials: pass one or the other")
        if api_key is not None and dpop not in (False, None):
            raise ValueError("an API key is never bound to a DPoP key: pass one or the other")
        # Token requests carry proofs; the caller's own key, if one is given.
        self._dpop, self._own_key = _dpop_setting(dpop)
        # The stored key as last read, and the key made from it.
        self._key_cache: tuple[dict[str, str], ProofKey] | None = None
        self._nonces = Nonces()
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
            self._async.call = async_client_call(client, self._sign_call)
        else:
            self._sync.call = client_call(client, self._sign_call)
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
            fetch = partial(fetch_flow, grant, token_url, self.clock, dpop=self._dpop)
        return self._single_flight.renewal(
            op, self.token_store, usable=self._usable, can_login=self._can_login,
            clock=self.clock, fetch=fetch, dpop=self._dpop,
        )  # fmt: skip

    # -- DPoP: the key, the proofs, the nonces ----------------------------------
    @property
    def dpop(self) -> bool:
        """Whether logins, refreshes and token fetches ask for DPoP-bound tokens."""
        return self._dpop

    def _proof_key(self) -> ProofKey:
        """The key that signs: the caller's, else the store's (made once, with ``dpop``)."""
        own = self._own_key
        if own is not None:
            # Never written to the store: a key of the caller's own stays where the
            # caller keeps it (an unexportable one cannot be read out at all), and
            # every process using the tokens bound to it passes it in too.
            return own
        kept = self.token_store.dpop_key(_new_key if self._dpop else None)
        if kept is None:
            raise AuthError(
                "The tokens are DPoP-bound and the token store keeps no DPoP key: log in again."
            )
        cached = self._key_cache
        if cached is not None and cached[0] == kept:
            return cached[1]
        try:
            key = key_from_json(kept)
        except DPoPKeyError as exc:
            raise AuthError(f"{exc} ({self.token_store!r})") from None
        self._key_cache = (dict(kept), key)
        return key

    def _proof(self, method: str, url: httpx.URL, access_token: str | None) -> str:
        return make_proof(
            self._proof_key(), method, str(url), now=self.clock(),
            access_token=access_token, nonce=self._nonces.get(url),
        )  # fmt: skip

    def _sign(self, op: Send) -> None:
        """Add a fresh proof to a request that presents a bound token (the edges call it)."""
        if op.proof_token is not None:
            op.request.headers["DPoP"] = self._proof(
                op.request.method, op.request.url, op.proof_token
            )

    def _sign_call(self, call: Call, request: httpx.Request) -> None:
        """Add a fresh proof to the request built for a token request that asks for one."""
        if call.dpop:
            request.headers["DPoP"] = self._proof(request.method, request.url, None)

    def _saw(self, response: httpx.Response) -> None:
        """Keep the ``DPoP-Nonce`` a response brings, for its origin's next proofs."""
        nonce = response.headers.get("DPoP-Nonce")
        if nonce:
            try:
                url = response.request.url
            except RuntimeError:  # a response built by hand has no request
                return
            self._nonces.keep(url, nonce)

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
        flow = login_flow(username, password, device, clock=self.clock, dpop=self._dpop)
        tokens = self._sync.run(flow, self._origin("login"))
        self.token_store.save(tokens)
        return tokens

    async def async_login(self, username: str, password: str, device: str | None = None) -> Tokens:
        """Log in through the async edge and store the new tokens."""
        flow = login_flow(username, password, device, clock=self.clock, dpop=self._dpop)
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
        tokens = self._sync.run(
            poll_flow(code, client_id=client_id, clock=self.clock, dpop=self._dpop), origin
        )
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
        flow = poll_flow(code, client_id=client_id, clock=self.clock, dpop=self._dpop)
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
