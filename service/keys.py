"""Signing keys: generated once, kept in the database, shared by every instance.

With ``TOKENGATE_SECRET_KEY`` set, the one key is that HS256 secret (its
``kid`` derived from it) and nothing is stored. Otherwise the keys of
``TOKENGATE_ALGORITHM`` live in the ``signing_keys`` table: the first instance
to start on an empty database creates one under a lock (instances starting
together agree on it), and ``tokengate keys rotate`` adds the next.

A rotated key is published (JWKS, every instance's key set) at once and signs
from ``ACTIVATION_DELAY`` seconds later, by which time every instance has
re-read the key set (each does every ``RELOAD_INTERVAL`` seconds), so no
instance meets a token signed with a key it does not know yet. The key it
replaces verifies until no token it signed can still be valid, then any
instance re-reading the set deletes it. The hot path reads the in-memory set
only, never the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import delete, false, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import sealing, tokens
from .credentials.secret import rewrap_secrets
from .db.models import SigningKey as SigningKeyRow
from .settings import Settings

log = logging.getLogger("tokengate")

# Seconds between two re-reads of the key set by a running instance.
RELOAD_INTERVAL = 2.0
# A rotated key signs this long after it is published: over two re-reads.
ACTIVATION_DELAY = 5
# Kept past a retired key's last possible token, for clocks that disagree a little.
PRUNE_SLACK = 60
# How long the JWKS may be cached by a verifier (which re-fetches on an unknown kid).
JWKS_MAX_AGE = 60
RSA_BITS = 2048


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def generate(algorithm: str) -> tuple[str, str | None]:
    """A new key for ``algorithm``: ``(secret or private PEM, public PEM or None)``."""
    if algorithm == "HS256":
        return secrets.token_urlsafe(48), None
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        raise ValueError(f"unsupported algorithm {algorithm!r}")
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


def new_kid() -> str:
    return secrets.token_urlsafe(12)


def row_aad(kid: str, algorithm: str) -> bytes:
    """What a stored key's wrapping is bound to: its row (a secret moved to another does not
    unwrap)."""
    return sealing.aad("signing_keys", kid, algorithm)


def wrap_secret(keks: sealing.KeyEncryptionKeys, kid: str, algorithm: str, secret: str) -> str:
    """A key's secret (HMAC secret or private PEM) as stored: wrapped under the current KEK."""
    return keks.wrap(secret.encode(), row_aad(kid, algorithm))


def unwrap_secret(row: SigningKeyRow, keks: sealing.KeyEncryptionKeys) -> str:
    """The secret of a stored key; plain text as an older version stored it is read as is."""
    if not sealing.is_wrapped(row.secret):
        return row.secret
    what = f"signing key {row.kid}"
    return keks.unwrap(row.secret, row_aad(row.kid, row.algorithm), what).decode()


def from_row(row: SigningKeyRow, keks: sealing.KeyEncryptionKeys) -> tokens.SigningKey:
    """Parse a stored key once into the objects PyJWT signs and verifies with."""
    active_at = row.created_at.timestamp()
    secret = unwrap_secret(row, keks)
    if row.algorithm == "HS256":
        raw = secret.encode()
        return tokens.SigningKey(row.kid, row.algorithm, raw, raw, active_at)
    private = serialization.load_pem_private_key(secret.encode(), password=None)
    if row.public_key:
        public: Any = serialization.load_pem_public_key(row.public_key.encode())
    else:
        public = private.public_key()
    return tokens.SigningKey(row.kid, row.algorithm, private, public, active_at)


def public_jwk(key: tokens.SigningKey) -> dict[str, Any] | None:
    """The RFC 7517 public JWK of an asymmetric key; ``None`` for an HMAC secret."""
    if key.algorithm == "HS256":
        return None
    jwk = jwt.get_algorithm_by_name(key.algorithm).to_jwk(key.verifying, as_dict=True)
    assert isinstance(jwk, dict)
    jwk = {k: v for k, v in jwk.items() if k not in {"d", "p", "q", "dp", "dq", "qi"}}
    jwk.update(kid=key.kid, alg=key.algorithm, use="sig")
    return jwk


def token_lifetime(settings: Settings) -> int:
    """The longest a token signed by a key can stay valid after the key stops signing."""
    return (
        max(settings.access_ttl, settings.refresh_ttl, settings.reset_ttl)
        + settings.leeway
        + PRUNE_SLACK
    )


async def _lock(db: AsyncSession) -> None:
    """Serialise writers of ``signing_keys`` for the rest of this transaction.

    PostgreSQL: a table lock that readers do not wait on. SQLite: a write as
    the transaction's first statement takes the database's write lock (a later
    one could fail on a stale snapshot instead of waiting).
    """
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(text("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE"))
    else:
        await db.execute(delete(SigningKeyRow).where(false()))


async def _rows(db: AsyncSession, algorithm: str) -> Sequence[SigningKeyRow]:
    query = select(SigningKeyRow).where(SigningKeyRow.algorithm == algorithm)
    return (await db.execute(query)).scalars().all()


def _new_row(
    algorithm: str,
    created_at: float,
    material: tuple[str, str | None],
    keks: sealing.KeyEncryptionKeys,
) -> SigningKeyRow:
    secret, public = material
    kid = new_kid()
    return SigningKeyRow(
        kid=kid, algorithm=algorithm, secret=wrap_secret(keks, kid, algorithm, secret),
        public_key=public, created_at=utc(created_at), retired_at=None,
    )  # fmt: skip


async def ensure_keys(
    sessions: async_sessionmaker[AsyncSession],
    algorithm: str,
    now: float,
    keks: sealing.KeyEncryptionKeys,
    imported_secret: str | None = None,
) -> Sequence[SigningKeyRow]:
    """The stored keys of ``algorithm``, creating the first one if there is none.

    Race-safe: instances starting together on an empty database take the
    lock in turn, and only the first finds nothing and creates the key.
    ``imported_secret`` (HS256 only) becomes that first key instead of a new
    one, so that an install that kept its key in a file keeps its sessions.
    """
    async with sessions() as db:
        rows = await _rows(db, algorithm)
        if rows:
            return rows
    if imported_secret is not None and algorithm == "HS256":
        material: tuple[str, str | None] = (imported_secret, None)
    else:
        material = await asyncio.to_thread(generate, algorithm)
    async with sessions() as db:
        await _lock(db)
        rows = await _rows(db, algorithm)
        if rows:
            return rows
        row = _new_row(algorithm, int(now), material, keks)
        db.add(row)
        await db.commit()
        log.info("created the first %s signing key (kid %s)", algorithm, row.kid)
        return [row]


async def rotate_keys(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    now: float,
    keks: sealing.KeyEncryptionKeys,
) -> SigningKeyRow:
    """Add the next key: published now, signing from ``now + ACTIVATION_DELAY``.

    The keys it replaces are retired from that moment, and keys retired long
    enough ago that none of their tokens can still be valid are deleted.
    """
    algorithm = settings.algorithm
    material = await asyncio.to_thread(generate, algorithm)
    # Whole seconds, as token times are: a token issued at that second is signed with it.
    activate_at = int(now) + ACTIVATION_DELAY
    async with sessions() as db:
        await _lock(db)
        await db.execute(
            update(SigningKeyRow)
            .where(SigningKeyRow.algorithm == algorithm, SigningKeyRow.retired_at.is_(None))
            .values(retired_at=utc(activate_at))
        )
        row = _new_row(algorithm, activate_at, material, keks)
        db.add(row)
        await _prune(db, algorithm, now - token_lifetime(settings))
        await db.commit()
    return row


async def _prune(db: AsyncSession, algorithm: str, before: float) -> None:
    await db.execute(
        delete(SigningKeyRow).where(
            SigningKeyRow.algorithm == algorithm,
            SigningKeyRow.retired_at.is_not(None),
            SigningKeyRow.retired_at < utc(before),
        )
    )


async def wrap_plain_keys(
    sessions: async_sessionmaker[AsyncSession], keks: sealing.KeyEncryptionKeys
) -> int:
    """Wrap the keys an older version stored in plain text, under the current KEK; how many."""
    async with sessions() as db:
        await _lock(db)
        rows = (await db.execute(select(SigningKeyRow))).scalars().all()
        plain = [row for row in rows if not sealing.is_wrapped(row.secret)]
        for row in plain:
            row.secret = wrap_secret(keks, row.kid, row.algorithm, row.secret)
        await db.commit()
    return len(plain)


async def rewrap_keys(
    sessions: async_sessionmaker[AsyncSession], keks: sealing.KeyEncryptionKeys
) -> tuple[int, int]:
    """Move every stored key, of every algorithm, to the current KEK: ``(moved, stored)``.

    Each key is unwrapped with whichever known KEK it names (plain text left by
    an older version is read as is), checked, and wrapped again. All or
    nothing: a key that no known KEK unwraps raises :class:`sealing.SealingError`
    before anything is written. Running instances are not disturbed: they
    hold their keys parsed, and read only keys new to them. The server
    secrets (the API-key digest secret) move in the same transaction and are
    counted with the keys.
    """
    async with sessions() as db:
        await _lock(db)
        rows = (await db.execute(select(SigningKeyRow))).scalars().all()
        moved = 0
        for row in rows:
            secret = unwrap_secret(row, keks)  # every key, so that a bad one stops it all
            if sealing.wrapped_under(row.secret) != keks.current.id:
                row.secret = wrap_secret(keks, row.kid, row.algorithm, secret)
                moved += 1
        others = await rewrap_secrets(db, keks)
        await db.commit()
    return moved + others[0], len(rows) + others[1]


class KeyRing:
    """The key set one instance signs and verifies with, kept fresh in the background."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession] | None,
        clock: Callable[[], float],
        keks: sealing.KeyEncryptionKeys | None = None,
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self.clock = clock
        # Resolved at the first load (it may create the instance's KEK file).
        self._keks = keks
        self._parsed: dict[str, tokens.SigningKey] = {}
        self._signing: tokens.SigningConfig | None = None
        self._jwks: dict[str, Any] = {"keys": []}
        self._kids: tuple[str, ...] = ()
        self._failing = False
        if settings.secret_key is not None:
            self._install(
                tokens.SigningConfig.from_secret(
                    settings.secret_key, settings.issuer, settings.audience, settings.leeway
                ).keys
            )

    @property
    def key_encryption_keys(self) -> sealing.KeyEncryptionKeys | None:
        """The KEKs the stored keys are wrapped under (``None`` before the first load)."""
        return self._keks

    @property
    def stored(self) -> bool:
        """Whether the keys live in the database (no ``TOKENGATE_SECRET_KEY``)."""
        return self.settings.secret_key is None

    @property
    def signing(self) -> tokens.SigningConfig:
        if self._signing is None:
            raise RuntimeError("the signing keys are not loaded yet")
        return self._signing

    @property
    def jwks(self) -> dict[str, Any]:
        """The RFC 7517 JWK Set of the public keys (no keys with HS256)."""
        return self._jwks

    def _install(self, keyset: tokens.KeySet) -> None:
        s = self.settings
        self._signing = tokens.SigningConfig(keyset, s.issuer, s.audience, s.leeway)
        found = (public_jwk(k) for k in keyset.keys)
        self._jwks = {"keys": [jwk for jwk in found if jwk is not None]}
        self._kids = tuple(k.kid for k in keyset.keys)

    async def load(self, imported_secret: str | None = None) -> None:
        """Read the key set (creating the first key if needed) and prune dead keys."""
        if not self.stored:
            return
        assert self._sessions is not None
        s = self.settings
        if self._keks is None:
            self._keks = await asyncio.to_thread(sealing.load_keks, s)
        keks = self._keks
        now = self.clock()
        rows = list(await ensure_keys(self._sessions, s.algorithm, now, keks, imported_secret))
        if any(not sealing.is_wrapped(r.secret) for r in rows):
            wrapped = await wrap_plain_keys(self._sessions, keks)
            if wrapped:
                log.info(
                    "wrapped %d signing keys stored in plain text under key-encryption key %s",
                    wrapped,
                    keks.current.id,
                )
        horizon = now - token_lifetime(s)
        dead = [r for r in rows if r.retired_at is not None and r.retired_at.timestamp() < horizon]
        if dead:
            async with self._sessions() as db:
                await _prune(db, s.algorithm, horizon)
                await db.commit()
            rows = [r for r in rows if r not in dead]
        kids = tuple(sorted(r.kid for r in rows))
        if kids == tuple(sorted(self._kids)):
            return
        # Keys in hand are kept as parsed: a key rewrapped since under a KEK
        # this instance does not have yet does not stop it re-reading the set.
        self._parsed = {r.kid: self._parsed.get(r.kid) or from_row(r, keks) for r in rows}
        self._install(tokens.KeySet(s.algorithm, tuple(self._parsed[r.kid] for r in rows)))
        log.info("signing keys loaded: %s", ", ".join(kids))

    async def keep_fresh(self) -> None:
        """Re-read the key set every ``RELOAD_INTERVAL`` seconds until cancelled."""
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            try:
                await self.load()
            except Exception as exc:  # the keys in hand keep working; try again soon
                if not self._failing:
                    # A KEK problem says which key and KEK (never key material).
                    why = str(exc) if isinstance(exc, sealing.SealingError) else type(exc).__name__
                    log.warning("could not re-read the signing keys: %s", why)
                self._failing = True
            else:
                if self._failing:
                    log.info("signing keys re-read again")
                self._failing = False


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a ``keep_fresh`` task and wait for it."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
