"""Signing keys kept in the database: shared, race-safe, rotated, published, pruned."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json

import jwt
import pytest
from authlib.jose import JsonWebKey, JsonWebToken
from sqlalchemy import select

from quart_tokengate.service import keys
from quart_tokengate.service.db.engine import build_engine, build_sessionmaker
from quart_tokengate.service.db.models import SigningKey as SigningKeyRow
from quart_tokengate.service.sealing import KeyEncryptionKey, KeyEncryptionKeys
from tests.conftest import bearer, me, me_answer, register_and_login
from tests.support import KEK

ASYMMETRIC = ["EdDSA", "ES256", "RS256"]
KEKS = KeyEncryptionKeys(KeyEncryptionKey.from_text(KEK))


async def stored_rows(app):
    async with get_gate_of(app).db() as db:
        return (await db.execute(select(SigningKeyRow))).scalars().all()


def get_gate_of(app):
    return app.extensions["tokengate"]


async def test_without_a_secret_hs256_keys_live_in_the_database_and_every_instance_shares_them(
    make_app,
):
    first = await make_app(secret_key=None)
    second = await make_app(secret_key=None)
    rows = await stored_rows(first)
    assert len(rows) == 1 and rows[0].algorithm == "HS256" and rows[0].public_key is None
    pair = await register_and_login(first.test_client())
    assert jwt.get_unverified_header(pair["access_token"])["kid"] == rows[0].kid
    assert await me(second.test_client(), pair) == 200
    r = await second.test_client().post(
        "/auth/refresh", json={"refresh_token": pair["refresh_token"]}
    )
    assert r.status_code == 200
    jwks = await first.test_client().get("/.well-known/jwks.json")
    assert jwks.status_code == 200 and (await jwks.get_json()) == {"keys": []}
    assert "max-age" in jwks.headers["Cache-Control"]


async def test_a_configured_secret_signs_with_a_kid_derived_from_it_and_stores_nothing(app):
    pair = await register_and_login(app.test_client())
    kid = jwt.get_unverified_header(pair["access_token"])["kid"]
    assert kid.startswith("hs-") and (await stored_rows(app)) == []
    assert kid == get_gate_of(app).keyring.signing.keys.keys[0].kid


async def test_instances_starting_together_on_an_empty_database_create_one_key(database_url):
    engines = [build_engine(database_url) for _ in range(6)]
    try:
        found = await asyncio.gather(
            *(
                keys.ensure_keys(build_sessionmaker(e), "EdDSA", 1_800_000_000, KEKS)
                for e in engines
            )
        )
        async with build_sessionmaker(engines[0])() as db:
            rows = (await db.execute(select(SigningKeyRow))).scalars().all()
    finally:
        for engine in engines:
            await engine.dispose()
    assert len(rows) == 1
    assert {tuple(r.kid for r in result) for result in found} == {(rows[0].kid,)}


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
async def test_asymmetric_tokens_verify_from_the_jwks_alone(make_app, algorithm):
    app = await make_app(secret_key=None, algorithm=algorithm)
    pair = await register_and_login(app.test_client())
    assert await me(app.test_client(), pair) == 200
    header = jwt.get_unverified_header(pair["access_token"])
    assert header["alg"] == algorithm and header["typ"] == "at+jwt"
    r = await app.test_client().get("/.well-known/jwks.json")
    body = await r.get_json()
    assert r.headers["Cache-Control"].startswith("public, max-age=")
    [jwk] = body["keys"]
    assert jwk["kid"] == header["kid"] and jwk["alg"] == algorithm and jwk["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)  # no private part
    # A third party with the JWK Set alone (Authlib, another library than ours).
    key_set = JsonWebKey.import_key_set(body)
    claims = JsonWebToken([algorithm]).decode(pair["access_token"], key_set)
    claims.validate()
    assert claims["sid"] == pair["session_id"] and claims["aud"] == "tokengate"
    row = (await stored_rows(app))[0]
    secret = keys.unwrap_secret(row, get_gate_of(app).keyring.key_encryption_keys)
    assert secret.startswith("-----BEGIN PRIVATE KEY-----")
    assert secret not in json.dumps(body)


async def test_an_hs256_token_keyed_with_the_public_key_is_refused(make_app):
    app = await make_app(secret_key=None, algorithm="EdDSA")
    pair = await register_and_login(app.test_client())
    row = (await stored_rows(app))[0]
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": row.kid}).encode())
    payload = b64(json.dumps(claims).encode())
    jwk = json.dumps(await (await app.test_client().get("/.well-known/jwks.json")).get_json())
    for secret in (row.public_key.encode(), jwk.encode()):
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        forged = f"{header}.{payload}.{b64(mac)}"
        status, body, _ = await me_answer(app.test_client(), bearer(forged))
        assert (status, body["error"]) == (401, "invalid_token")


async def test_rotation_publishes_first_signs_later_and_prunes_after_the_last_token(
    make_app, clock
):
    app = await make_app(secret_key=None, algorithm="EdDSA", clock=clock)
    other = await make_app(secret_key=None, algorithm="EdDSA", clock=clock)
    gate, other_gate = get_gate_of(app), get_gate_of(other)
    before = await register_and_login(app.test_client())
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]

    new = await keys.rotate_keys(gate.db, gate.settings, clock(), KEKS)
    await gate.keyring.load()
    await other_gate.keyring.load()
    kids = [k["kid"] for k in gate.keyring.jwks["keys"]]
    assert sorted(kids) == sorted([old_kid, new.kid])
    # Published, not signing yet: an instance that has not re-read yet still verifies.
    pair = await register_and_login(app.test_client(), "bob")
    assert jwt.get_unverified_header(pair["access_token"])["kid"] == old_kid

    clock.advance(keys.ACTIVATION_DELAY)
    pair = await register_and_login(app.test_client(), "carol")
    assert jwt.get_unverified_header(pair["access_token"])["kid"] == new.kid
    assert await me(other.test_client(), pair) == 200
    assert await me(other.test_client(), before) == 200
    r = await other.test_client().post(
        "/auth/refresh", json={"refresh_token": before["refresh_token"]}
    )
    assert r.status_code == 200
    assert jwt.get_unverified_header((await r.get_json())["access_token"])["kid"] == new.kid

    # The old key stays while a token it signed may be valid, then goes.
    clock.advance(keys.token_lifetime(gate.settings) - 10)
    await gate.keyring.load()
    assert {r.kid for r in await stored_rows(app)} == {old_kid, new.kid}
    clock.advance(20)
    await gate.keyring.load()
    assert {r.kid for r in await stored_rows(app)} == {new.kid}
    assert [k["kid"] for k in gate.keyring.jwks["keys"]] == [new.kid]


async def test_a_key_file_of_an_older_install_becomes_the_first_stored_key(make_app, tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    legacy = "an-older-install-kept-this-key-in-a-file-0123456789"
    (instance / "secret.key").write_text(legacy + "\n")
    app = await make_app(secret_key=None)
    pair = await register_and_login(app.test_client())
    jwt.decode(pair["access_token"], legacy, algorithms=["HS256"], audience="tokengate")
    [row] = await stored_rows(app)
    assert keys.unwrap_secret(row, get_gate_of(app).keyring.key_encryption_keys) == legacy
    assert legacy not in row.secret
