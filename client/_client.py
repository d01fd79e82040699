"""``AsyncAuthClient`` and ``AuthClient``: httpx clients that stay logged in.

Each is its httpx class with a ``TokenAuth`` as its auth and a few methods
for the ``/auth`` routes. The ``/auth`` requests the auth sends on its own
(refresh, login) go through the client itself, so its transport, timeouts,
proxies and event hooks apply to them too.
"""

from __future__ import annotations

import time
from typing import Any, Self, cast

import httpx

from ._auth import OnCode, TokenAuth
from ._dpop import ProofKey
from ._exceptions import LoginRequired
from ._flow import Clock, Credentials, ErrorHook, LoginRequiredHook, TokensHook, failure
from ._grants import ClientCredentials
from ._tokens import Tokens, TokenStore

LOGOUT_PATH = "/auth/logout"
LOGOUT_ALL_PATH = "/auth/logout-all"
SESSIONS_PATH = "/auth/sessions"


def _make_auth(
    token_store: TokenStore | None,
    refresh_margin: float,
    credentials: Credentials | None,
    on_refreshed: TokensHook | None,
    on_refresh_failed: ErrorHook | None,
    on_login_required: LoginRequiredHook | None,
    clock: Clock,
    kwargs: dict[str, Any],
    api_key: str | None = None,
    rate_limit_wait: float = 0,
    dpop: Any = False,
) -> TokenAuth:
    if "auth" in kwargs:
        raise TypeError(
            "an auth client authenticates with its own TokenAuth; "
            "use a plain httpx client for another auth"
        )
    return TokenAuth(
        token_store=token_store,
        refresh_margin=refresh_margin,
        credentials=credentials,
        on_refreshed=on_refreshed,
        on_refresh_failed=on_refresh_failed,
        on_login_required=on_login_required,
        clock=clock,
        api_key=api_key,
        rate_limit_wait=rate_limit_wait,
        dpop=dpop,
    )


def _require_base_url(client: httpx.Client | httpx.AsyncClient, method: str) -> None:
    # Without one, "/auth/..." is no URL: say so rather than fail inside httpx.
    if not str(client.base_url):
        raise ValueError(f"base_url is required for {method}()")


class _Shared:
    """What both clients have beyond their I/O: the service-account constructor, the tokens."""

    _token_auth: TokenAuth

    @classmethod
    def for_client(
        cls, base_url: httpx.URL | str, client_id: str, client_secret: str | None = None, *,
        private_key: Any = None, key_id: str | None = None, scope: str | None = None,
        **kwargs: Any,
    ) -> Self:  # fmt: skip
        """A client for a service account (the client-credentials grant, RFC 6749 section 4.4).

        It authenticates with ``client_secret`` (HTTP Basic) or ``private_key``
        (``private_key_jwt``; ``key_id`` names its public half in the
        registered JWKS), asks for ``scope`` (default: all of the client's;
        ``dpop=True`` binds the tokens to a key, as for a login),
        and fetches a new access token before the old one expires, once for
        any number of concurrent requests (and processes sharing a
        ``FileTokenStore``). A refused fetch raises ``InvalidClient``. Every
        other keyword is the constructor's.
        """
        grant = ClientCredentials(client_id, client_secret, private_key, key_id, scope)
        # The httpx class's constructor, with the keywords the mixin cannot name.
        client: Self = cast(Any, cls)(base_url=base_url, **kwargs)
        client._token_auth.grant = grant
        return client

    @property
    def tokens(self) -> Tokens | None:
        """The stored tokens, or ``None`` when logged out (the repr shows no token)."""
        return self._token_auth.tokens


class AsyncAuthClient(_Shared, httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that logs in, attaches, refreshes and retries tokens.

    Every httpx keyword passes through. Extra keywords: ``token_store``
    (default a ``MemoryTokenStore``), ``refresh_margin`` (seconds before
    expiry at which a request refreshes first; default 30), ``credentials``
    (a callable returning ``(username, password)``, sync or async, used to log
    in again when the session is over), the hooks ``on_refreshed``,
    ``on_refresh_failed`` and ``on_login_required`` (sync or async),
    ``clock``, ``api_key`` (a ``tgk_...`` key sent as is, never refreshed),
    ``rate_limit_wait`` (a ``429`` whose ``Retry-After`` is at most this
    many seconds is waited out and sent once more; else ``RateLimited``) and
    ``dpop`` (``True``, or a key of the caller's: tokens bound to the key,
    a fresh proof with every request; see ``TokenAuth``).
    """

    def __init__(
        self,
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
        **kwargs: Any,
    ) -> None:
        token_auth = _make_auth(
            token_store, refresh_margin, credentials,
            on_refreshed, on_refresh_failed, on_login_required, clock, kwargs,
            api_key, rate_limit_wait, dpop,
        )  # fmt: skip
        super().__init__(auth=token_auth, **kwargs)
        token_auth.bind(self)
        self._token_auth = token_auth

    async def login(self, username: str, password: str, device: str | None = None) -> Tokens:
        """Log in and store the new tokens; raise ``InvalidCredentials``, ``RateLimited``..."""
        _require_base_url(self, "login")
        return await self._token_auth.async_login(username, password, device)

    async def login_device(
        self,
        on_code: OnCode,
        *,
        client_id: str | None = None,
        scope: str | None = None,
        device: str | None = None,
    ) -> Tokens:
        """Log in by a code a person confirms in a browser elsewhere (RFC 8628).

        ``on_code(verification_uri, verification_uri_complete, user_code)``
        (sync or async) is called once, to show the address and the code;
        then the service is polled, as its ``interval`` and ``slow_down`` say,
        until the code is confirmed: the new tokens are stored and returned.
        Raises ``DeviceAccessDenied`` or ``DeviceCodeExpired``.
        """
        _require_base_url(self, "login_device")
        return await self._token_auth.async_login_device(
            on_code, client_id=client_id, scope=scope, device=device
        )

    async def refresh(self) -> Tokens:
        """Refresh now (shared with any refresh already under way); return the new tokens."""
        _require_base_url(self, "refresh")
        return await self._token_auth.async_refresh()

    async def _end(self, path: str, doing: str) -> None:
        if self.tokens is None:
            return
        try:
            response = await self.post(path)
        except LoginRequired:
            return  # the session was over already, and the tokens are cleared
        if response.status_code in (200, 204, 401):
            self._token_auth.token_store.save(None)
            return
        raise failure(response, doing)

    async def logout(self) -> None:
        """End this session on the service and forget the tokens."""
        _require_base_url(self, "logout")
        await self._end(LOGOUT_PATH, "log out")

    async def logout_all(self) -> None:
        """End every session of the user and forget the tokens."""
        _require_base_url(self, "logout_all")
        await self._end(LOGOUT_ALL_PATH, "log out everywhere")

    async def sessions(self) -> list[dict[str, Any]]:
        """The user's live sessions, as the service lists them."""
        _require_base_url(self, "sessions")
        response = await self.get(SESSIONS_PATH)
        if response.status_code != 200:
            raise failure(response, "list the sessions")
        found: list[dict[str, Any]] = response.json()["sessions"]
        return found


class AuthClient(_Shared, httpx.Client):
    """An ``httpx.Client`` that logs in, attaches, refreshes and retries tokens.

    The blocking twin of ``AsyncAuthClient``, with the same keywords and
    methods; it is safe to share between threads.
    """

    def __init__(
        self,
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
        **kwargs: Any,
    ) -> None:
        token_auth = _make_auth(
            token_store, refresh_margin, credentials,
            on_refreshed, on_refresh_failed, on_login_required, clock, kwargs,
            api_key, rate_limit_wait, dpop,
        )  # fmt: skip
        super().__init__(auth=token_auth, **kwargs)
        token_auth.bind(self)
        self._token_auth = token_auth

    def login(self, username: str, password: str, device: str | None = None) -> Tokens:
        """Log in and store the new tokens; raise ``InvalidCredentials``, ``RateLimited``..."""
        _require_base_url(self, "login")
        return self._token_auth.sync_login(username, password, device)

    def login_device(
        self,
        on_code: OnCode,
        *,
        client_id: str | None = None,
        scope: str | None = None,
        device: str | None = None,
    ) -> Tokens:
        """Log in by a code a person confirms in a browser elsewhere (RFC 8628);
        as ``AsyncAuthClient.login_device``, blocking."""
        _require_base_url(self, "login_device")
        return self._token_auth.sync_login_device(
            on_code, client_id=client_id, scope=scope, device=device
        )

    def refresh(self) -> Tokens:
        """Refresh now (shared with any refresh already under way); return the new tokens."""
        _require_base_url(self, "refresh")
        return self._token_auth.sync_refresh()

    def _end(self, path: str, doing: str) -> None:
        if self.tokens is None:
            return
        try:
            response = self.post(path)
        except LoginRequired:
            return  # the session was over already, and the tokens are cleared
        if response.status_code in (200, 204, 401):
            self._token_auth.token_store.save(None)
            return
        raise failure(response, doing)

    def logout(self) -> None:
        """End this session on the service and forget the tokens."""
        _require_base_url(self, "logout")
        self._end(LOGOUT_PATH, "log out")

    def logout_all(self) -> None:
        """End every session of the user and forget the tokens."""
        _require_base_url(self, "logout_all")
        self._end(LOGOUT_ALL_PATH, "log out everywhere")

    def sessions(self) -> list[dict[str, Any]]:
        """The user's live sessions, as the service lists them."""
        _require_base_url(self, "sessions")
        response = self.get(SESSIONS_PATH)
        if response.status_code != 200:
            raise failure(response, "list the sessions")
        found: list[dict[str, Any]] = response.json()["sessions"]
        return found
