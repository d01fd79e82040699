"""Keys over HTTP: a third-party verifier on the live JWKS, and `tokengate keys rotate`."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx
import jwt
import pytest

from tests.e2e.session_helpers import login, me, register
from tests.support import ServiceProcess, service_env, wait_for


def key_env(workdir, redis_url, **settings):
    env = service_env(workdir, redis_url, **settings)
    del env["TOKENGATE_SECRET_KEY"]
    return env


def cli(args, env, cwd):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "quart_tokengate.service", *args],
        cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def es256_service(tmp_path, private_redis):
    """An ES256 service with its keys in the database, on a redis-server of the test's own."""
    service = ServiceProcess(key_env(tmp_path, private_redis.url, algorithm="ES256"), tmp_path)
    service.start()
    yield service
    service.stop()


def test_pyjwkclient_verifies_access_tokens_from_the_live_jwks_and_rotation_reaches_it(
    es256_service, tmp_path
):
    base = es256_service.base_url
    jwks_url = base + "/.well-known/jwks.json"
    # PyJWT re-fetches on an unknown kid at most once per cooldown (30 s by
    # default); a key signs ACTIVATION_DELAY seconds after it is published.
    client = jwt.PyJWKClient(jwks_url, cache_keys=True, cooldown_duration=1)
    with httpx.Client(base_url=base) as http:
        register(http, "alice")
        register(http, "bob")
        first = login(http, "alice")
        key = client.get_signing_key_from_jwt(first["access_token"])
        claims = jwt.decode(first["access_token"], key, algorithms=["ES256"], audience="tokengate")
        assert claims["sid"] == first["session_id"]
        old_kid = key.key_id

        r = cli(["keys", "rotate"], es256_service.env, tmp_path)
        assert r.returncode == 0, r.stderr
        assert "ES256" in r.stdout
        # Every instance signs with the new key within a few seconds of the
        # rotation (ACTIVATION_DELAY): wait until a login's token has it.
        logins: list[dict[str, Any]] = []

        def signs_with_a_new_key() -> bool:
            logins.append(login(http, "bob"))
            return jwt.get_unverified_header(logins[-1]["access_token"])["kid"] != old_kid

        wait_for(signs_with_a_new_key, timeout=15, interval=0.5, what="a token with the new kid")
        second = logins[-1]
        kids = {k["kid"] for k in http.get("/.well-known/jwks.json").json()["keys"]}
        assert old_kid in kids and len(kids) == 2
        # The cached client meets an unknown kid and fetches the set again.
        key = client.get_signing_key_from_jwt(second["access_token"])
        jwt.decode(second["access_token"], key, algorithms=["ES256"], audience="tokengate")
        # Tokens signed with the older key keep working until they expire.
        assert me(http, first) == 200
    assert "PRIVATE KEY" not in es256_service.log.read_text()


def test_keys_rotate_with_a_configured_secret_says_what_to_do(tmp_path, private_redis):
    env = service_env(tmp_path, private_redis.url)
    r = cli(["keys", "rotate"], env, tmp_path)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "TOKENGATE_SECRET_KEY is set" in r.stderr
