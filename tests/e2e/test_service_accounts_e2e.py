"""Service accounts end to end: ``tokengate clients ...`` and the real service process,
with a third-party OAuth client (Authlib's httpx ``AsyncOAuth2Client``) fetching tokens."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import jwt
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e import test_admin_cli
from tests.e2e.test_admin_cli import Admin
from tests.support import ServiceProcess

# The service on the test database (SQLite, and PostgreSQL when configured), and the CLI.
deployment = test_admin_cli.deployment


def created(out: str) -> dict[str, str]:
    """The ``client_id: ...`` and ``client_secret: ...`` lines of ``clients create``."""
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def fetch(http: httpx.Client, client_id: str, secret: str) -> httpx.Response:
    return http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )


def me(http: httpx.Client, token: str) -> int | str:
    r = http.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    return 200 if r.status_code == 200 else str(r.json()["error"])


def test_clients_commands_against_the_running_service(
    deployment: tuple[ServiceProcess, Admin], tmp_path: Path
) -> None:
    service, admin = deployment
    out = admin.ok("clients", "create", "nightly reports", "--scope", "reports:read")
    ids = created(out)
    cid, secret = ids["client_id"], ids["client_secret"]
    assert cid.startswith("tgc_") and secret.startswith("tgcs_")
    listed = admin.json("clients", "list")
    assert [(c["client_id"], c["name"], c["scopes"]) for c in listed] == [
        (cid, "nightly reports", ["reports:read"])
    ]
    assert secret not in admin.ok("clients", "list")
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        r = fetch(http, cid, secret)
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        assert me(http, token) == 200
        # disable: the live token is refused on its very next request, fetches too.
        assert "disabled" in admin.ok("clients", "disable", cid)
        assert me(http, token) == "token_revoked"
        assert fetch(http, cid, secret).status_code == 401
        admin.ok("clients", "enable", cid)
        token = fetch(http, cid, secret).json()["access_token"]
        assert me(http, token) == 200
        # rotate-secret: the new secret works, the old one and its token no longer.
        new = created(admin.ok("clients", "rotate-secret", cid))["client_secret"]
        assert new != secret
        assert me(http, token) == "token_revoked"
        r = fetch(http, cid, secret)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="tokengate"'
        assert me(http, fetch(http, cid, new).json()["access_token"]) == 200
        # A service account never logs in with a password.
        r = http.post("/auth/login", json={"username": cid, "password": "whatever it is"})
        assert r.status_code == 401
    r = admin("clients", "disable", "tgc_" + "Z" * 22)
    assert r.returncode == 1 and r.stderr.strip() == f"tokengate: no such client: tgc_{'Z' * 22}"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    r = admin("clients", "create", "x", "--jwks-file", str(bad))
    assert r.returncode == 1 and "public keys only" in r.stderr and "Traceback" not in r.stderr
    r = admin("clients", "rotate-secret", cid, "--keep-old", "-5")
    assert r.returncode == 1 and "--keep-old" in r.stderr


async def test_authlib_fetches_tokens_with_a_secret_and_with_private_key_jwt(
    deployment: tuple[ServiceProcess, Admin], tmp_path: Path
) -> None:
    service, admin = deployment
    token_url = service.base_url + "/oauth/token"
    ids = created(admin.ok("clients", "create", "authlib", "--scope", "a", "--scope", "b"))
    for method in ("client_secret_basic", "client_secret_post"):
        async with AsyncOAuth2Client(
            ids["client_id"], ids["client_secret"], token_endpoint_auth_method=method, scope="a"
        ) as oauth:
            token = await oauth.fetch_token(token_url, grant_type="client_credentials")
            assert token["token_type"] == "Bearer" and token["scope"] == "a"
            assert "refresh_token" not in token
            r = await oauth.get(service.base_url + "/auth/me")
            assert r.status_code == 200, r.text

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "one", "use": "sig"}]}))
    out = admin.ok("clients", "create", "signer", "--scope", "a", "--jwks-file", str(jwks))
    cid = created(out)["client_id"]
    assert "client_secret" not in out
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    # Authlib signs assertions valid for an hour unless told otherwise; ours live 5 minutes.
    signer = PrivateKeyJWT(
        token_url, claims={"exp": int(time.time()) + 120}, headers={"kid": "one"}
    )
    async with AsyncOAuth2Client(cid, pem, token_endpoint_auth_method="private_key_jwt") as oauth:
        oauth.register_client_auth_method(signer)
        token = await oauth.fetch_token(token_url, grant_type="client_credentials")
        assert token["scope"] == "a"
        assert (
            jwt.decode(token["access_token"], options={"verify_signature": False})["client_id"]
            == cid
        )
        r = await oauth.get(service.base_url + "/auth/me")
        assert r.status_code == 200, r.text
