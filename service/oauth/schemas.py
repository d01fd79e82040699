"""The token endpoint's request and response, as the OpenAPI document declares them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic.json_schema import SkipJsonSchema

# RFC 6749 section 3.3: scope tokens of printable ASCII (no space, '"' or '\\'),
# separated by one space.
_SCOPE_WORD = r"[\x21\x23-\x5b\x5d-\x7e]+"
# RFC 6749 section 3.1: a parameter sent empty counts as omitted.
# Every string is bounded, so no body the document admits is over the body limit (413).
Text = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[\x20-\x7e]+$")]
Assertion = Annotated[
    str, StringConstraints(min_length=1, max_length=8192, pattern=r"^[\x21-\x7e]+$")
]
ScopeParameter = Annotated[
    str, StringConstraints(max_length=2048, pattern=rf"^{_SCOPE_WORD}( {_SCOPE_WORD})*$")
]


class ClientCredentialsForm(BaseModel):
    """A token request (RFC 6749 section 4.4.2), with the client's authentication in the
    body (``client_secret_post``, or RFC 7523's assertion) or in HTTP Basic."""

    # One way of authenticating at a time (RFC 6749 section 2.3); a secret in the
    # body names its client; an assertion comes with its type.
    model_config = ConfigDict(
        json_schema_extra={
            "dependentRequired": {
                "client_secret": ["client_id"],
                "client_assertion": ["client_assertion_type"],
                "client_assertion_type": ["client_assertion"],
            },
            "not": {"required": ["client_secret", "client_assertion"]},
            # Other parameters are ignored (RFC 6749 section 3.2), each sent once.
            "additionalProperties": {"type": "string", "maxLength": 512},
            "maxProperties": 20,
        }
    )

    grant_type: Literal["client_credentials"]
    # Optional, never null: a form has no null (the default None is never sent).
    scope: ScopeParameter | SkipJsonSchema[None] = None
    client_id: Text | SkipJsonSchema[None] = None
    client_secret: Text | SkipJsonSchema[None] = None
    client_assertion_type: (
        Literal["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"] | SkipJsonSchema[None]
    ) = None
    client_assertion: Assertion | SkipJsonSchema[None] = None


class OAuthTokenOut(BaseModel):
    """A token response (RFC 6749 section 5.1): no refresh token for client credentials."""

    access_token: str
    token_type: Literal["Bearer", "DPoP"]  # DPoP: bound to the proof's key (RFC 9449)
    expires_in: int
    scope: str
