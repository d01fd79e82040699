"""Service accounts' OAuth clients: registering them, their credential generations, finding one.

A client is a row of ``oauth_clients`` linked to a user row of kind
``service`` (the tokens' ``sub``; it never logs in with a password). Each of
its credentials is a *generation*: a 256-bit secret kept as its SHA-256, or
the registered keys of private_key_jwt. Disabling the client or retiring a
generation ends the sessions of its tokens (``docs/design.md``, "Service
accounts").
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import usernames
from ..db.models import OAuthClient, OAuthClientCredential, User
from ..db.repository import utc
from ..logs import security_event
from ..sessions import SessionManager
from ..users import NO_PASSWORD, SERVICE_KIND
from .assertion import parse_jwks

CLIENT_ID_PREFIX = "tgc_"
SECRET_PREFIX = "tgcs_"  # noqa: S105 (a prefix, not a secret)
# What a client id looks like; anything else is refused before any lookup.
CLIENT_ID = re.compile(r"^tgc_[A-Za-z0-9_-]{22}$")
# RFC 6749 section 3.3: a scope token is printable ASCII without space, '"' or '\'.
SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,200}$")
NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,150}$")


class ClientError(Exception):
    """An administration request on clients that cannot be carried out; one line says why."""


def new_client_id() -> str:
    return CLIENT_ID_PREFIX + secrets.token_urlsafe(16)


def new_secret() -> str:
    """A client secret: 256 random bits, with a prefix a secret scanner can recognise."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_digest(secret: str) -> str:
    """What is kept of a secret. A 256-bit random secret needs no salt or stretching:
    SHA-256 of it cannot be reversed or guessed, unlike a person's password."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Credential:
    """One generation of a client's credential, as the token endpoint needs it."""

    id: int
    secret_hash: str | None
    retire_at: float | None
    session_id: str | None


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    """A client and its usable credential generations, read once per token request."""

    client_id: str
    name: str
    user_id: int
    scopes: tuple[str, ...]
    jwks: str | None
    disabled: bool
    credentials: tuple[Credential, ...]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A client as ``tokengate clients list`` shows it."""

    client_id: str
    name: str
    user_id: int
    scopes: tuple[str, ...]
    method: str
    disabled: bool
    created_at: datetime
    secrets: int

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id, "name": self.name, "user_id": self.user_id,
            "scopes": list(self.scopes), "auth_method": self.method, "disabled": self.disabled,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "usable_credentials": self.secrets,
        }  # fmt: skip


def _usable(now: float) -> Any:
    return or_(
        OAuthClientCredential.retire_at.is_(None), OAuthClientCredential.retire_at > utc(now)
    )


class ClientRegistry:
    """The clients in SQL; ending their sessions goes through the session manager."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    @property
    def db(self) -> async_sessionmaker[AsyncSession]:
        return self.manager.db

    def now(self) -> float:
        return self.manager.clock()

    async def find(self, client_id: str) -> RegisteredClient | None:
        """The client and its generations not yet retired, or ``None`` (one query)."""
        if not CLIENT_ID.match(client_id):
            return None
        query = (
            select(OAuthClient, OAuthClientCredential)
            .outerjoin(
                OAuthClientCredential,
                (OAuthClientCredential.client_id == OAuthClient.client_id) & _usable(self.now()),
            )
            .where(OAuthClient.client_id == client_id)
            .order_by(OAuthClientCredential.id)
        )
        async with self.db() as db:
            rows = (await db.execute(query)).all()
        if not rows:
            return None
        client = rows[0][0]
        credentials = tuple(
            Credential(
                c.id, c.secret_hash, c.retire_at.timestamp() if c.retire_at else None, c.session_id
            )
            for _, c in rows
            if c is not None
        )
        return RegisteredClient(
            client.client_id,
            client.name,
            client.user_id,
            tuple(client.scopes.split()),
            client.jwks,
            client.disabled,
            credentials,
        )

    # -- administration -------------------------------------------------------
    async def create(
        self, name: str, scopes: Sequence[str], jwks: str | None = None
    ) -> tuple[str, str | None]:
        """Register a client and its service account; its id, and its secret (``None``
        with ``jwks``: it authenticates with private_key_jwt), shown this once."""
        if not NAME.match(name):
            raise ClientError("a client's name is 1 to 150 printable characters")
        for scope in scopes:
            if not SCOPE.match(scope):
                raise ClientError(f"not a valid scope: {scope!r}")
        if jwks is not None:
            try:
                parse_jwks(jwks)
            except ValueError as exc:
                raise ClientError(str(exc)) from None
            jwks = json.dumps(json.loads(jwks), separators=(",", ":"))
        now = utc(self.now())
        client_id = new_client_id()
        secret = None if jwks is not None else new_secret()
        async with self.db() as db:
            user = User(
                username=client_id,
                # Random, so no person's name looks like it; kept like every name's.
                username_skeleton=usernames.skeleton(client_id),
                password_hash=NO_PASSWORD,
                created_at=now,
                password_changed_at=now,
                kind=SERVICE_KIND,
            )
            db.add(user)
            await db.flush()
            db.add(
                OAuthClient(
                    client_id=client_id,
                    name=name,
                    user_id=user.id,
                    scopes=" ".join(dict.fromkeys(scopes)),
                    jwks=jwks,
                    created_at=now,
                )
            )
            db.add(
                OAuthClientCredential(
                    client_id=client_id,
                    secret_hash=secret and secret_digest(secret),
                    created_at=now,
                )
            )
            try:
                await db.commit()
            except IntegrityError:
                raise ClientError(
                    "a user with that client id exists; run the command again"
                ) from None
        security_event("client_created", client_id=client_id, scopes=" ".join(scopes))
        return client_id, secret

    async def list(self) -> list[ClientInfo]:
        """Every client, oldest first, with the number of its usable credentials."""
        async with self.db() as db:
            clients = (
                await db.execute(select(OAuthClient).order_by(OAuthClient.created_at))
            ).scalars()
            creds = (
                await db.execute(select(OAuthClientCredential.client_id).where(_usable(self.now())))
            ).scalars()
            counts: dict[str, int] = {}
            for cid in creds:
                counts[cid] = counts.get(cid, 0) + 1
            return [
                ClientInfo(
                    c.client_id,
                    c.name,
                    c.user_id,
                    tuple(c.scopes.split()),
                    "private_key_jwt" if c.jwks else "client_secret",
                    c.disabled,
                    c.created_at,
                    counts.get(c.client_id, 0),
                )
                for c in clients
            ]

    async def _client(self, db: AsyncSession, client_id: str) -> OAuthClient:
        client = await db.get(OAuthClient, client_id) if CLIENT_ID.match(client_id) else None
        if client is None:
            raise ClientError(f"no such client: {client_id}")
        return client

    async def rotate_secret(self, client_id: str, keep_old: int = 0) -> str:
        """A new secret for ``client_id``; the older ones stop working ``keep_old`` seconds
        from now, and so do the tokens fetched with them (``docs/design.md``)."""
        if keep_old < 0:
            raise ClientError("--keep-old is a number of seconds, 0 or more")
        now = self.now()
        # Whole seconds: the retiring generation's session ends exactly then by
        # its age (created = retire_at - max age), with no rounding in between.
        retire_at = utc(int(now) + keep_old)
        secret = new_secret()
        async with self.db() as db:
            client = await self._client(db, client_id)
            if client.jwks is not None:
                raise ClientError(f"{client_id} authenticates with private_key_jwt, not a secret")
            old = (
                await db.execute(
                    select(OAuthClientCredential).where(
                        OAuthClientCredential.client_id == client_id, _usable(now)
                    )
                )
            ).scalars()
            for credential in old:
                if credential.retire_at is None or credential.retire_at > retire_at:
                    credential.retire_at = retire_at
            db.add(
                OAuthClientCredential(
                    client_id=client_id, secret_hash=secret_digest(secret), created_at=utc(now)
                )
            )
            user_id = client.user_id
            await db.commit()
        # After the retire time is stored: a fetch that opened a session before it
        # is ended here; one after it reads the retire time (client_sessions.py).
        # A retiring generation's next fetch opens a session that ends at its
        # retire time by the session's own age rule.
        await self.manager.end_all(user_id)
        security_event("client_secret_rotated", client_id=client_id, keep_old=keep_old)
        return secret

    async def set_disabled(self, client_id: str, disabled: bool) -> None:
        """Disable (its live tokens are refused on their next request) or enable a client."""
        async with self.db() as db:
            client = await self._client(db, client_id)
            client.disabled = disabled
            user_id = client.user_id
            await db.commit()
        if disabled:
            # After the flag, as `users disable` does: a fetch checked before it is
            # refused once it opens its session (client_sessions.py reads it again).
            await self.manager.end_all(user_id)
        security_event("client_disabled" if disabled else "client_enabled", client_id=client_id)
