"""SQLAlchemy models: the durable truth about users and sessions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    # The name's look-alike skeleton (usernames.skeleton): unique, so that of two
    # names people would confuse, only one can ever be registered.
    username_skeleton: Mapped[str] = mapped_column(String(1000), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # A disabled user cannot log in; disabling ends every session.
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Space-separated scopes, carried by access tokens from the next login or refresh.
    scopes: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    # "person", or "service": a service account (an OAuth client's own user),
    # which never logs in with a password.
    kind: Mapped[str] = mapped_column(String(16), default="person", server_default="person")


class AuthSession(Base):
    """One login: the refresh-token chain and everything the guard decides on."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_user_live", "user_id", "ended_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # No foreign key: the user may live in the application's own store.
    user_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(400), nullable=True)
    # The current pair (jtis and its JWT ``iat``, integer epoch seconds, from
    # which it can be minted again), and the refresh jti it replaced (for the
    # grace window and reuse detection).
    access_jti: Mapped[str] = mapped_column(String(64))
    refresh_jti: Mapped[str] = mapped_column(String(64))
    iat: Mapped[int] = mapped_column(Integer)
    previous_refresh_jti: Mapped[str | None] = mapped_column(String(64), nullable=True)


class PurposeTokenRecord(Base):
    """A purpose-bound token, kept so that it can be consumed exactly once."""

    __tablename__ = "purpose_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    purpose: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SigningKey(Base):
    """A key that signs tokens, kept here so that every instance on this database
    signs and verifies alike. The newest unretired key signs; older ones verify
    until no token they signed can still be valid, then they are pruned."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    # The HMAC secret, or the private key as PKCS#8 PEM; never leaves the service.
    secret: Mapped[str] = mapped_column(Text)
    # The public key as SubjectPublicKeyInfo PEM (asymmetric algorithms only).
    public_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiKey(Base):
    """A user's API key: never the key itself, only its HMAC-SHA-256 under the server secret."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_user", "user_id"),)

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    # No foreign key: the user may live in the application's own store.
    user_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    # Space-separated; narrowed at check time to the scopes the user still has.
    scopes: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # "revoked" (by its owner or an operator) or "leaked" (reported by a scanner).
    revoked_why: Mapped[str | None] = mapped_column(String(16), nullable=True)


class ServerSecret(Base):
    """A secret the service keeps for itself (the API-key digest secret), by name."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OAuthClient(Base):
    """A service account's OAuth client (client-credentials grant, RFC 6749 section 4.4)."""

    __tablename__ = "oauth_clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(150))
    # The service account: a user row of kind "service"; its tokens' ``sub``.
    user_id: Mapped[int] = mapped_column(Integer, unique=True)
    # Space-separated: the scopes this client may ask for.
    scopes: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    # The public keys of private_key_jwt (RFC 7523), a JWKS as JSON; NULL for a secret.
    jwks: Mapped[str | None] = mapped_column(Text, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OAuthClientCredential(Base):
    """One generation of a client's credential: a secret (kept as its SHA-256), or
    the registered keys. Each generation has at most one current session, which
    every token fetched with it names, so that retiring the generation ends them."""

    __tablename__ = "oauth_client_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    # Hex SHA-256 of a 256-bit random secret (no salt or stretching needed at
    # that entropy); NULL for the private_key_jwt generation.
    secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # From then on this generation no longer authenticates, and its session is over.
    retire_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class DeviceCode(Base):
    """A device login (RFC 8628) waiting for, or given, a person's confirmation.

    The device code itself is never kept, only its SHA-256 (256 bits of
    randomness need no salt). ``status`` moves pending -> approved -> used, or
    pending -> denied, each step one conditional UPDATE, so that two pages or
    two polls racing on one code change it once.
    """

    __tablename__ = "device_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The 8 letters, without the hyphen; unique among the rows kept.
    user_code: Mapped[str] = mapped_column(String(8), unique=True)
    client_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scope: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(400), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # The polling interval in force for this code (grows by 5 s at each slow_down).
    interval: Mapped[int] = mapped_column(Integer)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
