"""Wrapping secrets: AES-GCM under a KEK, bound to its row; the KEK file made once, 0600."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from quart_tokengate.service import sealing
from quart_tokengate.service.sealing import KeyEncryptionKey, KeyEncryptionKeys, SealingError


def test_a_wrapped_secret_unwraps_with_its_aad_alone_and_names_its_kek():
    keks = KeyEncryptionKeys(KeyEncryptionKey.generate())
    here = sealing.aad("api_keys", "42")
    wrapped = keks.wrap(b"the secret", here)
    assert "the secret" not in wrapped and sealing.is_wrapped(wrapped)
    assert sealing.wrapped_under(wrapped) == keks.current.id
    assert keks.unwrap(wrapped, here) == b"the secret"
    assert keks.wrap(b"the secret", here) != wrapped  # a fresh nonce each time
    for elsewhere in (sealing.aad("api_keys", "43"), sealing.aad("api_key", "s42")):
        with pytest.raises(SealingError, match="altered or copied from another row"):
            keks.unwrap(wrapped, elsewhere)


def test_older_keks_unwrap_and_an_unknown_one_is_named():
    old, new = KeyEncryptionKey.generate(), KeyEncryptionKey.generate()
    wrapped = KeyEncryptionKeys(old).wrap(b"s", b"row")
    assert KeyEncryptionKeys(new, (old,)).unwrap(wrapped, b"row") == b"s"
    with pytest.raises(SealingError) as info:
        KeyEncryptionKeys(new).unwrap(wrapped, b"row", "signing key k1")
    message = str(info.value)
    assert message.startswith(f"signing key k1 is wrapped under key-encryption key {old.id},")
    assert "TOKENGATE_OLD_KEY_ENCRYPTION_KEY" in message and old.text() not in message


def test_the_kek_file_is_made_once_0600_whoever_starts_first(tmp_path):
    path = tmp_path / "instance" / sealing.KEK_FILE
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda _: sealing.kek_file(path), range(16)))
    assert len({k.id for k in found}) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [sealing.KEK_FILE]  # no leftovers
    assert repr(found[0]).count(found[0].text()) == 0
