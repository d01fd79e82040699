"""The client-credentials grant (RFC 6749 section 4.4) as a pure flow, and its client assertion.

A service account has no refresh token: when its access token nears expiry,
or the service refuses it, the client fetches a new one from
``POST /oauth/token``. ``fetch_flow`` is that renewal, in the style of
``_flow.obtain``: it yields a ``Call`` and returns a ``Renewal``, so the
single flight (``_flight.py``) runs it exactly as it runs a refresh, once for
any number of concurrent requests, threads and (through a
``FileTokenStore``'s lock) processes.

The client authenticates with its secret (``client_secret_basic``) or with a
private key (``private_key_jwt``, RFC 7523): a short-lived assertion signed
by the key, made by ``client_assertion`` from ``now`` and a fresh ``jti``
(signing needs PyJWT and cryptography: ``pip install "quart-tokengate[jwt]"``).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from ._exceptions import AuthError, InvalidClient
from ._flow import Call, Clock, Op, Renewal, describe, failure, send_call
from ._tokens import Tokens, unverified_claims

TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path, not a secret
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# How long an assertion lives: the service takes at most five minutes.
ASSERTION_TTL = 60


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """A service account's client: its id, and its secret or private key (never in a repr).

    ``private_key`` is a PEM (``str`` or ``bytes``) or a ``cryptography``
    private key; ``key_id`` is the ``kid`` of its public half in the JWKS
    registered with ``tokengate clients create --jwks-file``; ``scope``, the
    scopes to ask for (space-separated; ``None``: all of the client's).
    """

    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    private_key: Any = field(default=None, repr=False)
    key_id: str | None = None
    scope: str | None = None

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("client_id is required")
        if (self.client_secret is None) == (self.private_key is None):
            raise ValueError("give client_secret or private_key, one of them")


def _algorithm(key: Any) -> str:
    """The one algorithm the service accepts for this kind of key (its JWKS pins it)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384"}.get(key.curve.name, "")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    return ""


def client_assertion(
    private_key: Any, *, client_id: str, audience: str, now: float, jti: str,
    key_id: str | None = None,
) -> str:  # fmt: skip
    """A client assertion (RFC 7523 section 3): ``iss`` = ``sub`` = the client, ``aud`` the
    token endpoint's URL, ``exp`` a minute after ``now``, signed with ``private_key``."""
    try:
        import jwt
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError as exc:  # the base install is httpx and filelock only
        raise AuthError(
            'private_key_jwt needs PyJWT and cryptography: pip install "quart-tokengate[jwt]"'
        ) from exc
    key = private_key
    if isinstance(key, str | bytes):
        key = load_pem_private_key(key.encode() if isinstance(key, str) else key, password=None)
    algorithm = _algorithm(key)
    if not algorithm:
        raise AuthError("private_key must be an RSA, P-256, P-384 or Ed25519 private key.")
    claims = {
        "iss": client_id, "sub": client_id, "aud": audience, "jti": jti,
        "iat": int(now), "exp": int(now) + ASSERTION_TTL,
    }  # fmt: skip
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _basic(client_id: str, secret: str) -> str:
    # RFC 6749 section 2.3.1: each half form-urlencoded, then Basic.
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def token_request(
    grant: ClientCredentials, token_url: str, now: float, *, dpop: bool = False
) -> Call:
    """The token request for ``grant`` at ``now``: a form, the client authenticated one way;
    with ``dpop``, carrying a proof, so that the token is bound to its key."""
    body: dict[str, Any] = {"grant_type": "client_credentials"}
    if grant.scope is not None:
        body["scope"] = grant.scope
    headers: dict[str, str] = {}
    if grant.client_secret is not None:
        headers["Authorization"] = _basic(grant.client_id, grant.client_secret)
    else:
        body["client_assertion_type"] = ASSERTION_TYPE
        body["client_assertion"] = client_assertion(
            grant.private_key, client_id=grant.client_id, audience=token_url, now=now,
            jti=secrets.token_urlsafe(16), key_id=grant.key_id,
        )  # fmt: skip
    return Call("POST", TOKEN_PATH, body, form=True, headers=headers, dpop=dpop)


def parse_token(response: httpx.Response, at: float) -> Tokens:
    """The access token of a ``200`` from the token endpoint, noted as arrived ``at``."""
    try:
        data = response.json()
        access = data["access_token"]
        if not isinstance(access, str) or not access:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise AuthError(
            "The service's answer is not a token response.", code=None, response=response
        ) from None
    sid = unverified_claims(access).get("sid")
    kind = data.get("token_type")
    kind = kind if isinstance(kind, str) and kind else "Bearer"
    return Tokens(access, "", sid if isinstance(sid, str) else None, kind, received_at=at)


def fetch_flow(
    grant: ClientCredentials, token_url: str, clock: Clock, *, dpop: bool = False
) -> Generator[Op, Any, Renewal]:
    """Fetch a new access token for ``grant``; like ``obtain``, it never raises.

    With ``dpop`` the request carries a proof (a fresh one for the one resend
    that ``use_dpop_nonce`` calls for) and the token is bound to its key.

    A ``401`` (``invalid_client``: the client is unknown, disabled, or its
    secret or key is wrong) is ``InvalidClient`` and clears the tokens; a
    network error or another status keeps them.
    """
    try:
        call = token_request(grant, token_url, clock(), dpop=dpop)
    except AuthError as exc:
        return Renewal(error=exc, notes=(("refresh_failed", exc),))
    try:
        response = yield from send_call(call)
    except httpx.HTTPError as exc:
        error = AuthError(f"Could not fetch an access token ({describe(exc)}).")
        error.__cause__ = exc
        return Renewal(error=error, notes=(("refresh_failed", error),))
    if response.status_code == 200:
        try:
            fresh = parse_token(response, clock())
        except AuthError as exc:
            return Renewal(error=exc, notes=(("refresh_failed", exc),))
        return Renewal(tokens=fresh, notes=(("refreshed", fresh),))
    failed = failure(response, "fetch an access token")
    if response.status_code == 401:
        refused = InvalidClient(
            f"The service refused the client {grant.client_id} ({failed.code}): check its "
            "client_id, its secret or key, and that it is enabled.",
            code=failed.code,
            response=response,
        )
        return Renewal(error=refused, dead=True, notes=(("login_required", refused),))
    return Renewal(error=failed, notes=(("refresh_failed", failed),))
