"""tokengate's client: httpx clients that stay logged in.

``AsyncAuthClient`` and ``AuthClient`` are ``httpx.AsyncClient`` and
``httpx.Client`` with a ``TokenAuth``: tokens attached, refreshed before they
expire and after a ``401 token_expired``, one refresh for any number of
concurrent requests, kept in a ``MemoryTokenStore`` or a ``FileTokenStore``
that processes share. See docs/client.md.
"""

from ._auth import TokenAuth
from ._client import AsyncAuthClient, AuthClient
from ._device import DeviceCode
from ._exceptions import (
    AuthError,
    DeviceAccessDenied,
    DeviceCodeExpired,
    DeviceLoginFailed,
    FreshLoginRequired,
    InvalidClient,
    InvalidCredentials,
    LoginRequired,
    RateLimited,
)
from ._store import FileTokenStore, MemoryTokenStore
from ._tokens import Tokens, TokenStore

__all__ = [
    "AsyncAuthClient",
    "AuthClient",
    "AuthError",
    "DeviceAccessDenied",
    "DeviceCode",
    "DeviceCodeExpired",
    "DeviceLoginFailed",
    "FileTokenStore",
    "FreshLoginRequired",
    "InvalidClient",
    "InvalidCredentials",
    "LoginRequired",
    "MemoryTokenStore",
    "RateLimited",
    "TokenAuth",
    "TokenStore",
    "Tokens",
]
