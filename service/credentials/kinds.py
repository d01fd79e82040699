"""Which credential a request carries: read once, in one place, for the guard.

Kinds: a bearer access JWT (a session's, or a service account's carrying
``client_id``), a DPoP-bound access JWT (``Authorization: DPoP`` and its
proof, RFC 9449) and an API key. The guard dispatches on ``Credential.kind``
(docs/design.md, "Credential kinds").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from quart import request

from ..cookies import read_access_token
from ..errors import InvalidToken
from ..settings import Settings
from .apikeys import looks_like_key
from .proofs import sent_proof


class CredentialKind(enum.Enum):
    """What the guard checks, and how."""

    BEARER_JWT = "bearer_jwt"  # an access token: one JWT check, its session's script
    API_KEY = "api_key"  # tgk_...: a checksum, an HMAC, the key's script
    DPOP_JWT = "dpop_jwt"  # an access token bound to a key: the JWT, the proof, the script


@dataclass(frozen=True, slots=True)
class Credential:
    """The credential of one request, as sent."""

    kind: CredentialKind
    text: str = field(repr=False)
    proof: str | None = field(default=None, repr=False)  # the DPoP header (DPOP_JWT)


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
    """This request's credential: an API key in the header; an access token sent as
    ``DPoP <token>`` with its proof (unless ``TOKENGATE_DPOP=off``); else the access
    token where ``TOKENGATE_TOKEN_LOCATION`` says to look. A cookie is always a session's.

    Like a key, a DPoP-bound token is a program's credential: read from the header
    whatever the token location (a browser never sends this scheme on its own).
    """
    header = request.headers.get("Authorization", "").strip()
    scheme, _, text = header.partition(" ")
    scheme, text = scheme.lower(), text.strip()
    if scheme == "bearer" and text:
        if looks_like_key(text):
            return Credential(CredentialKind.API_KEY, text)
        if settings.use_headers:  # the header read once: the common case
            return Credential(CredentialKind.BEARER_JWT, text)
    if scheme == "dpop" and settings.dpop != "off":
        if not text:
            raise InvalidToken("The Authorization header must be 'DPoP <token>'.")
        return Credential(CredentialKind.DPOP_JWT, text, sent_proof())
    # No header, another scheme, or cookies only: where the token location says.
    return Credential(CredentialKind.BEARER_JWT, read_access_token(settings))
