"""The API-key format, pure: no server, no I/O."""

from __future__ import annotations

import re
import zlib

import pytest

from quart_tokengate.service.credentials import apikeys
from quart_tokengate.service.errors import InvalidToken

SCANNER = re.compile(r"tgk_[0-9A-Za-z]{38}")  # what README and docs/credentials.md give


def test_a_new_key_matches_the_scanner_pattern_and_its_own_checksum():
    keys = {apikeys.new_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert SCANNER.fullmatch(key) and apikeys.parse(key) == key
        body = key[4:36]
        assert key[36:] == apikeys.checksum(body)


def test_the_checksum_is_the_crc32_of_the_random_part_in_six_base62_digits():
    body = "0" * 32
    crc = zlib.crc32(body.encode())
    digits = apikeys.checksum(body)
    value = 0
    for ch in digits:
        value = value * 62 + apikeys.BASE62.index(ch)
    assert len(digits) == 6 and value == crc
    assert apikeys.base62(0, 6) == "000000" and apikeys.base62(61, 2) == "0z"
    assert apikeys.base62(2**32 - 1, 6) == "4gfFC3"  # the largest CRC32 still fits in six


def test_one_wrong_character_anywhere_is_refused_before_any_lookup():
    key = apikeys.new_key()
    for i in range(4, len(key)):
        other = "A" if key[i] != "A" else "B"
        with pytest.raises(InvalidToken):
            apikeys.parse(key[:i] + other + key[i + 1 :])


@pytest.mark.parametrize(
    "bad", ["", "tgk_", "tgk_" + "a" * 37, "tgk_" + "a" * 39, "TGK_" + "a" * 38, "tgk_" + "é" * 38]
)
def test_what_is_not_shaped_like_a_key_is_refused(bad):
    with pytest.raises(InvalidToken):
        apikeys.parse(bad)


def test_the_digest_depends_on_the_secret_and_the_derived_secret_on_the_key():
    key = apikeys.new_key()
    one, two = apikeys.derive_secret("a" * 32), apikeys.derive_secret("b" * 32)
    assert one != two and len(one) == 32
    assert apikeys.digest(one, key) != apikeys.digest(two, key)
    assert apikeys.digest(one, key) == apikeys.digest(one, key)
    assert len(apikeys.digest(one, key)) == 64 and key not in apikeys.digest(one, key)
    assert apikeys.KEY_ID.match(apikeys.new_key_id())
