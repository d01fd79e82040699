"""Secrets at rest: signing keys wrapped under a key-encryption key, a private instance folder.

A database dump alone (every column of every row, the SQLite file's bytes)
must not hold key material that signs a token the service accepts.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from quart.testing.app import LifespanError
from sqlalchemy import select, update

from quart_tokengate.service import keys, sealing
from quart_tokengate.service.credentials import apikeys, secret
from quart_tokengate.service.db.engine import build_engine, build_sessionmaker
from quart_tokengate.service.db.models import ApiKey, ServerSecret
from quart_tokengate.service.db.models import SigningKey as SigningKeyRow
from quart_tokengate.service.sealing import KeyEncryptionKey, KeyEncryptionKeys, SealingError
from tests.conftest import bearer, me, me_answer, register_and_login
from tests.support import KEK

ALGORITHMS = ["HS256", "EdDSA", "ES256", "RS256"]
NEW_KEK = secrets.token_urlsafe(32)
# The forgeries below try short HMAC keys on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def gate_of(app):
    return app.extensions["tokengate"]


async def rows_of(database_url) -> list[SigningKeyRow]:
    engine = build_engine(database_url)
    try:
        async with build_sessionmaker(engine)() as db:
            return list((await db.execute(select(SigningKeyRow))).scalars().all())
    finally:
        await engine.dispose()


async def set_secret(database_url, kid: str, secret: str) -> None:
    engine = build_engine(database_url)
    try:
        async with build_sessionmaker(engine)() as db:
            await db.execute(
                update(SigningKeyRow).where(SigningKeyRow.kid == kid).values(secret=secret)
            )
            await db.commit()
    finally:
        await engine.dispose()


async def insert_plain_key(database_url, algorithm: str) -> tuple[str, str]:
    """A key row as a version before key wrapping stored it: the secret in plain text."""
    secret, public = keys.generate(algorithm)
    kid = keys.new_kid()
    engine = build_engine(database_url)
    try:
        async with build_sessionmaker(engine)() as db:
            db.add(
                SigningKeyRow(
                    kid=kid,
                    algorithm=algorithm,
                    secret=secret,
                    public_key=public,
                    created_at=datetime(2026, 1, 1, tzinfo=UTC),
                    retired_at=None,
                )
            )
            await db.commit()
    finally:
        await engine.dispose()
    return kid, secret


def forgeries(claims: dict, kid: str, algorithm: str, columns: list[str]) -> list[str]:
    """Tokens signed with every stored value, and every way of reading it as a key."""
    made = []
    for value in columns:
        candidates = [value.encode()]
        for part in value.split("."):
            with contextlib.suppress(ValueError):
                candidates.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        for key in filter(None, candidates):
            if algorithm == "HS256":
                made.append(jwt.encode(claims, key, "HS256", headers={"kid": kid, "typ": "at+jwt"}))
                continue
            try:
                private = serialization.load_pem_private_key(key, password=None)
            except (ValueError, TypeError):
                continue
            made.append(
                jwt.encode(claims, private, algorithm, headers={"kid": kid, "typ": "at+jwt"})
            )
    return made


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_a_database_dump_holds_no_key_material_that_can_forge_a_token(
    make_app, database_url, algorithm
):
    app = await make_app(secret_key=None, algorithm=algorithm)
    client = app.test_client()
    pair = await register_and_login(client)
    [row] = await rows_of(database_url)
    # What the service signs with, in memory: never in a column.
    [key] = gate_of(app).keyring.signing.keys.keys
    if algorithm == "HS256":
        material = key.signing
    else:
        material = key.signing.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    assert isinstance(material, bytes)
    columns = [row.kid, row.algorithm, row.secret, row.public_key or ""]
    assert row.secret.startswith(sealing.PREFIX)
    assert not any(material in c.encode() for c in columns)
    assert "PRIVATE KEY" not in row.secret
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite+aiosqlite:///"))
        files = (path, path.with_name(path.name + "-wal"))
        dump = b"".join(p.read_bytes() for p in files if p.exists())
        assert material not in dump and b"PRIVATE KEY" not in dump
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    claims = {**claims, "name": "mallory", "exp": claims["exp"] + 60}
    made = forgeries(claims, row.kid, algorithm, columns)
    assert made or algorithm != "HS256"
    for forged in made:
        status, body, _ = await me_answer(client, bearer(forged))
        assert (status, body["error"]) == (401, "invalid_token")
    assert await me(client, pair) == 200


async def test_a_wrapped_key_moved_to_another_row_or_altered_does_not_unwrap(
    make_app, database_url, clock
):
    app = await make_app(secret_key=None, algorithm="EdDSA", clock=clock)
    gate = gate_of(app)
    keks = gate.keyring.key_encryption_keys
    await keys.rotate_keys(gate.db, gate.settings, clock(), keks)
    first, second = await rows_of(database_url)
    await set_secret(database_url, first.kid, second.secret)
    with pytest.raises(LifespanError, match=f"signing key {first.kid} does not unwrap"):
        await make_app(secret_key=None, algorithm="EdDSA", clock=clock)

    altered = first.secret[:-2] + ("AA" if first.secret[-2:] != "AA" else "BB")
    await set_secret(database_url, first.kid, altered)
    with pytest.raises(LifespanError, match="altered or copied from another row"):
        await make_app(secret_key=None, algorithm="EdDSA", clock=clock)


async def test_keys_stored_in_plain_text_by_an_older_version_are_read_and_wrapped_at_start(
    make_app, database_url
):
    kid, secret = await insert_plain_key(database_url, "ES256")
    app = await make_app(secret_key=None, algorithm="ES256")
    pair = await register_and_login(app.test_client())
    assert jwt.get_unverified_header(pair["access_token"])["kid"] == kid
    [row] = await rows_of(database_url)
    assert (
        row.kid == kid and sealing.wrapped_under(row.secret) == KeyEncryptionKey.from_text(KEK).id
    )
    assert "PRIVATE KEY" not in row.secret
    assert keys.unwrap_secret(row, gate_of(app).keyring.key_encryption_keys) == secret
    assert await me(app.test_client(), pair) == 200


async def test_rewrap_moves_every_key_to_a_new_kek_plain_text_ones_too(
    make_app, database_url, clock
):
    app = await make_app(secret_key=None, algorithm="EdDSA", clock=clock)
    gate = gate_of(app)
    old = gate.keyring.key_encryption_keys
    pair = await register_and_login(app.test_client())
    await keys.rotate_keys(gate.db, gate.settings, clock(), old)
    plain_kid, _ = await insert_plain_key(database_url, "HS256")  # another algorithm's key
    before = {r.kid: r.secret for r in await rows_of(database_url)}
    assert not sealing.is_wrapped(before[plain_kid])

    new = KeyEncryptionKeys(KeyEncryptionKey.from_text(NEW_KEK), (old.current,))
    # Three signing keys and the API-key digest secret.
    assert await keys.rewrap_keys(gate.db, new) == (4, 4)
    after = await rows_of(database_url)
    assert {sealing.wrapped_under(r.secret) for r in after} == {new.current.id}
    assert all(r.secret != before[r.kid] for r in after)
    assert await keys.rewrap_keys(gate.db, new) == (0, 4)  # nothing left to move

    # The running instance is not disturbed; a new one needs only the new KEK.
    assert await me(app.test_client(), pair) == 200
    moved = await make_app(secret_key=None, algorithm="EdDSA", key_encryption_key=NEW_KEK)
    assert await me(moved.test_client(), pair) == 200
    assert {r.kid for r in await rows_of(database_url)} >= {plain_kid}
    with pytest.raises(LifespanError, match="which this instance does not have"):
        await make_app(secret_key=None, algorithm="EdDSA")  # the old KEK alone


async def test_an_instance_given_a_new_kek_and_the_old_one_reads_both_and_wraps_with_the_new(
    make_app, database_url
):
    # Step 1 of a rotation: instances restarted with the new KEK and the old one beside it.
    first = await make_app(secret_key=None, algorithm="EdDSA")
    pair = await register_and_login(first.test_client())
    both = {"key_encryption_key": NEW_KEK, "old_key_encryption_key": (KEK,)}
    second = await make_app(secret_key=None, algorithm="EdDSA", **both)
    assert await me(second.test_client(), pair) == 200
    gate = gate_of(second)
    keks = gate.keyring.key_encryption_keys
    assert keks.current.id == KeyEncryptionKey.from_text(NEW_KEK).id
    new = await keys.rotate_keys(gate.db, gate.settings, gate.clock(), keks)
    under = {r.kid: sealing.wrapped_under(r.secret) for r in await rows_of(database_url)}
    assert under[new.kid] == keks.current.id
    assert set(under.values()) == {keks.current.id, KeyEncryptionKey.from_text(KEK).id}
    third = await make_app(secret_key=None, algorithm="EdDSA", **both)
    assert await me(third.test_client(), pair) == 200


async def test_rewrap_changes_nothing_when_a_key_does_not_unwrap(make_app, database_url):
    app = await make_app(secret_key=None)
    gate = gate_of(app)
    stranger = KeyEncryptionKeys(KeyEncryptionKey.generate())
    await keys.rotate_keys(
        gate.db, gate.settings, gate.clock(), stranger
    )  # wrapped under a KEK we lose
    before = {r.kid: r.secret for r in await rows_of(database_url)}
    new = KeyEncryptionKeys(
        KeyEncryptionKey.from_text(NEW_KEK), (gate.keyring.key_encryption_keys.current,)
    )
    with pytest.raises(SealingError, match=f"key-encryption key {stranger.current.id}"):
        await keys.rewrap_keys(gate.db, new)
    assert {r.kid: r.secret for r in await rows_of(database_url)} == before


async def test_a_database_of_its_own_without_a_kek_is_refused_naming_the_setting(make_app):
    with pytest.raises(LifespanError) as info:
        await make_app(secret_key=None, key_encryption_key=None)
    message = str(info.value).removeprefix("Error during startup ")
    assert message.startswith("TOKENGATE_KEY_ENCRYPTION_KEY: must be set")
    assert "\n" not in message
    # With TOKENGATE_SECRET_KEY nothing is stored, so no KEK is needed.
    app = await make_app(key_encryption_key=None)
    assert await me(app.test_client(), await register_and_login(app.test_client())) == 200


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_embedded_instance_folder_is_private_and_its_kek_file_made_once(
    make_app, tmp_path
):
    instance = tmp_path / "fresh" / "instance"
    embedded = {"secret_key": None, "database_url": None, "key_encryption_key": None}
    app = await make_app(instance_dir=instance, **embedded)
    client = app.test_client()
    pair = await register_and_login(client)
    r = await client.post("/auth/password-reset/request", json={"username": "alice"})
    assert r.status_code == 202
    await gate_of(app).manager.background.drain()

    assert mode(instance) == 0o700 and mode(instance.parent) == 0o700
    kek_file = instance / sealing.KEK_FILE
    db = instance / "tokengate.db"
    outbox = list((instance / "outbox").iterdir())
    sidecars = [p for p in instance.iterdir() if p.name.startswith("tokengate.db-")]
    assert outbox and sidecars  # WAL mode: -wal and -shm beside the database
    for path in [kek_file, db, *sidecars, *outbox]:
        assert mode(path) == 0o600, path
    assert mode(instance / "outbox") == 0o700
    kek = KeyEncryptionKey.from_text(kek_file.read_text())
    [row] = await rows_of(f"sqlite+aiosqlite:///{db}")
    assert sealing.wrapped_under(row.secret) == kek.id

    # A second instance on the same folder reads the same KEK, and the key.
    again = await make_app(instance_dir=instance, **embedded)
    assert await me(again.test_client(), pair) == 200
    assert KeyEncryptionKey.from_text(kek_file.read_text()) == kek


async def test_an_embedded_database_left_readable_by_an_older_version_is_tightened(
    make_app, tmp_path
):
    instance = tmp_path / "instance"
    instance.mkdir(mode=0o700)
    db = instance / "tokengate.db"
    db.touch()
    db.chmod(0o644)
    await make_app(instance_dir=instance, database_url=None)
    assert mode(db) == 0o600
    assert all(mode(p) == 0o600 for p in instance.iterdir() if p.name.startswith("tokengate.db"))


async def server_secret_row(database_url) -> ServerSecret:
    engine = build_engine(database_url)
    try:
        async with build_sessionmaker(engine)() as db:
            [row] = (await db.execute(select(ServerSecret))).scalars().all()
            return row
    finally:
        await engine.dispose()


async def set_server_secret(database_url, value: str) -> None:
    engine = build_engine(database_url)
    try:
        async with build_sessionmaker(engine)() as db:
            await db.execute(update(ServerSecret).values(value=value))
            await db.commit()
    finally:
        await engine.dispose()


async def new_api_key(client, pair) -> str:
    headers = bearer(pair["access_token"])
    r = await client.post("/auth/api-keys", json={"name": "ci"}, headers=headers)
    assert r.status_code == 201
    return (await r.get_json())["key"]


async def key_works(app, key: str) -> bool:
    status, _, _ = await me_answer(app.test_client(), bearer(key))
    return status == 200


async def test_the_api_key_secret_is_stored_wrapped_and_keys_verify_after_restart_and_rewrap(
    make_app, database_url
):
    app = await make_app(secret_key=None)
    client, gate = app.test_client(), gate_of(app)
    pair = await register_and_login(client)
    key = await new_api_key(client, pair)
    async with gate.db() as db:
        digest = (await db.execute(select(ApiKey.digest))).scalar_one()
    row = await server_secret_row(database_url)
    keks = gate.keyring.key_encryption_keys
    assert sealing.wrapped_under(row.value) == keks.current.id
    # What the service digests with, unwrapped: the stored value, read any way, is not it.
    plain = secret.unwrap_value(row, keks)
    assert apikeys.digest(plain.encode(), key) == digest
    candidates = [row.value.encode()]
    for part in row.value.split("."):
        with contextlib.suppress(ValueError):
            candidates.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert all(apikeys.digest(c, key) != digest for c in candidates)
    assert plain.encode() not in row.value.encode()

    # A restart reads it; a rewrap moves it (with the signing keys) and a restart reads that.
    assert await key_works(await make_app(secret_key=None), key)
    new = KeyEncryptionKeys(KeyEncryptionKey.from_text(NEW_KEK), (keks.current,))
    assert await keys.rewrap_keys(gate.db, new) == (2, 2)  # the signing key and the secret
    rewrapped = await server_secret_row(database_url)
    assert sealing.wrapped_under(rewrapped.value) == new.current.id
    assert rewrapped.value != row.value and secret.unwrap_value(rewrapped, new) == plain
    assert await key_works(app, key)  # the running instance is not disturbed
    assert await key_works(await make_app(secret_key=None, key_encryption_key=NEW_KEK), key)
    with pytest.raises(LifespanError, match="which this instance does not have"):
        await make_app(secret_key=None)  # the old KEK alone


async def test_an_api_key_secret_stored_in_plain_text_is_wrapped_at_start_and_by_rewrap(
    make_app, database_url
):
    app = await make_app(secret_key=None)
    client, gate = app.test_client(), gate_of(app)
    pair = await register_and_login(client)
    key = await new_api_key(client, pair)
    keks = gate.keyring.key_encryption_keys
    plain = secret.unwrap_value(await server_secret_row(database_url), keks)
    await set_server_secret(database_url, plain)  # as the version before wrapping stored it

    again = await make_app(secret_key=None)
    row = await server_secret_row(database_url)
    assert sealing.wrapped_under(row.value) == keks.current.id
    assert secret.unwrap_value(row, keks) == plain
    assert await key_works(again, key)

    await set_server_secret(database_url, plain)
    new = KeyEncryptionKeys(KeyEncryptionKey.from_text(NEW_KEK), (keks.current,))
    assert await keys.rewrap_keys(gate.db, new) == (2, 2)
    row = await server_secret_row(database_url)
    assert sealing.wrapped_under(row.value) == new.current.id
    assert await key_works(await make_app(secret_key=None, key_encryption_key=NEW_KEK), key)


async def test_with_a_secret_key_the_api_key_secret_is_derived_and_nothing_stored(
    make_app, database_url
):
    app = await make_app()
    client = app.test_client()
    pair = await register_and_login(client)
    key = await new_api_key(client, pair)
    assert await key_works(app, key)
    engine = build_engine(database_url)
    try:
        async with build_sessionmaker(engine)() as db:
            assert (await db.execute(select(ServerSecret))).scalars().all() == []
    finally:
        await engine.dispose()
