"""Request and response bodies; they drive validation and the OpenAPI document."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from .. import usernames
from ..openapi import KEY_LIFETIME, PASSWORD_POLICY


def _clean(value: str) -> str:
    # Lone surrogates (legal in JSON escapes) cannot be stored or hashed, and
    # control characters have no place in a username, device or password.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters")
    return value


# No C0 control character and no DEL, as ``_clean`` checks.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

# The one definition of a username (usernames.py): its pattern, in explicit ranges
# that pydantic's engine, Python's and an OpenAPI reader's all read alike; the
# registration also applies the PRECIS profile and the look-alike check.
Username = Annotated[
    str,
    StringConstraints(min_length=1, max_length=usernames.MAX_LENGTH),
    AfterValidator(_clean),
    AfterValidator(usernames.check_shape),
    Field(description=usernames.DESCRIPTION, json_schema_extra={"pattern": usernames.PATTERN}),
]
Password = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1024, pattern=_PRINTABLE),
    AfterValidator(_clean),
    Field(description="At most 1024 characters; no control characters."),
]
# A password being set: the document states TOKENGATE_PASSWORD_MIN_LENGTH,
# which the service checks (``openapi.PASSWORD_POLICY``).
NewPassword = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1024, pattern=_PRINTABLE),
    AfterValidator(_clean),
    Field(json_schema_extra={PASSWORD_POLICY: True}),
]
# RFC 6749 appendix A: a token is 1*VSCHAR (printable ASCII, space included).
# That also bounds what a token the document admits costs in a body (8192
# characters, at most three bytes each once form-encoded), so that no such
# body is over the 64 KiB limit: the service never answers 413 for one.
_VSCHARS = r"^[ -~]+$"
Token = Annotated[
    str,
    StringConstraints(min_length=1, max_length=8192, pattern=_VSCHARS),
    Field(description="A token as issued: printable ASCII (RFC 6749's VSCHAR), at most 8192."),
]
Device = Annotated[
    str,
    StringConstraints(max_length=200, pattern=_PRINTABLE),
    AfterValidator(_clean),
    Field(description="A name for this session, shown in the session list."),
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Registration(Body):
    username: Username
    password: NewPassword


class LoginRequest(Body):
    username: Username
    password: Password
    device: Device | None = None
    device_token: Token | None = Field(
        default=None,
        description=(
            "The device_token of an earlier login to this account from this device: "
            "the login is then throttled on this device's own count."
        ),
    )


class RefreshRequest(Body):
    refresh_token: Token | None = Field(
        default=None, description="Optional in cookie mode: the refresh_token cookie is used."
    )


class PasswordChange(Body):
    current_password: Password
    new_password: NewPassword


class ResetRequest(Body):
    # The one definition of a name (usernames.py): one that could be an account's is
    # answered alike (202) whether or not it is; one that could not is a 400.
    username: Username


class ResetConfirm(Body):
    token: Token
    new_password: NewPassword


class UserOut(BaseModel):
    id: int
    username: str


class MeOut(UserOut):
    session_id: str | None = Field(description="The session's id; null for an API key.")
    api_key_id: str | None = Field(
        default=None, description="The API key's id, when the credential was one."
    )


class TokenPairOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = Field(  # the scheme name, not a secret
        default="Bearer", description="DPoP when the pair is bound to the proof's key (RFC 9449)."
    )
    expires_in: int
    refresh_expires_in: int
    session_id: str


class LoginOut(TokenPairOut):
    device_token: str = Field(
        description="Send it with the next login to this account from this device."
    )


class SessionOut(BaseModel):
    id: str
    device: str | None
    ip: str | None
    user_agent: str | None
    created_at: str
    last_seen_at: str
    current: bool


class SessionsOut(BaseModel):
    sessions: list[SessionOut]


Scope = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[\x21\x23-\x5b\x5d-\x7e]+$")
]


def _whole(value: object) -> object:
    # JSON Schema's "integer" takes 3600.0 as well as 3600; strict mode alone would not.
    return int(value) if isinstance(value, float) and value.is_integer() else value


class ApiKeyCreate(Body):
    name: Annotated[
        str, StringConstraints(min_length=1, max_length=100, pattern=_PRINTABLE),
        AfterValidator(_clean), Field(description="What the key is for, shown in the list."),
    ]  # fmt: skip
    scopes: list[Scope] = Field(
        default_factory=list,
        max_length=100,
        description="Among the user's scopes; none by default.",
    )
    expires_in: Annotated[int, Field(ge=1), BeforeValidator(_whole)] | None = Field(
        default=None,
        json_schema_extra={KEY_LIFETIME: True},
        description="Seconds; default TOKENGATE_API_KEY_TTL, at most TOKENGATE_API_KEY_MAX_TTL.",
    )


class ApiKeyCreated(BaseModel):
    id: str
    key: str = Field(description="The key itself: shown this once, never again.")
    name: str
    scopes: list[str]
    created_at: str
    expires_at: str


class ApiKeyOut(BaseModel):
    id: str
    name: str
    scopes: list[str]
    created_at: str
    expires_at: str
    last_used_at: str | None
    last_used_ip: str | None
    revoked_at: str | None
    revoked_why: str | None = Field(description="revoked, or leaked (reported by a scanner).")


class ApiKeysOut(BaseModel):
    api_keys: list[ApiKeyOut]


class LeakedKeys(Body):
    # Printable ASCII, as a key is: the longest report the document admits stays
    # inside the 64 KiB body limit (any Unicode would not).
    keys: list[Annotated[str, StringConstraints(max_length=200, pattern=r"^[ -~]*$")]] = Field(
        max_length=100
    )


class LeakedOut(BaseModel):
    revoked: int = Field(
        description="How many well-formed keys were taken (not how many were real)."
    )


class ErrorOut(BaseModel):
    error: str
    error_description: str


class HealthOut(BaseModel):
    status: str
    database: str
    redis: str
    schema_: str = Field(alias="schema")


class Empty(BaseModel):
    pass


class Jwk(BaseModel):
    model_config = ConfigDict(extra="allow")

    kty: str
    kid: str
    alg: str
    use: str


class JwksOut(BaseModel):
    keys: list[Jwk]


TokenTypeHint = Annotated[
    str,
    StringConstraints(max_length=64, pattern=_VSCHARS),
    Field(description="access_token or refresh_token; a hint only, never needed."),
]


class OAuthForm(BaseModel):
    """An OAuth form (RFC 6749 section 3.2): parameters it does not know are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


class TokenForm(OAuthForm):
    """A form (``application/x-www-form-urlencoded``) or JSON body."""

    token: Token
    token_type_hint: TokenTypeHint | None = None


class RevokeForm(OAuthForm):
    """RFC 7009: any token of the right shape is answered ``200``; a dead one changes nothing."""

    token: Token
    token_type_hint: TokenTypeHint | None = None


class IntrospectionOut(BaseModel):
    active: bool
    sub: str | None = None
    username: str | None = None
    sid: str | None = None
    scope: str | None = None
    exp: int | None = None
    iat: int | None = None
    nbf: int | None = None
    auth_time: int | None = None
    iss: str | None = None
    aud: str | None = None
    jti: str | None = None
    token_type: str | None = None
    cnf: dict[str, str] | None = Field(
        default=None, description="A DPoP-bound token's key: its RFC 7638 thumbprint as jkt."
    )
