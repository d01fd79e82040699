"""Service accounts: the client-credentials grant at POST /oauth/token (RFC 6749 section 4.4)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import func, select

from quart_tokengate.service.db.models import AuthSession
from quart_tokengate.service.oauth.accounts import service_accounts
from quart_tokengate.service.oauth.assertion import ASSERTION_TYPE
from tests.conftest import login_attempt
from tests.support import assert_unavailable, bearer, claims, free_port, timed_async

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TOKEN_URL = "http://localhost/oauth/token"


def registry(app: Any) -> Any:
    return service_accounts(app.extensions["tokengate"]).registry


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}", **FORM}


async def fetch(client: Any, body: dict[str, str] | str, headers: dict[str, str] | None = None):
    data = body if isinstance(body, str) else urlencode(body)
    return await client.post("/oauth/token", data=data, headers=headers or FORM)


async def fetch_basic(client: Any, cid: str, secret: str, **extra: str):
    return await fetch(client, {"grant_type": "client_credentials", **extra}, basic(cid, secret))


async def fetch_post(client: Any, cid: str, secret: str, **extra: str):
    body = {"grant_type": "client_credentials", "client_id": cid, "client_secret": secret, **extra}
    return await fetch(client, body)


async def error_of(r: Any) -> str:
    body = await r.get_json()
    assert set(body) == {"error", "error_description"}, body
    assert r.headers["Cache-Control"] == "no-store"
    return str(body["error"])


async def live_sessions(app: Any, user_id: int) -> int:
    async with app.extensions["tokengate"].db() as db:
        query = select(func.count()).where(
            AuthSession.user_id == user_id, AuthSession.ended_at.is_(None)
        )
        return int((await db.execute(query)).scalar_one())


# -- secrets ------------------------------------------------------------------
async def test_basic_and_post_fetch_an_access_token_for_the_service_account(app):
    cid, secret = await registry(app).create("reports", ["reports:read", "reports:write"])
    assert cid.startswith("tgc_") and secret is not None and secret.startswith("tgcs_")
    client = app.test_client()
    for r in (await fetch_basic(client, cid, secret), await fetch_post(client, cid, secret)):
        assert r.status_code == 200, await r.get_data()
        assert r.headers["Cache-Control"] == "no-store"
        body = await r.get_json()
        assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
        assert body["token_type"] == "Bearer" and body["expires_in"] == 300
        assert body["scope"] == "reports:read reports:write"
        header = jwt.get_unverified_header(body["access_token"])
        assert header["typ"] == "at+jwt"
        c = claims(body["access_token"])
        found = await registry(app).find(cid)
        assert c["sub"] == str(found.user_id) and c["client_id"] == cid
        assert c["scope"] == "reports:read reports:write"
        me = await client.get("/auth/me", headers=bearer(body["access_token"]))
        assert me.status_code == 200, await me.get_data()
        assert (await me.get_json())["id"] == found.user_id


async def test_scopes_are_those_asked_for_and_granted(app):
    cid, secret = await registry(app).create("svc", ["a", "b", "c"])
    client = app.test_client()
    r = await fetch_basic(client, cid, secret, scope="b a")
    assert (await r.get_json())["scope"] == "b a"
    assert claims((await r.get_json())["access_token"])["scope"] == "b a"
    r = await fetch_basic(client, cid, secret, scope="a d")
    assert r.status_code == 400 and await error_of(r) == "invalid_scope"
    r = await fetch_basic(client, cid, secret, scope="a  b")
    assert r.status_code == 400 and await error_of(r) == "invalid_scope"
    cid2, secret2 = await registry(app).create("bare", [])
    r = await fetch_basic(client, cid2, secret2)
    body = await r.get_json()
    assert body["scope"] == "" and "scope" not in claims(body["access_token"])
    r = await fetch_basic(client, cid2, secret2, scope="a")
    assert await error_of(r) == "invalid_scope"


async def test_fetches_reuse_one_session_per_secret(app):
    cid, secret = await registry(app).create("busy", [])
    client = app.test_client()
    sids = set()
    for _ in range(5):
        r = await fetch_post(client, cid, secret)
        sids.add(claims((await r.get_json())["access_token"])["sid"])
    assert len(sids) == 1
    found = await registry(app).find(cid)
    assert await live_sessions(app, found.user_id) == 1


@pytest.mark.parametrize(
    ("how", "status", "code"),
    [
        ("wrong secret, basic", 401, "invalid_client"),
        ("wrong secret, post", 401, "invalid_client"),
        ("unknown client, basic", 401, "invalid_client"),
        ("unknown client, post", 401, "invalid_client"),
        ("no authentication", 401, "invalid_client"),
        ("both ways", 400, "invalid_request"),
        ("no grant_type", 400, "invalid_request"),
        ("unknown grant_type", 400, "unsupported_grant_type"),
        ("password grant", 400, "unsupported_grant_type"),
        ("grant_type twice", 400, "invalid_request"),
        ("client_secret twice", 400, "invalid_request"),
        ("JSON body", 400, "invalid_request"),
        ("Basic not base64", 400, "invalid_request"),
        ("Basic without colon", 400, "invalid_request"),
        ("post without client_id", 400, "invalid_request"),
        ("client_id differs from Basic", 400, "invalid_request"),
        ("not UTF-8", 400, "invalid_request"),
        ("huge secret", 401, "invalid_client"),
    ],
)
async def test_every_error_is_rfc_6749_shaped_and_changes_nothing(app, how, status, code):
    cid, secret = await registry(app).create("svc", ["a"])
    client = app.test_client()
    grant = "grant_type=client_credentials"
    cases: dict[str, Any] = {
        "wrong secret, basic": lambda: fetch_basic(client, cid, secret + "x"),
        "wrong secret, post": lambda: fetch_post(client, cid, "tgcs_" + "A" * 43),
        "unknown client, basic": lambda: fetch_basic(client, "tgc_" + "B" * 22, secret),
        "unknown client, post": lambda: fetch_post(client, "nope", secret),
        "no authentication": lambda: fetch(client, grant),
        "both ways": lambda: fetch(
            client, f"{grant}&client_id={cid}&client_secret={secret}", basic(cid, secret)
        ),
        "no grant_type": lambda: fetch(client, "scope=a", basic(cid, secret)),
        "unknown grant_type": lambda: fetch(client, "grant_type=magic", basic(cid, secret)),
        "password grant": lambda: fetch(
            client, "grant_type=password&username=a&password=b", basic(cid, secret)
        ),
        "grant_type twice": lambda: fetch(client, f"{grant}&{grant}", basic(cid, secret)),
        "client_secret twice": lambda: fetch(
            client, f"{grant}&client_id={cid}&client_secret={secret}&client_secret={secret}"
        ),
        "JSON body": lambda: client.post(
            "/oauth/token",
            json={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret},
        ),
        "Basic not base64": lambda: fetch(client, grant, {"Authorization": "Basic %%%", **FORM}),
        "Basic without colon": lambda: fetch(
            client, grant, {"Authorization": "Basic " + base64.b64encode(b"x").decode(), **FORM}
        ),
        "post without client_id": lambda: fetch(client, f"{grant}&client_secret={secret}"),
        "client_id differs from Basic": lambda: fetch(
            client, f"{grant}&client_id=tgc_other", basic(cid, secret)
        ),
        "not UTF-8": lambda: client.post("/oauth/token", data=b"grant_type=\xff\xfe", headers=FORM),
        "huge secret": lambda: fetch_post(client, cid, secret + "x" * 600),
    }
    r = await cases[how]()
    assert r.status_code == status, await r.get_data()
    assert await error_of(r) == code
    if status == 401:  # RFC 6749 section 5.2, and HTTP: a 401 says how to authenticate
        assert r.headers["WWW-Authenticate"] == 'Basic realm="tokengate"'
    else:
        assert "WWW-Authenticate" not in r.headers
    # Nothing changed: no session was opened, and the right secret still works.
    assert await live_sessions(app, (await registry(app).find(cid)).user_id) == 0
    assert (await fetch_basic(client, cid, secret)).status_code == 200


async def test_a_service_account_cannot_log_in_with_a_password(app):
    cid, _ = await registry(app).create("svc", [])
    gate = app.extensions["tokengate"]
    user = await registry(app).find(cid)
    await gate.accounts.set_password(user.user_id, "a fine password")
    r = await login_attempt(app.test_client(), cid, "a fine password")
    assert r.status_code == 401 and (await r.get_json())["error"] == "invalid_credentials"


# -- disable and rotate: the next request is refused, on every instance ---------
async def test_disable_refuses_live_tokens_on_the_next_request_of_another_instance(make_app):
    one, two = await make_app(), await make_app()
    cid, secret = await registry(one).create("svc", [])
    token = (await (await fetch_basic(one.test_client(), cid, secret)).get_json())["access_token"]
    assert (await two.test_client().get("/auth/me", headers=bearer(token))).status_code == 200
    await registry(one).set_disabled(cid, True)
    r = await two.test_client().get("/auth/me", headers=bearer(token))
    assert r.status_code == 401 and (await r.get_json())["error"] == "token_revoked"
    r = await fetch_basic(two.test_client(), cid, secret)
    assert r.status_code == 401 and await error_of(r) == "invalid_client"
    await registry(two).set_disabled(cid, False)
    r = await fetch_basic(one.test_client(), cid, secret)
    assert r.status_code == 200
    assert claims((await r.get_json())["access_token"])["sid"] != claims(token)["sid"]


async def test_rotate_secret_without_keep_old_retires_the_old_secret_and_tokens_at_once(make_app):
    one, two = await make_app(), await make_app()
    cid, old = await registry(one).create("svc", [])
    token = (await (await fetch_basic(one.test_client(), cid, old)).get_json())["access_token"]
    new = await registry(one).rotate_secret(cid)
    r = await two.test_client().get("/auth/me", headers=bearer(token))
    assert r.status_code == 401 and (await r.get_json())["error"] == "token_revoked"
    assert (await fetch_basic(two.test_client(), cid, old)).status_code == 401
    r = await fetch_post(two.test_client(), cid, new)
    assert r.status_code == 200
    fresh = (await r.get_json())["access_token"]
    assert (await one.test_client().get("/auth/me", headers=bearer(fresh))).status_code == 200


async def test_keep_old_lets_the_old_secret_work_until_then_and_its_tokens_end_with_it(
    make_app, clock
):
    one, two = await make_app(clock=clock), await make_app(clock=clock)
    cid, old = await registry(one).create("svc", [])
    await fetch_basic(one.test_client(), cid, old)
    new = await registry(one).rotate_secret(cid, keep_old=120)
    # During keep-old both secrets fetch; a token of the old one lives until the retire time.
    r = await fetch_basic(two.test_client(), cid, old)
    assert r.status_code == 200
    body = await r.get_json()
    assert body["expires_in"] == 120
    old_token = body["access_token"]
    new_token = (await (await fetch_basic(one.test_client(), cid, new)).get_json())["access_token"]
    clock.advance(100)
    for token in (old_token, new_token):
        assert (await one.test_client().get("/auth/me", headers=bearer(token))).status_code == 200
    assert (await fetch_basic(two.test_client(), cid, old)).status_code == 200
    clock.advance(20)
    assert (await fetch_basic(two.test_client(), cid, old)).status_code == 401
    # Its session is over by its age on the next request: whatever the token's exp.
    r = await two.test_client().get("/auth/me", headers=bearer(old_token))
    assert r.status_code == 401
    assert (await r.get_json())["error"] in ("token_expired", "session_expired")
    sid = claims(old_token)["sid"]
    uid = claims(old_token)["sub"]
    store = two.extensions["tokengate"].manager.store
    ended = await store.peek(uid, sid, now=clock())
    assert type(ended).__name__ == "Ended"
    r = await fetch_basic(one.test_client(), cid, new)
    assert r.status_code == 200


async def test_an_idle_client_session_is_replaced_by_the_next_fetch(make_app, clock):
    app = await make_app(clock=clock, idle_timeout=60, access_ttl=300)
    cid, secret = await registry(app).create("svc", [])
    client = app.test_client()
    token = (await (await fetch_basic(client, cid, secret)).get_json())["access_token"]
    clock.advance(61)
    r = await client.get("/auth/me", headers=bearer(token))
    assert (await r.get_json())["error"] == "session_expired"
    r = await fetch_basic(client, cid, secret)
    again = (await r.get_json())["access_token"]
    assert claims(again)["sid"] != claims(token)["sid"]
    assert (await client.get("/auth/me", headers=bearer(again))).status_code == 200


async def test_a_session_redis_lost_is_rebuilt_and_reused(app, redis_client):
    cid, secret = await registry(app).create("svc", [])
    client = app.test_client()
    token = (await (await fetch_basic(client, cid, secret)).get_json())["access_token"]
    await redis_client.flushdb()
    again = (await (await fetch_basic(client, cid, secret)).get_json())["access_token"]
    assert claims(again)["sid"] == claims(token)["sid"]
    assert (await client.get("/auth/me", headers=bearer(token))).status_code == 200


async def test_redis_down_answers_503_fast_and_the_same_fetch_works_after(make_app, private_redis):
    app = await make_app(redis_url=private_redis.url)
    cid, secret = await registry(app).create("svc", [])
    client = app.test_client()
    private_redis.stop()
    r, elapsed = await timed_async(lambda: fetch_basic(client, cid, secret))
    assert_unavailable(r, elapsed, await r.get_json())
    assert r.headers["Cache-Control"] == "no-store"
    private_redis.start()
    r = await fetch_basic(client, cid, secret)
    assert r.status_code == 200
    me = await client.get("/auth/me", headers=bearer((await r.get_json())["access_token"]))
    assert me.status_code == 200


# -- private_key_jwt (RFC 7523) -------------------------------------------------
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_of(*keys: Any) -> str:
    found = []
    for i, key in enumerate(keys):
        jwk = json.loads(
            jwt.algorithms.get_default_algorithms()[
                "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
            ].to_jwk(key.public_key())
        )
        jwk["kid"] = f"k{i}"
        found.append(jwk)
    return json.dumps({"keys": found})


def assertion(key: Any, cid: str, now: float, alg: str = "RS256", **over: Any) -> str:
    body = {
        "iss": cid,
        "sub": cid,
        "aud": TOKEN_URL,
        "exp": int(now) + 60,
        "jti": jwt.utils.base64url_encode(__import__("os").urandom(12)).decode(),
    }
    body.update(over)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg)


def by_assertion(token: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": token,
        **extra,
    }


async def test_private_key_jwt_good_and_every_bad_assertion(make_app, clock):
    one, two = await make_app(clock=clock), await make_app(clock=clock)
    key, other = rsa_key(), rsa_key()
    cid, secret = await registry(one).create("signer", ["x"], jwks_of(key))
    assert secret is None
    now = clock()
    good = assertion(key, cid, now)
    r = await fetch(one.test_client(), by_assertion(good, scope="x"))
    assert r.status_code == 200, await r.get_data()
    token = (await r.get_json())["access_token"]
    assert claims(token)["client_id"] == cid
    # The same assertion again, on another instance: a replay.
    r = await fetch(two.test_client(), by_assertion(good))
    assert r.status_code == 401 and await error_of(r) == "invalid_client"
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = (
        base64.urlsafe_b64encode(
            json.dumps(
                {"iss": cid, "sub": cid, "aud": TOKEN_URL, "exp": int(now) + 60, "jti": "none-1"}
            ).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    hs = jwt.api_jws.PyJWS()
    hs._algorithms["HS256"].prepare_key = lambda k: k  # sign with the public key's bytes
    bad = {
        "wrong key": assertion(other, cid, now),
        "aud wrong": assertion(key, cid, now, aud="https://elsewhere.example/token"),
        "exp too far": assertion(key, cid, now, exp=int(now) + 301),
        "expired": assertion(key, cid, now, exp=int(now) - 1),
        "no jti": assertion(key, cid, now, jti=None),
        "sub differs": assertion(key, cid, now, sub="tgc_" + "C" * 22),
        "alg none": f"{header}.{payload}.",
        "HS256 with the public key": hs.encode(
            json.dumps(
                {"iss": cid, "sub": cid, "aud": TOKEN_URL, "exp": int(now) + 60, "jti": "hs-1"}
            ).encode(),
            public_pem,
            algorithm="HS256",
        ),
        "not a JWT": "abc.def",
    }
    for name, forged in bad.items():
        r = await fetch(two.test_client(), by_assertion(forged))
        assert r.status_code == 401, (name, await r.get_data())
        assert await error_of(r) == "invalid_client", name
    # The issuer is an accepted audience too; the exp limit is five minutes.
    r = await fetch(
        one.test_client(),
        by_assertion(assertion(key, cid, now, aud="tokengate", exp=int(now) + 300)),
    )
    assert r.status_code == 200
    # A secret is no way in for a key client; two ways at once is invalid_request.
    r = await fetch_post(one.test_client(), cid, "tgcs_" + "A" * 43)
    assert await error_of(r) == "invalid_client"
    r = await fetch(one.test_client(), by_assertion(assertion(key, cid, now), client_secret="s"))
    assert r.status_code == 400 and await error_of(r) == "invalid_request"
    r = await fetch(
        one.test_client(),
        by_assertion(assertion(key, cid, now)) | {"client_assertion_type": "urn:other"},
    )
    assert r.status_code == 400 and await error_of(r) == "invalid_request"


async def test_a_jwks_with_a_private_or_shared_key_is_refused(app):
    from quart_tokengate.service.oauth.clients import ClientError

    key = ec.generate_private_key(ec.SECP256R1())
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    for jwks in (
        json.dumps({"keys": [private]}),
        json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
        json.dumps({"keys": []}),
        "not json",
        json.dumps({"keys": [{**json.loads(jwks_of(rsa_key()))["keys"][0], "alg": "HS256"}]}),
    ):
        with pytest.raises(ClientError):
            await registry(app).create("bad", [], jwks)
    # An EC P-256 key signs with ES256 only.
    cid, _ = await registry(app).create("ec", [], jwks_of(key))
    now = app.extensions["tokengate"].clock()
    r = await fetch(app.test_client(), by_assertion(assertion(key, cid, now, alg="ES256")))
    assert r.status_code == 200, await r.get_data()


async def test_concurrent_first_fetches_open_one_session(app):
    cid, secret = await registry(app).create("burst", [])
    client = app.test_client()
    answers = await asyncio.gather(*(fetch_basic(client, cid, secret) for _ in range(20)))
    sids = {claims((await r.get_json())["access_token"])["sid"] for r in answers}
    assert len(sids) == 1
    assert await live_sessions(app, (await registry(app).find(cid)).user_id) == 1


async def test_an_assertion_refused_for_an_outage_is_accepted_afterwards(make_app, private_redis):
    app = await make_app(redis_url=private_redis.url)
    key = rsa_key()
    cid, _ = await registry(app).create("signer", [], jwks_of(key))
    client = app.test_client()
    body = by_assertion(assertion(key, cid, app.extensions["tokengate"].clock()))
    private_redis.stop()
    r, elapsed = await timed_async(lambda: fetch(client, body))
    assert_unavailable(r, elapsed, await r.get_json())
    private_redis.start()
    r = await fetch(client, body)
    assert r.status_code == 200, await r.get_data()
    assert (await fetch(client, body)).status_code == 401  # and once only


async def test_database_down_answers_503_fast(make_app, redis_client):
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test"
    app = await make_app(database_url=dead)
    r, elapsed = await timed_async(
        lambda: fetch_basic(app.test_client(), "tgc_" + "A" * 22, "tgcs_x")
    )
    assert_unavailable(r, elapsed, await r.get_json())


async def test_security_events_name_the_client_and_never_a_secret(app, caplog):
    caplog.set_level(logging.INFO, logger="tokengate")
    cid, secret = await registry(app).create("svc", ["a"])
    await fetch_basic(app.test_client(), cid, secret + "x")
    await fetch_post(app.test_client(), "not\nan id", "x")
    new = await registry(app).rotate_secret(cid, keep_old=10)
    await registry(app).set_disabled(cid, True)
    events = [
        r.fields for r in caplog.records if r.name == "tokengate.security" and
        r.fields["event"].startswith("client_")
    ]  # fmt: skip
    assert [(e["event"], e["client_id"]) for e in events] == [
        ("client_created", cid),
        ("client_auth_failed", cid),
        ("client_auth_failed", ""),
        ("client_secret_rotated", cid),
        ("client_disabled", cid),
    ]
    text = "\n".join(str(r.__dict__) for r in caplog.records)
    assert secret not in text and new not in text


@pytest.mark.parametrize("change", ["disable", "rotate"])
async def test_a_session_opened_after_a_disable_or_rotation_read_the_sessions_is_ended(app, change):
    """A fetch that read the client just before the change, and opens its session just after
    the change ended the client's sessions, reads the client again and ends its own."""
    from quart_tokengate.service.errors import InvalidClient
    from quart_tokengate.service.identity import ClientInfo

    accounts = service_accounts(app.extensions["tokengate"])
    cid, _ = await accounts.registry.create("svc", [])
    before = await accounts.registry.find(cid)  # what the racing fetch read
    if change == "disable":
        await accounts.registry.set_disabled(cid, True)
    else:
        await accounts.registry.rotate_secret(cid, keep_old=60)
    with pytest.raises(InvalidClient):
        await accounts.sessions.session_for(before, before.credentials[0], ClientInfo())
    assert await live_sessions(app, before.user_id) == 0


async def test_implicit_refresh_never_renews_a_token_past_its_secret_retire_time(make_app, clock):
    app = await make_app(clock=clock, implicit_refresh=True)
    cid, old = await registry(app).create("svc", [])
    await registry(app).rotate_secret(cid, keep_old=120)
    client = app.test_client()
    token = (await (await fetch_basic(client, cid, old)).get_json())["access_token"]
    clock.advance(119)
    assert (await client.get("/auth/me", headers=bearer(token))).status_code == 200
    clock.advance(1)
    r = await client.get("/auth/me", headers=bearer(token))
    assert r.status_code == 401 and "X-Access-Token" not in r.headers
    assert (await r.get_json())["error"] == "session_expired"
