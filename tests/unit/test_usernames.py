"""The username definition alone: the profile, the skeleton, one pattern read alike."""

from __future__ import annotations

import re
from typing import Annotated

import pydantic
import pytest

from quart_tokengate.service import usernames


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
