"""Pure rules of device login codes (RFC 8628 section 6.1): make, show, read back, hash.

The user code is 8 letters from an alphabet with no vowels (no words are
spelt by accident) and none of the letters people confuse: 20 ** 8, about
2.56e10 codes. It is shown as ``BCDF-GHJK`` and read back in any case, with
or without the hyphen or spaces. The device code is 256 bits of randomness,
kept only as its SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import secrets

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
# What a person may type: the letters, in any case, with a hyphen or spaces between.
_TYPED = re.compile(r"[A-Za-z\- ]{1,32}")
_USER_CODE = re.compile(rf"[{USER_CODE_ALPHABET}]{{{USER_CODE_LENGTH}}}")
# secrets.token_urlsafe(32): 43 characters of base64url.
DEVICE_CODE = re.compile(r"[A-Za-z0-9_-]{43}")


def new_user_code() -> str:
    """A fresh user code, as stored (8 letters, no hyphen)."""
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))


def show_user_code(code: str) -> str:
    """A stored user code as people read it: ``BCDF-GHJK``."""
    half = USER_CODE_LENGTH // 2
    return f"{code[:half]}-{code[half:]}"


def read_user_code(typed: str) -> str | None:
    """What a person typed, as a stored user code; ``None`` when it cannot be one."""
    if not _TYPED.fullmatch(typed):
        return None
    code = typed.replace("-", "").replace(" ", "").upper()
    return code if _USER_CODE.fullmatch(code) else None


def new_device_code() -> str:
    """A fresh device code: what the device keeps and polls with."""
    return secrets.token_urlsafe(32)


def hash_device_code(code: str) -> str | None:
    """The key a device code is kept under; ``None`` for what cannot be a device code."""
    if not DEVICE_CODE.fullmatch(code):
        return None
    return hashlib.sha256(code.encode("ascii")).hexdigest()
