"""The token endpoint's request and response, as the OpenAPI document declares them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ClientCredentialsForm(BaseModel):
    """A token request (RFC 6749 section 4.4.2), with the client's authentication in the
    body (``client_secret_post``, or RFC 7523's assertion) or in HTTP Basic."""

    grant_type: Literal["client_credentials"]
    scope: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    client_assertion_type: (
        Literal["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"] | None
    ) = None
    client_assertion: str | None = None


class OAuthTokenOut(BaseModel):
    """A token response (RFC 6749 section 5.1): no refresh token for client credentials."""

    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str
