"""Client authentication at the token endpoint (RFC 6749 section 2.3, RFC 7523 section 2.2).

Three methods, exactly one per request (RFC 6749 section 2.3: "MUST NOT use
more than one"): ``client_secret_basic`` (HTTP Basic, both halves
form-urlencoded first), ``client_secret_post`` (``client_id`` and
``client_secret`` in the body) and ``private_key_jwt`` (a ``client_assertion``
signed with a registered key, its ``jti`` used once across every instance).
Secrets are compared as SHA-256 digests in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from ..errors import InvalidClient, InvalidRequest
from .assertion import ASSERTION_TYPE, check_assertion, claimed_client_id, parse_jwks
from .clients import CLIENT_ID, ClientRegistry, Credential, RegisteredClient, secret_digest

# Compared against when the client is unknown, so that the answer takes as long.
_NO_SECRET = hashlib.sha256(b"tokengate: no such client").hexdigest()
MAX_SECRET_LENGTH = 512


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    """A client that proved itself, with the credential generation it used."""

    client: RegisteredClient
    credential: Credential
    method: str
    # private_key_jwt: the Redis key that marks its assertion's jti used.
    jti_key: str | None = None


def _basic(header: str) -> tuple[str, str]:
    """The client id and secret of an HTTP Basic header (RFC 6749 section 2.3.1)."""
    try:
        decoded = base64.b64decode(header.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest("The Basic credentials are not base64 of id:secret.") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidRequest("The Basic credentials are not base64 of id:secret.")
    return unquote_plus(client_id), unquote_plus(secret)


def _check_secret(client: RegisteredClient | None, secret: str) -> Credential:
    """The generation whose secret this is; every usable one is compared."""
    digest = secret_digest(secret[:MAX_SECRET_LENGTH]).encode()
    found: Credential | None = None
    hashes = [c for c in client.credentials if c.secret_hash] if client is not None else []
    for credential in hashes or [Credential(0, _NO_SECRET, None, None)]:
        assert credential.secret_hash is not None
        if hmac.compare_digest(digest, credential.secret_hash.encode()):
            found = credential
    if client is None or found is None or client.disabled or len(secret) > MAX_SECRET_LENGTH:
        raise InvalidClient()
    return found


class ClientAuthenticator:
    """Authenticates the client of a token request; the jti store is Redis."""

    def __init__(self, registry: ClientRegistry, redis: Any, leeway: int = 0) -> None:
        self.registry = registry
        self.redis = redis
        self.leeway = leeway

    async def authenticate(
        self,
        params: Mapping[str, str],
        authorization: str,
        *,
        audiences: Iterable[str],
        now: float,
    ) -> AuthenticatedClient:
        """Which client sent this request, proved one way only; else ``invalid_client``."""
        scheme, _, encoded = authorization.partition(" ")
        basic = scheme.lower() == "basic"
        post = "client_secret" in params
        assertion = "client_assertion" in params or "client_assertion_type" in params
        if basic + post + assertion > 1:
            raise InvalidRequest("Authenticate the client one way only.")
        if basic:
            client_id, secret = _basic(encoded)
            if params.get("client_id", client_id) != client_id:
                raise InvalidRequest("The client_id differs from the Basic credentials'.")
            client = await self.registry.find(client_id)
            credential = _check_secret(client, secret)
            assert client is not None
            return AuthenticatedClient(client, credential, "client_secret_basic")
        if post:
            client_id = params.get("client_id", "")
            if not client_id:
                raise InvalidRequest("client_secret_post needs client_id in the body.")
            client = await self.registry.find(client_id)
            credential = _check_secret(client, params["client_secret"])
            assert client is not None
            return AuthenticatedClient(client, credential, "client_secret_post")
        if assertion:
            return await self._assertion(params, audiences=audiences, now=now)
        # No authentication at all: the challenge says how to authenticate.
        raise InvalidClient("The client did not authenticate.")

    async def _assertion(
        self, params: Mapping[str, str], *, audiences: Iterable[str], now: float
    ) -> AuthenticatedClient:
        """private_key_jwt (RFC 7523 section 2.2), its jti remembered until it expires."""
        if params.get("client_assertion_type") != ASSERTION_TYPE:
            raise InvalidRequest(f"client_assertion_type must be {ASSERTION_TYPE}.")
        assertion = params.get("client_assertion", "")
        if not assertion:
            raise InvalidRequest("client_assertion is missing.")
        client_id = claimed_client_id(assertion)
        if client_id is None:
            raise InvalidClient("The client assertion names no client.")
        if params.get("client_id", client_id) != client_id:
            raise InvalidClient("The client_id differs from the assertion's.")
        client = await self.registry.find(client_id)
        keyed = [c for c in client.credentials if c.secret_hash is None] if client else []
        if client is None or client.jwks is None or not keyed or client.disabled:
            raise InvalidClient()
        claims = check_assertion(
            assertion, parse_jwks(client.jwks), client_id=client_id, audiences=audiences,
            now=now, leeway=self.leeway,
        )  # fmt: skip
        # Used once, on every instance: remembered until it could no longer pass.
        key = self.jti_key(client_id, claims.jti)
        ttl = max(1, int(claims.exp - now) + self.leeway + 1)
        if not await self.redis.set(key, "1", nx=True, ex=ttl):
            raise InvalidClient("This client assertion was used already.")
        return AuthenticatedClient(client, keyed[0], "private_key_jwt", key)

    @staticmethod
    def claimed(params: Mapping[str, str], authorization: str) -> str:
        """The client id a request names, for the security log ("" when it names none that
        could be one: nothing the caller typed reaches the log unchecked)."""
        scheme, _, encoded = authorization.partition(" ")
        found = params.get("client_id") or claimed_client_id(params.get("client_assertion", ""))
        if scheme.lower() == "basic":
            try:
                found = _basic(encoded)[0]
            except InvalidRequest:
                found = None
        return found if found and CLIENT_ID.match(found) else ""

    @staticmethod
    def jti_key(client_id: str, jti: str) -> str:
        """The Redis key that remembers an assertion's jti (one hash tag: one cluster slot)."""
        digest = hashlib.sha256(f"{client_id}\0{jti}".encode()).hexdigest()[:32]
        return f"tg:{{j{digest}}}:jti"

    async def forget(self, authenticated: AuthenticatedClient) -> None:
        """Take back an assertion's jti when the request failed after it (an outage):
        the same request, sent again, then succeeds."""
        if authenticated.jti_key is not None:
            await self.redis.delete(authenticated.jti_key)
