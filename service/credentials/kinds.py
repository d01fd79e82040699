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

from quart import request

from ..cookies import read_access_token
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


def sent_api_key() -> str | None:
    """The API key in this request's ``Authorization: Bearer`` header, if it holds one.

    Read whatever ``TOKENGATE_TOKEN_LOCATION`` says: a key is a program's
    credential, sent in the header even to a service whose browsers use cookies
    (and a header is never sent by a browser on its own, so it needs no CSRF check).
    """
    scheme, _, text = request.headers.get("Authorization", "").strip().partition(" ")
    text = text.strip()
    return text if scheme.lower() == "bearer" and looks_like_key(text) else None


def read_credential(settings: Settings) -> Credential:
    """This request's credential: an API key in the header, else the access token
    where ``TOKENGATE_TOKEN_LOCATION`` says to look. A cookie is always a session's."""
    key = sent_api_key()
    if key is not None:
        return Credential(CredentialKind.API_KEY, key)
    return Credential(CredentialKind.BEARER_JWT, read_access_token(settings))
