"""Secrets at rest: AES-GCM under a key-encryption key, bound to the row they belong to.

The database holds secrets (the signing keys' private halves, HMAC secrets)
only wrapped: ``wrap(plaintext, aad)`` gives a text of the form
``tg-sealed-v1.<kek id>.<nonce>.<ciphertext>``, which names the key-encryption
key (KEK) it was wrapped under, so that a set of KEKs (the current one and
older ones during a rotation) can unwrap anything any of them wrapped. The
associated data names the row (table, id, ...): a ciphertext copied into
another row does not unwrap there. A dump of the database alone holds no key
material; the KEK lives outside it (``TOKENGATE_KEY_ENCRYPTION_KEY``, or a
0600 file in the instance folder for the embedded default).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .instance import private_dir

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("tokengate")

KEK_BYTES = 32
NONCE_BYTES = 12
PREFIX = "tg-sealed-v1."
KEK_FILE = "key-encryption.key"
SETTING = "TOKENGATE_KEY_ENCRYPTION_KEY"
OLD_SETTING = "TOKENGATE_OLD_KEY_ENCRYPTION_KEY"
KEK_FORMAT = (
    f"expected {KEK_BYTES} bytes in base64url (43 characters; make one with "
    "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
)


class SealingError(RuntimeError):
    """A secret cannot be wrapped or unwrapped; the message is one line naming the fix."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_kek(text: str) -> bytes:
    """The 32 key bytes of a KEK written in base64url; ``ValueError`` (without the value) if not."""
    text = text.strip()
    try:
        raw = _unb64(text) if text.isascii() else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEK_BYTES or _b64(raw) != text.rstrip("="):
        raise ValueError(KEK_FORMAT)
    return raw


def aad(*parts: str) -> bytes:
    """Associated data naming a secret's place (table, row id, ...), unambiguous for any parts."""
    return b"".join(len(p.encode()).to_bytes(2, "big") + p.encode() for p in ("tokengate", *parts))


@dataclass(frozen=True, slots=True)
class KeyEncryptionKey:
    """One KEK; its ``id`` (a keyed hash of it) says which KEK wrapped a ciphertext."""

    raw: bytes = field(repr=False)
    id: str = ""

    @classmethod
    def from_bytes(cls, raw: bytes) -> KeyEncryptionKey:
        if len(raw) != KEK_BYTES:
            raise ValueError(KEK_FORMAT)
        digest = hmac.new(raw, b"tokengate key-encryption key id", hashlib.sha256).digest()
        return cls(raw, _b64(digest[:8]))

    @classmethod
    def from_text(cls, text: str) -> KeyEncryptionKey:
        return cls.from_bytes(decode_kek(text))

    @classmethod
    def generate(cls) -> KeyEncryptionKey:
        return cls.from_bytes(secrets.token_bytes(KEK_BYTES))

    def text(self) -> str:
        return _b64(self.raw)


def is_wrapped(value: str) -> bool:
    """Whether a stored value is a wrapped secret (else: plain text left by an older version)."""
    return value.startswith(PREFIX)


def wrapped_under(value: str) -> str | None:
    """The id of the KEK that wrapped ``value``; ``None`` for plain text."""
    if not is_wrapped(value):
        return None
    return value[len(PREFIX) :].split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class KeyEncryptionKeys:
    """The KEK that wraps (``current``) and every KEK that may unwrap (``current`` too)."""

    current: KeyEncryptionKey
    older: tuple[KeyEncryptionKey, ...] = ()
    # Where ``current`` comes from, for messages (the setting or the file).
    source: str = SETTING

    def wrap(self, plaintext: bytes, aad: bytes) -> str:
        """``plaintext`` wrapped under the current KEK, bound to ``aad``."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self.current.raw).encrypt(nonce, plaintext, aad)
        return f"{PREFIX}{self.current.id}.{_b64(nonce)}.{_b64(sealed)}"

    def unwrap(self, value: str, aad: bytes, what: str = "a secret") -> bytes:
        """The plaintext of a wrapped ``value`` whose associated data is ``aad``.

        Raises :class:`SealingError` naming ``what`` when the KEK it names is
        not known here, or when it does not unwrap (tampered, or moved from
        another row).
        """
        parts = value[len(PREFIX) :].split(".") if is_wrapped(value) else []
        if len(parts) != 3:
            raise SealingError(f"{what} is not a wrapped secret")
        kek_id, nonce, sealed = parts
        kek = next((k for k in (self.current, *self.older) if k.id == kek_id), None)
        if kek is None:
            raise SealingError(
                f"{what} is wrapped under key-encryption key {kek_id}, which this instance "
                f"does not have (it has {', '.join(self.ids)}): set {SETTING} to it, or name "
                f"it in {OLD_SETTING} while moving to a new one"
            )
        try:
            return AESGCM(kek.raw).decrypt(_unb64(nonce), _unb64(sealed), aad)
        except (InvalidTag, binascii.Error, ValueError):
            raise SealingError(
                f"{what} does not unwrap under key-encryption key {kek_id}: it was altered "
                "or copied from another row"
            ) from None

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(k.id for k in (self.current, *self.older))


def _private_file_exists(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return False
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "the key-encryption key file %s can be read by others (mode %o): chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    return True


def kek_file(path: Path) -> KeyEncryptionKey:
    """The KEK kept in ``path``, created (mode 0600) on first use.

    Processes starting together agree: the key is written to a file of its
    own and linked into place, and whoever links second reads the winner's.
    """
    if not _private_file_exists(path):
        private_dir(path.parent)
        kek = KeyEncryptionKey.generate()
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(kek.text() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
            log.warning(
                "created the key-encryption key %s in %s: back it up apart from the "
                "database (without it the stored signing keys cannot be read)",
                kek.id,
                path,
            )
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
    try:
        return KeyEncryptionKey.from_text(path.read_text())
    except ValueError as exc:
        raise SealingError(f"the key-encryption key file {path}: {exc}") from None


def load_keks(settings: Settings, older_files: Iterable[Path] = ()) -> KeyEncryptionKeys:
    """The KEKs for ``settings``; blocking (it may create the instance's KEK file).

    ``TOKENGATE_KEY_ENCRYPTION_KEY`` when set; else, for the embedded
    database only, ``<instance>/key-encryption.key``. A database of one's
    own (``TOKENGATE_DATABASE_URL``) with no KEK is refused: a KEK made per
    instance would leave every other instance on that database unable to
    read the keys, and would be lost with an instance folder that does not
    outlive its container, so it must be given, alike, to every instance.
    ``TOKENGATE_OLD_KEY_ENCRYPTION_KEY`` and ``older_files`` add KEKs that
    unwrap only.
    """
    if settings.key_encryption_key is not None:
        current = KeyEncryptionKey.from_text(settings.key_encryption_key)
        source = SETTING
    elif settings.database_url is None:
        path = settings.instance_dir / KEK_FILE
        current = kek_file(path)
        source = str(path)
    else:
        raise SealingError(
            f"{SETTING}: must be set when TOKENGATE_DATABASE_URL is (the signing keys in that "
            "database are encrypted under it; give every instance the same one, "
            "see docs/operations.md)"
        )
    older = [KeyEncryptionKey.from_text(text) for text in settings.old_key_encryption_key]
    for path in older_files:
        try:
            older.append(KeyEncryptionKey.from_text(path.read_text()))
        except (OSError, ValueError) as exc:
            raise SealingError(f"cannot read a key-encryption key from {path}: {exc}") from None
    unique = {k.id: k for k in older if k.id != current.id}
    return KeyEncryptionKeys(current, tuple(unique.values()), source)
