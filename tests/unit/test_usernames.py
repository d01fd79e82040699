"""The username definition alone: the profile, the skeleton, one pattern read alike."""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Annotated

import precis_i18n
import pydantic
import pytest

from quart_tokengate.service import username_ranges, usernames


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("\uff41\uff4c\uff49\uff43\uff45", "alice"),  # full width
        ("a\u0301lice", "\u00e1lice"),  # NFC
        ("Stra\u00dfe", "stra\u00dfe"),
        ("\u041c\u0430\u0440\u0438\u044f", "\u043c\u0430\u0440\u0438\u044f"),
        ("first.last+tag@example-org_1", "first.last+tag@example-org_1"),
    ],
)
def test_valid_names_are_kept_in_their_case_mapped_form(given, kept):
    assert usernames.canonical(given) == kept


@pytest.mark.parametrize(
    "bad",
    ["", "a b", "a\u200dlice", "a\u200blice", "al!ce", "a/b", "\ufb01", "x" * 151, "\u2460",
     "a\u00a0b", "\U0001d41a"],
)  # fmt: skip
def test_invalid_names_are_refused(bad):
    with pytest.raises(usernames.InvalidUsername):
        usernames.canonical(bad)


def test_look_alikes_share_a_skeleton():
    alice = usernames.skeleton("alice")
    assert usernames.skeleton("\u0430lice") == alice  # Cyrillic a
    assert usernames.skeleton("al\u0456ce") == alice  # Cyrillic i
    assert usernames.skeleton("m") == usernames.skeleton("rn")
    assert usernames.skeleton("bob") != alice
    assert usernames.lookup_forms("ALICE") == ("alice", "ALICE")
    assert usernames.lookup_forms("a b") == ("a b",)


def test_the_pattern_is_read_alike_by_pythons_and_pydantics_engines():
    """The old ``[\\w.@+-]`` meant other things to each engine; explicit ranges do not."""
    python = re.compile(usernames.PATTERN)
    model = pydantic.TypeAdapter(
        Annotated[str, pydantic.StringConstraints(pattern=usernames.PATTERN)]
    )

    def rust(text: str) -> bool:
        try:
            model.validate_python(text)
        except pydantic.ValidationError:
            return False
        return True

    samples = [chr(c) for c in range(0x20, 0x3400)] + [
        chr(c) for c in range(0xA000, 0x10000) if not 0xD800 <= c < 0xE000
    ]
    differ = [s for s in samples if bool(python.match(s)) != rust(s)]
    assert differ == []


def _table_fits() -> bool:
    """Whether ``username_ranges.py`` was made for this process's versions."""
    running = (unicodedata.unidata_version, precis_i18n.__version__)
    return running == (username_ranges.UNIDATA_VERSION, username_ranges.PRECIS_I18N_VERSION)


def test_the_kept_ranges_are_the_computed_ones():
    """``username_ranges.py`` spares every process the computation, and says nothing else:
    the pattern is the computed one, and the file is what ``ranges_module()`` writes for
    the versions it names (else it is not read at all)."""
    assert usernames._pattern(usernames._ranges()) == usernames.PATTERN
    if _table_fits():
        written = Path(username_ranges.__file__).read_text(encoding="utf-8")
        assert written == usernames.ranges_module(), usernames.ranges_module.__doc__
    else:
        assert usernames._kept_ranges() is None


def test_importing_the_definition_computes_no_ranges_where_the_table_fits():
    """With precis-i18n's derived property made to fail, the import succeeds exactly when
    the kept table is made for this process's versions (so it is what was read)."""
    code = (
        "import precis_i18n.derived as d\n"
        "def refuse(*args):\n"
        "    raise SystemExit('computed')\n"
        "d.derived_property = refuse\n"
        "import quart_tokengate.service.usernames\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    expected = (0, "") if _table_fits() else (1, "computed")
    assert (done.returncode, done.stderr.strip()) == expected
