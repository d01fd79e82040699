"""Which credential a request carries: read once, in one place, for the guard.

Kinds today: a bearer access JWT (a session's, or a service account's
carrying ``client_id``) and an API key. A DPoP-bound JWT is the next kind:
its scheme (``Authorization: DPoP``) and proof are read here, and the guard
dispatches on ``Credential.kind`` as it does for these (docs/design.md,
"Credential kinds").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..cookies import read_access_token, request_auth
from ..settings import Settings
from .apikeys import looks_like_key


class CredentialKind(enum.Enum):
    """What the guard checks, and how."""

    BEARER_JWT = "bearer_jwt"  # an access token: one JWT check, its session's script
    API_KEY = "api_key"  # tgk_...: a checksum, an HMAC, the key's script


@dataclass(frozen=True, slots=True)
class Credential:
    """The credential of one request, as sent."""

    kind: CredentialKind
    text: str = field(repr=False)


def read_credential(settings: Settings) -> Credential:
    """This request's credential, where ``TOKENGATE_TOKEN_LOCATION`` says to look.

    An API key is recognised by its prefix, in the ``Authorization`` header
    only: a cookie always holds a session's access token.
    """
    text = read_access_token(settings)
    if looks_like_key(text) and not request_auth().via_cookie:
        return Credential(CredentialKind.API_KEY, text)
    return Credential(CredentialKind.BEARER_JWT, text)
