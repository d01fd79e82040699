"""API keys, pure: the ``tgk_`` format, its CRC32 checksum, and the keyed digest kept instead.

A key is ``tgk_`` then 32 base62 characters of randomness then 6 base62
characters of the CRC32 of those 32 (``tgk_[0-9A-Za-z]{38}``), so a secret
scanner recognises one and a typo is refused before any lookup. The service
keeps only ``digest(secret, key)``, an HMAC-SHA-256 under a server secret.
No I/O here: everything is passed in, as in ``tokens.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib

from ..errors import InvalidToken

PREFIX = "tgk_"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_CHARS = 32
CHECKSUM_CHARS = 6
# What a secret scanner matches (README, docs/credentials.md).
PATTERN = re.compile(rf"{PREFIX}[0-9A-Za-z]{{{RANDOM_CHARS + CHECKSUM_CHARS}}}")
KEY_ID = re.compile(r"^[0-9A-Za-z]{16}$")
# The digest's first hex characters name the key's state in Redis (its hash tag).
TAG_CHARS = 32


def base62(number: int, width: int) -> str:
    """``number`` in base62, left-padded with ``0`` to ``width`` characters."""
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(body: str) -> str:
    """The 6-character base62 CRC32 of the key's 32 random characters."""
    return base62(zlib.crc32(body.encode()), CHECKSUM_CHARS)


def new_key() -> str:
    """A new API key: 32 random base62 characters (190 bits) and their checksum."""
    body = "".join(secrets.choice(BASE62) for _ in range(RANDOM_CHARS))
    return PREFIX + body + checksum(body)


def new_key_id() -> str:
    """A key's public id (listed, logged, used to revoke it): not derived from the key."""
    return "".join(secrets.choice(BASE62) for _ in range(16))


def looks_like_key(text: str) -> bool:
    """Whether a bearer credential is meant as an API key (the guard's one test)."""
    return text.startswith(PREFIX)


def parse(key: str) -> str:
    """Check a key's shape and checksum; return it, or raise ``InvalidToken``.

    A key that fails here was mistyped, cut short or made up: it is refused
    before any lookup.
    """
    if not PATTERN.fullmatch(key):
        raise InvalidToken("An API key is tgk_ followed by 38 letters and digits.")
    body, sent = key[len(PREFIX) : len(PREFIX) + RANDOM_CHARS], key[len(PREFIX) + RANDOM_CHARS :]
    if not hmac.compare_digest(checksum(body), sent):
        raise InvalidToken("The API key's checksum is wrong: it was mistyped or cut short.")
    return key


def digest(secret: bytes, key: str) -> str:
    """What the service keeps for ``key``: HMAC-SHA-256 under the server secret, in hex."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def derive_secret(secret_key: str) -> bytes:
    """The digest secret when ``TOKENGATE_SECRET_KEY`` is set: a key of its own, derived."""
    return hmac.new(secret_key.encode(), b"tokengate api-key digest", hashlib.sha256).digest()
