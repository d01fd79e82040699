"""The client's one error tree.

::

    Exception
    └── AuthError               authentication failed; the stored tokens are kept
        │                       (network error, 5xx, a body that cannot be resent...)
        ├── LoginRequired       no usable session: log in; tokens the service refused
        │   │                   are cleared. ``code`` is the service's reason
        │   │                   (token_revoked, session_expired, refresh_reused...,
        │   │                   or missing_token when nothing is stored)
        │   ├── InvalidCredentials   a login was refused: invalid_credentials
        │   │   └── InvalidClient    a service account's token fetch was refused:
        │   │                        invalid_client (unknown, disabled, wrong secret or key)
        │   └── FreshLoginRequired   the route needs a recent password login
        │                            (fresh_login_required): log in again, then
        │                            retry; the tokens are kept
        ├── RateLimited         429 too_many_attempts or rate_limited; ``retry_after``
        │                       in seconds
        └── DeviceLoginFailed   a device login (RFC 8628) came to nothing
            ├── DeviceAccessDenied  the person who saw the code denied it: access_denied
            └── DeviceCodeExpired   nobody confirmed the code in time: expired_token

Every error carries ``code``, the service's ``error`` string (``None`` when the
service never answered), and ``response``, the ``httpx.Response`` behind it
when there is one. Messages never contain a token.
"""

from __future__ import annotations

import httpx


class AuthError(Exception):
    """Authentication could not be done; the stored tokens are kept."""

    def __init__(
        self, message: str, *, code: str | None = None, response: httpx.Response | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.response = response


class LoginRequired(AuthError):
    """No usable session (it is over, or there never was one): log in."""


class InvalidCredentials(LoginRequired):
    """The service refused the username or password."""


class InvalidClient(InvalidCredentials):
    """The service refused a client's credentials (``invalid_client``) when fetching a token."""


class FreshLoginRequired(LoginRequired):
    """The route needs a recent password login: call ``login()`` again, then retry.

    The session is still good for other routes, so the stored tokens are kept.
    """


class RateLimited(AuthError):
    """Too many attempts: wait ``retry_after`` seconds (``None`` if the service did not say)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        response: httpx.Response | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, response=response)
        self.retry_after = retry_after


class DeviceLoginFailed(AuthError):
    """A device login (``login_device``) ended without a session."""


class DeviceAccessDenied(DeviceLoginFailed):
    """The person who saw the code denied the login (``access_denied``)."""


class DeviceCodeExpired(DeviceLoginFailed):
    """Nobody confirmed the code before it expired (``expired_token``): start again."""
