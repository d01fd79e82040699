"""DPoP-bound tokens (RFC 9449) in the service: binding at every token endpoint, the guard's
checks, the replay check in the guard's one round trip, nonces, introspection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from quart_tokengate.client._dpop import generate_key, make_proof
from tests.conftest import register, register_and_login
from tests.support import PrivateRedis, commandstats_async

ORIGIN = "http://localhost"
ME = f"{ORIGIN}/auth/me"


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def proof(key: Any, method: str, url: str, **kw: Any) -> str:
    return make_proof(key, method, url, now=kw.pop("now", time.time()), **kw)


def dpop_headers(key: Any, token: str, url: str = ME, method: str = "GET", **kw: Any) -> dict:
    return {
        "Authorization": f"DPoP {token}",
        "DPoP": proof(key, method, url, access_token=token, **kw),
    }


async def bound_login(client: Any, key: Any, username: str = "alice", **kw: Any) -> dict:
    await client.post("/auth/register", json={"username": username, "password": "correct horse"})
    r = await client.post(
        "/auth/login",
        json={"username": username, "password": "correct horse"},
        headers={"DPoP": proof(key, "POST", f"{ORIGIN}/auth/login", **kw)},
    )
    assert r.status_code == 200, await r.get_data()
    body: dict = await r.get_json()
    return body


async def test_a_login_with_a_proof_gets_a_bound_pair_that_works_with_its_key(app):
    client = app.test_client()
    key = generate_key()
    pair = await bound_login(client, key)
    assert pair["token_type"] == "DPoP"
    assert claims_of(pair["access_token"])["cnf"] == {"jkt": key.jkt}
    assert claims_of(pair["refresh_token"])["cnf"] == {"jkt": key.jkt}
    r = await client.get("/auth/me", headers=dpop_headers(key, pair["access_token"]))
    assert r.status_code == 200, await r.get_data()
    assert (await r.get_json())["username"] == "alice"


async def test_a_login_without_a_proof_stays_bearer(app):
    client = app.test_client()
    pair = await register_and_login(client)
    assert pair["token_type"] == "Bearer"
    assert "cnf" not in claims_of(pair["access_token"])


async def test_a_bound_token_sent_as_bearer_is_refused(app):
    client = app.test_client()
    pair = await bound_login(client, generate_key())
    r = await client.get("/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "invalid_token"


async def test_an_unbound_token_sent_as_dpop_is_refused(app):
    client = app.test_client()
    key = generate_key()
    pair = await register_and_login(client)
    r = await client.get("/auth/me", headers=dpop_headers(key, pair["access_token"]))
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "invalid_token"
    assert r.headers["WWW-Authenticate"].startswith("DPoP ")


def _refusals(key: Any, other: Any, token: str, other_token: str) -> dict[str, dict]:
    """Requests to /auth/me that each fail exactly one check of the proof."""
    good = {"Authorization": f"DPoP {token}"}
    return {
        "no proof": good,
        "another method": {**good, "DPoP": proof(key, "POST", ME, access_token=token)},
        "another URL": {
            **good, "DPoP": proof(key, "GET", f"{ORIGIN}/auth/sessions", access_token=token),
        },
        "another host": {
            **good, "DPoP": proof(key, "GET", "http://evil.example/auth/me", access_token=token),
        },
        "another scheme": {
            **good, "DPoP": proof(key, "GET", "https://localhost/auth/me", access_token=token),
        },
        "another token (ath)": {
            **good, "DPoP": proof(key, "GET", ME, access_token=other_token),
        },
        "no ath": {**good, "DPoP": proof(key, "GET", ME)},
        "another key (jkt)": {**good, "DPoP": proof(other, "GET", ME, access_token=token)},
        "iat too old": {
            **good, "DPoP": proof(key, "GET", ME, access_token=token, now=time.time() - 300),
        },
        "iat in the future": {
            **good, "DPoP": proof(key, "GET", ME, access_token=token, now=time.time() + 300),
        },
        "not a JWT": {**good, "DPoP": "not-a-proof"},
        "empty": {**good, "DPoP": ""},
    }  # fmt: skip


async def test_each_check_of_the_proof_refuses_a_proof_failing_only_it(app):
    client = app.test_client()
    key, other = generate_key(), generate_key()
    pair = await bound_login(client, key)
    other_pair = await bound_login(client, other, "bob")
    for name, headers in _refusals(
        key, other, pair["access_token"], other_pair["access_token"]
    ).items():
        r = await client.get("/auth/me", headers=headers)
        assert r.status_code == 401, name
        assert (await r.get_json())["error"] == "invalid_dpop_proof", name
        challenge = r.headers["WWW-Authenticate"]
        assert challenge.startswith("DPoP ") and 'error="invalid_dpop_proof"' in challenge, name
        assert 'algs="ES256 EdDSA"' in challenge, name
    # And the good proof still works afterwards: nothing was changed by the refusals.
    r = await client.get("/auth/me", headers=dpop_headers(key, pair["access_token"]))
    assert r.status_code == 200


async def test_two_dpop_headers_are_refused(app):
    client = app.test_client()
    key = generate_key()
    token = (await bound_login(client, key))["access_token"]
    one = proof(key, "GET", ME, access_token=token)
    two = proof(key, "GET", ME, access_token=token)
    from werkzeug.datastructures import Headers

    headers = Headers([("Authorization", f"DPoP {token}"), ("DPoP", one), ("DPoP", two)])
    r = await client.get("/auth/me", headers=headers)
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "invalid_dpop_proof"
    # RFC 9449 section 7.1: the error of the DPoP scheme, in its own challenge.
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP ") and 'error="invalid_dpop_proof"' in challenge
    assert 'algs="ES256 EdDSA"' in challenge


async def test_the_dpop_scheme_without_a_token_is_challenged_in_that_scheme(app):
    r = await app.test_client().get("/auth/me", headers={"Authorization": "DPoP "})
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "invalid_token"
    assert r.headers["WWW-Authenticate"].startswith("DPoP ")


async def test_a_replayed_proof_is_refused_here_and_on_another_instance(make_app):
    first, second = await make_app(), await make_app()
    a, b = first.test_client(), second.test_client()
    key = generate_key()
    token = (await bound_login(a, key))["access_token"]
    headers = dpop_headers(key, token)
    assert (await a.get("/auth/me", headers=headers)).status_code == 200
    for client in (a, b):
        r = await client.get("/auth/me", headers=headers)
        assert r.status_code == 401
        assert (await r.get_json())["error"] == "invalid_dpop_proof"
    # A fresh proof by the same key is fine on either.
    assert (await b.get("/auth/me", headers=dpop_headers(key, token))).status_code == 200


async def test_concurrent_replays_of_one_proof_let_exactly_one_through(app):
    client = app.test_client()
    key = generate_key()
    token = (await bound_login(client, key))["access_token"]
    headers = dpop_headers(key, token)
    answers = await asyncio.gather(*(client.get("/auth/me", headers=headers) for _ in range(20)))
    assert sorted(r.status_code for r in answers) == [200] + [401] * 19


async def test_a_bound_session_refreshes_only_with_its_key(app):
    client = app.test_client()
    key, other = generate_key(), generate_key()
    pair = await bound_login(client, key)
    url = f"{ORIGIN}/auth/refresh"
    body = {"refresh_token": pair["refresh_token"]}
    for headers, error in (
        ({}, "invalid_dpop_proof"),
        ({"DPoP": proof(other, "POST", url)}, "invalid_dpop_proof"),
        ({"DPoP": proof(key, "POST", f"{ORIGIN}/auth/login")}, "invalid_dpop_proof"),
    ):
        r = await client.post("/auth/refresh", json=body, headers=headers)
        assert r.status_code == 400, await r.get_data()
        assert (await r.get_json())["error"] == error
    # The refusals cost the session nothing: the right key refreshes, and stays bound.
    r = await client.post("/auth/refresh", json=body, headers={"DPoP": proof(key, "POST", url)})
    assert r.status_code == 200, await r.get_data()
    new = await r.get_json()
    assert new["token_type"] == "DPoP"
    assert claims_of(new["access_token"])["cnf"] == {"jkt": key.jkt}
    assert claims_of(new["refresh_token"])["cnf"] == {"jkt": key.jkt}
    r = await client.get("/auth/me", headers=dpop_headers(key, new["access_token"]))
    assert r.status_code == 200


async def test_a_token_request_proof_is_used_once(app):
    client = app.test_client()
    key = generate_key()
    pair = await bound_login(client, key)
    headers = {"DPoP": proof(key, "POST", f"{ORIGIN}/auth/refresh")}
    body = {"refresh_token": pair["refresh_token"]}
    assert (await client.post("/auth/refresh", json=body, headers=headers)).status_code == 200
    r = await client.post("/auth/refresh", json=body, headers=headers)
    assert r.status_code == 400
    assert (await r.get_json())["error"] == "invalid_dpop_proof"


async def test_an_unbound_session_refreshed_with_a_proof_stays_bearer(app):
    client = app.test_client()
    pair = await register_and_login(client)
    r = await client.post(
        "/auth/refresh", json={"refresh_token": pair["refresh_token"]},
        headers={"DPoP": proof(generate_key(), "POST", f"{ORIGIN}/auth/refresh")},
    )  # fmt: skip
    assert r.status_code == 200
    assert (await r.get_json())["token_type"] == "Bearer"


async def test_off_ignores_proofs_and_refuses_the_dpop_scheme(make_app):
    app = await make_app(dpop="off")
    client = app.test_client()
    key = generate_key()
    pair = await bound_login(client, key)
    assert pair["token_type"] == "Bearer"
    r = await client.get("/auth/me", headers=dpop_headers(key, pair["access_token"]))
    assert r.status_code == 401


async def test_required_refuses_token_requests_without_a_proof_and_bearer_tokens(make_app):
    app = await make_app(dpop="required")
    client = app.test_client()
    await register(client)
    r = await client.post("/auth/login", json={"username": "alice", "password": "correct horse"})
    assert r.status_code == 400
    assert (await r.get_json())["error"] == "invalid_dpop_proof"
    key = generate_key()
    pair = await bound_login(client, key)
    r = await client.get("/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("DPoP ")
    r = await client.get("/auth/me")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("DPoP ")
    r = await client.get("/auth/me", headers=dpop_headers(key, pair["access_token"]))
    assert r.status_code == 200


async def test_nonces_are_asked_for_and_valid_on_every_instance(make_app):
    first = await make_app(dpop_nonce=True)
    second = await make_app(dpop_nonce=True)
    a, b = first.test_client(), second.test_client()
    key = generate_key()
    await register(a)
    login = {"username": "alice", "password": "correct horse"}
    url = f"{ORIGIN}/auth/login"
    r = await a.post("/auth/login", json=login, headers={"DPoP": proof(key, "POST", url)})
    assert r.status_code == 400
    assert (await r.get_json())["error"] == "use_dpop_nonce"
    nonce = r.headers["DPoP-Nonce"]
    # The nonce one instance handed out is good on the other.
    r = await b.post(
        "/auth/login", json=login, headers={"DPoP": proof(key, "POST", url, nonce=nonce)}
    )
    assert r.status_code == 200, await r.get_data()
    token = (await r.get_json())["access_token"]
    r = await b.get("/auth/me", headers=dpop_headers(key, token))
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "use_dpop_nonce"
    assert 'error="use_dpop_nonce"' in r.headers["WWW-Authenticate"]
    assert r.headers["DPoP-Nonce"] == nonce
    r = await a.get("/auth/me", headers=dpop_headers(key, token, nonce=nonce))
    assert r.status_code == 200
    r = await a.get("/auth/me", headers=dpop_headers(key, token, nonce="A" * 24))
    assert (await r.get_json())["error"] == "use_dpop_nonce"


async def test_client_credentials_with_a_proof_get_a_bound_token(make_app):
    app = await make_app()
    gate = app.extensions["tokengate"]
    from quart_tokengate.service.oauth.accounts import service_accounts

    client_id, secret = await service_accounts(gate).registry.create("ci-bot", ["read"])
    assert secret is not None
    client = app.test_client()
    key = generate_key()
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    r = await client.post(
        "/oauth/token", form=form, headers={"DPoP": proof(key, "POST", f"{ORIGIN}/oauth/token")}
    )
    assert r.status_code == 200, await r.get_data()
    body = await r.get_json()
    assert body["token_type"] == "DPoP"
    token = body["access_token"]
    assert claims_of(token)["cnf"] == {"jkt": key.jkt}
    assert (await client.get("/auth/me", headers=dpop_headers(key, token))).status_code == 200
    r = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


async def test_introspection_returns_the_binding(make_app):
    app = await make_app(introspection_clients=(("rs", "rs-secret"),))
    client = app.test_client()
    key = generate_key()
    token = (await bound_login(client, key))["access_token"]
    import base64

    basic = base64.b64encode(b"rs:rs-secret").decode()
    r = await client.post(
        "/auth/introspect", form={"token": token}, headers={"Authorization": f"Basic {basic}"}
    )
    body = await r.get_json()
    assert body["active"] is True
    assert body["token_type"] == "DPoP"
    assert body["cnf"] == {"jkt": key.jkt}


class TestHotPath:
    @pytest.fixture
    def redis_url(self, private_redis: PrivateRedis) -> str:
        return private_redis.url

    async def test_a_dpop_request_costs_one_script_call(self, quiet_app, redis_client):
        client = quiet_app.test_client()
        key = generate_key()
        token = (await bound_login(client, key))["access_token"]
        for _ in range(5):  # load the script, warm the pool
            r = await client.get("/auth/me", headers=dpop_headers(key, token))
            assert r.status_code == 200
        await redis_client.config_resetstat()
        for _ in range(20):
            r = await client.get("/auth/me", headers=dpop_headers(key, token))
            assert r.status_code == 200
        stats = await commandstats_async(redis_client)
        # One EVALSHA per request; inside it the session's EXISTS, HMGET, HSET and the
        # proof's SET NX.
        assert stats == {"evalsha": 20, "exists": 20, "hmget": 20, "set": 20, "hset": 20}

    async def test_a_forged_proof_costs_no_redis_command(self, quiet_app, redis_client):
        client = quiet_app.test_client()
        key = generate_key()
        token = (await bound_login(client, key))["access_token"]
        await redis_client.config_resetstat()
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof(generate_key(), "GET", ME)}
        assert (await client.get("/auth/me", headers=headers)).status_code == 401
        assert await commandstats_async(redis_client) == {}

    async def test_redis_down_is_503_and_no_proof_passes_unchecked(self, make_app, private_redis):
        app = await make_app(redis_url=private_redis.url)
        client = app.test_client()
        key = generate_key()
        token = (await bound_login(client, key))["access_token"]
        headers = dpop_headers(key, token)
        private_redis.stop()
        try:
            started = time.monotonic()
            r = await client.get("/auth/me", headers=headers)
            assert r.status_code == 503
            assert time.monotonic() - started < 1.5
        finally:
            private_redis.start()
        # The proof was never noted, so the same request succeeds once Redis is back
        # (the session is rebuilt from SQL).
        r = await client.get("/auth/me", headers=headers)
        assert r.status_code == 200, await r.get_data()
        r = await client.get("/auth/me", headers=headers)
        assert r.status_code == 401  # and now it is a replay


async def test_proofs_of_another_implementation_bind_and_use_tokens(app):
    """requests_oauth2client's DPoPKey (jwskate) logs in, calls, and refreshes."""
    from requests_oauth2client import DPoPKey

    from quart_tokengate.client._dpop import ath

    client = app.test_client()
    theirs = DPoPKey.generate(alg="ES256")
    await register(client)
    login = {"username": "alice", "password": "correct horse"}
    r = await client.post(
        "/auth/login", json=login,
        headers={"DPoP": str(theirs.proof("POST", f"{ORIGIN}/auth/login"))},
    )  # fmt: skip
    pair = await r.get_json()
    assert r.status_code == 200, pair
    assert claims_of(pair["access_token"])["cnf"] == {"jkt": theirs.dpop_jkt}
    token = pair["access_token"]
    headers = {
        "Authorization": f"DPoP {token}",
        "DPoP": str(theirs.proof("GET", ME, ath=ath(token))),
    }
    assert (await client.get("/auth/me", headers=headers)).status_code == 200
    r = await client.post(
        "/auth/refresh", json={"refresh_token": pair["refresh_token"]},
        headers={"DPoP": str(theirs.proof("POST", f"{ORIGIN}/auth/refresh"))},
    )  # fmt: skip
    assert r.status_code == 200
    assert (await r.get_json())["token_type"] == "DPoP"


async def test_htu_is_the_url_the_client_saw_through_trusted_proxies_only(make_app):
    app = await make_app(trusted_proxies=("10.0.0.0/8",))
    client = app.test_client()
    key = generate_key()
    token = (await bound_login(client, key))["access_token"]
    public = "https://api.example.com/auth/me"
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}

    async def call(url: str, peer: str) -> int:
        headers = {**dpop_headers(key, token, url=url), **forwarded}
        r = await client.get("/auth/me", headers=headers, scope_base={"client": (peer, 4000)})
        return r.status_code

    # Through a trusted proxy, the proof names the public URL...
    assert await call(public, "10.1.2.3") == 200
    assert await call(ME, "10.1.2.3") == 401
    # ...and from anyone else the forwarded headers prove nothing.
    assert await call(public, "192.0.2.7") == 401
    assert await call(ME, "192.0.2.7") == 200


async def test_the_account_pages_refuse_a_bound_token_without_its_key(app):
    """A stolen bound token set as the page's cookie must not reach the page's routes
    (where it could make an unbound API key or approve an unbound device)."""
    client = app.test_client()
    token = (await bound_login(client, generate_key()))["access_token"]
    cookies = {"Cookie": f"account_access={token}; account_csrf=x", "X-CSRF-Token": "x"}
    r = await client.get("/account/me", headers=cookies)
    assert r.status_code == 401
    r = await client.post("/account/api-keys", json={"name": "backdoor"}, headers=cookies)
    assert r.status_code == 401


async def test_required_refuses_an_expired_bearer_token_even_with_implicit_refresh(make_app, clock):
    allowed = await make_app(clock=clock)
    token = (await register_and_login(allowed.test_client()))["access_token"]
    app = await make_app(clock=clock, dpop="required", implicit_refresh=True)
    client = app.test_client()
    clock.advance(app.extensions["tokengate"].settings.access_ttl + 1)
    for scheme in ("Bearer", "DPoP"):
        r = await client.get("/auth/me", headers={"Authorization": f"{scheme} {token}"})
        assert r.status_code == 401, scheme
        assert "X-Access-Token" not in r.headers, scheme


async def test_lone_surrogates_in_a_proof_are_a_4xx_never_a_500(app):
    client = app.test_client()
    key = generate_key()
    token = (await bound_login(client, key))["access_token"]
    bad_jti = make_proof(key, "POST", f"{ORIGIN}/auth/login", now=time.time(), jti=lambda: "\ud800")
    login = {"username": "alice", "password": "correct horse"}
    r = await client.post("/auth/login", json=login, headers={"DPoP": bad_jti})
    assert r.status_code == 400
    bad_ath = proof(key, "GET", ME, access_token=token)
    header = bad_ath.split(".")[0]
    import base64
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    body = {"jti": "a", "htm": "GET", "htu": ME, "iat": int(time.time()), "ath": "\ud800"}
    raw = json.dumps(body).encode()  # ensure_ascii: the surrogate goes as \\ud800
    signing_input = f"{header}.{b64(raw)}"
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    der = key.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r_, s_ = decode_dss_signature(der)
    forged = f"{signing_input}.{b64(r_.to_bytes(32, 'big') + s_.to_bytes(32, 'big'))}"
    r = await client.get("/auth/me", headers={"Authorization": f"DPoP {token}", "DPoP": forged})
    assert r.status_code == 401
    assert (await r.get_json())["error"] == "invalid_dpop_proof"


async def test_revoking_a_bound_token_needs_its_key(app):
    client = app.test_client()
    key = generate_key()
    pair = await bound_login(client, key)
    url = f"{ORIGIN}/auth/revoke"
    form = {"token": pair["refresh_token"]}
    assert (await client.post("/auth/revoke", form=form)).status_code == 200
    r = await client.get("/auth/me", headers=dpop_headers(key, pair["access_token"]))
    assert r.status_code == 200  # not ended by the token alone
    other = {"DPoP": proof(generate_key(), "POST", url)}
    assert (await client.post("/auth/revoke", form=form, headers=other)).status_code == 200
    r = await client.get("/auth/me", headers=dpop_headers(key, pair["access_token"]))
    assert r.status_code == 200  # nor with another key's proof
    mine = {"DPoP": proof(key, "POST", url)}
    assert (await client.post("/auth/revoke", form=form, headers=mine)).status_code == 200
    r = await client.get("/auth/me", headers=dpop_headers(key, pair["access_token"]))
    assert (await r.get_json())["error"] == "token_revoked"
