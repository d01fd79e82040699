"""API keys in one process: made, used by the guard, narrowed, revoked, reported, counted."""

from __future__ import annotations

import pytest
from sqlalchemy import event, select, update

from quart_tokengate.service import admin
from quart_tokengate.service.credentials import apikeys
from quart_tokengate.service.db.models import ApiKey, User
from quart_tokengate.service.guard import current_identity, login_required
from tests.conftest import bearer, me_answer, register_and_login


def gate_of(app):
    return app.extensions["tokengate"]


async def new_key(client, pair, **body):
    body.setdefault("name", "ci")
    r = await client.post("/auth/api-keys", json=body, headers=bearer(pair["access_token"]))
    assert r.status_code == 201, await r.get_data()
    return await r.get_json()


async def code(client, key, path="/auth/me", method="GET"):
    r = await client.open(path, method=method, headers=bearer(key))
    body = await r.get_json(force=True, silent=True)
    return r.status_code if r.status_code < 300 else body["error"]


async def test_a_key_is_made_once_used_on_guarded_routes_listed_and_revoked(app):
    client = app.test_client()
    pair = await register_and_login(client)
    made = await new_key(client, pair, name="deploy script", expires_in=3600)
    assert apikeys.PATTERN.fullmatch(made["key"]) and made["name"] == "deploy script"
    status, body, _ = await me_answer(client, bearer(made["key"]))
    assert status == 200
    assert body == {"id": 1, "username": "alice", "session_id": None, "api_key_id": made["id"]}
    r = await client.get("/auth/api-keys", headers=bearer(pair["access_token"]))
    listed = (await r.get_json())["api_keys"]
    assert [k["id"] for k in listed] == [made["id"]] and "key" not in listed[0]
    assert listed[0]["revoked_at"] is None
    # Only the digest is stored, never the key.
    async with gate_of(app).db() as db:
        row = await db.get(ApiKey, made["id"])
    assert made["key"] not in (row.digest, row.name) and len(row.digest) == 64
    r = await client.delete(f"/auth/api-keys/{made['id']}", headers=bearer(pair["access_token"]))
    assert r.status_code == 204
    assert await code(client, made["key"]) == "token_revoked"
    r = await client.get("/auth/api-keys", headers=bearer(pair["access_token"]))
    assert (await r.get_json())["api_keys"][0]["revoked_why"] == "revoked"


async def test_bad_keys_are_refused_and_a_bad_checksum_before_any_lookup(app, make_app):
    client = app.test_client()
    pair = await register_and_login(client)
    made = await new_key(client, pair)
    key = made["key"]
    typo = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    body = key[4:36]
    forged = "tgk_" + "Z" * 32 + apikeys.checksum("Z" * 32)  # well-formed, never issued
    engine = gate_of(app)._engine
    statements = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine.sync_engine, "before_cursor_execute", listener)
    try:
        for bad in (typo, key[:-1], key + "0", "tgk_", "tgk_" + "!" * 38, "tgk_" + body + "000000"):
            status, answer, challenge = await me_answer(client, bearer(bad))
            assert (status, answer["error"]) == (401, "invalid_token"), bad
            assert 'error="invalid_token"' in challenge
        assert statements == [], "a malformed key is refused before any lookup"
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", listener)
    assert await code(client, forged) == "invalid_token"
    assert await code(client, forged) == "invalid_token"  # remembered: no second query
    # A key of another deployment (another digest secret) is unknown here.
    other = await make_app(secret_key="another deployment's secret key, 32+ bytes long")
    assert await code(other.test_client(), key) == "invalid_token"


async def test_an_expired_key_is_token_expired_at_the_clock(make_app, clock):
    app = await make_app(clock=clock)
    client = app.test_client()
    pair = await register_and_login(client)
    made = await new_key(client, pair, expires_in=100)
    assert await code(client, made["key"]) == 200
    clock.advance(99)
    assert await code(client, made["key"]) == 200
    clock.advance(1)
    assert await code(client, made["key"]) == "token_expired"


async def test_lifetimes_are_bounded_and_bodies_checked(make_app):
    app = await make_app(api_key_ttl=50, api_key_max_ttl=100)
    client = app.test_client()
    pair = await register_and_login(client)
    made = await new_key(client, pair)
    async with gate_of(app).db() as db:
        row = await db.get(ApiKey, made["id"])
    assert 49 < (row.expires_at - row.created_at).total_seconds() <= 50
    headers = bearer(pair["access_token"])
    for body in (
        {"name": "x", "expires_in": 101}, {"name": "x", "expires_in": 0}, {"name": ""},
        {"name": "x", "scopes": "admin"}, {"name": "x", "scopes": ["a b"]}, {"nom": "x"},
        {"name": "x\u0000"}, {"name": 5},
    ):  # fmt: skip
        r = await client.post("/auth/api-keys", json=body, headers=headers)
        assert r.status_code == 400 and (await r.get_json())["error"] == "invalid_request", body
    r = await client.post(
        "/auth/api-keys", json={"name": "x", "scopes": ["admin"]}, headers=headers
    )
    assert r.status_code == 403 and (await r.get_json())["error"] == "insufficient_scope"
    r = await client.delete("/auth/api-keys/nosuchkey", headers=headers)
    assert r.status_code == 404
    async with gate_of(app).db() as db:
        assert len((await db.execute(select(ApiKey))).scalars().all()) == 1


async def test_a_key_is_never_a_fresh_login_nor_manages_credentials(make_app, clock):
    app = await make_app(clock=clock, fresh_ttl=600, access_ttl=3600)
    client = app.test_client()
    pair = await register_and_login(client)
    key = (await new_key(client, pair))["key"]
    for method, path, body in (
        ("POST", "/auth/api-keys", {"name": "another"}),
        ("POST", "/auth/password", {"current_password": "correct horse", "new_password": "x" * 12}),
        ("POST", "/auth/logout-all", None),
        ("POST", "/auth/logout", None),
        # A narrow key that leaked must not end its owner's sessions, read where they
        # log in from, or revoke their other keys.
        ("GET", "/auth/sessions", None),
        ("DELETE", f"/auth/sessions/{pair['session_id']}", None),
        ("GET", "/auth/api-keys", None),
        ("DELETE", "/auth/api-keys/nosuchkey", None),
    ):
        r = await client.open(path, method=method, json=body, headers=bearer(key))
        assert r.status_code == 403, path
        assert (await r.get_json())["error"] == "api_key_not_allowed"
    assert await code(client, pair["access_token"]) == 200  # nothing ended
    # Making a key needs a fresh password login.
    clock.advance(601)
    r = await client.post(
        "/auth/api-keys", json={"name": "late"}, headers=bearer(pair["access_token"])
    )
    assert (await r.get_json())["error"] == "fresh_login_required"
    # A password change or "end all sessions" leaves keys alone.
    r = await client.post("/auth/logout-all", headers=bearer(pair["access_token"]))
    assert r.status_code == 204
    assert await code(client, key) == 200


@pytest.fixture
async def scoped(make_app, clock):
    """An app with a route that needs the ``notes:write`` scope."""
    app = await make_app(clock=clock)

    @app.get("/notes")
    @login_required(scopes=["notes:write"])
    async def notes():
        me = current_identity()
        return {"scopes": sorted(me.scopes), "key": me.api_key_id, "credential": me.credential}

    return app


async def test_a_key_carries_its_scopes_narrowed_to_the_users_now(scoped):
    app, client = scoped, scoped.test_client()
    gate = gate_of(app)
    pair = await register_and_login(client)
    await admin.change_scopes(gate, "alice", ["notes:write", "notes:read"], grant=True)
    pair = await register_and_login(client)  # a login carries the new scopes
    wide = await new_key(client, pair, scopes=["notes:write", "notes:read"])
    narrow = await new_key(client, pair, scopes=["notes:read"])
    r = await client.get("/notes", headers=bearer(wide["key"]))
    assert r.status_code == 200
    assert await r.get_json() == {
        "scopes": ["notes:read", "notes:write"], "key": wide["id"], "credential": "api_key",
    }  # fmt: skip
    assert await code(client, narrow["key"], "/notes") == "insufficient_scope"
    await admin.change_scopes(gate, "alice", ["notes:write"], grant=False)
    assert await code(client, wide["key"], "/notes") == "insufficient_scope"
    await admin.change_scopes(gate, "alice", ["notes:write"], grant=True)
    assert await code(client, wide["key"], "/notes") == 200


async def test_disabling_the_user_refuses_its_keys_and_enabling_brings_them_back(app):
    client, gate = app.test_client(), gate_of(app)
    pair = await register_and_login(client)
    key = (await new_key(client, pair))["key"]
    assert await code(client, key) == 200
    await admin.set_disabled(gate, "alice", True)
    assert await code(client, key) == "token_revoked"
    await admin.set_disabled(gate, "alice", False)
    assert await code(client, key) == 200


async def test_a_key_disabled_in_sql_while_redis_rebuilds_is_not_revived(app, redis_client):
    """The mark moves the version: a rebuild that read SQL before it cannot write over it."""
    client, gate = app.test_client(), gate_of(app)
    pair = await register_and_login(client)
    made = await new_key(client, pair)
    manager = gate.api_keys
    digest = apikeys.digest(await manager.secret(), made["key"])
    tag = digest[: apikeys.TAG_CHARS]
    seen = await manager.store.check(tag, now=gate.clock(), rate=None)  # a miss: version ""
    async with gate.db() as db:
        await db.execute(update(User).where(User.username == "alice").values(disabled=True))
        await db.commit()
    await gate.user_changed(1)
    # The rebuild that read SQL before the change (the key live) loses.
    assert not await manager.store.load(
        tag, seen.version, {"st": "live", "ex": "1e12", "lu": "0", "uid": "1", "nm": "alice",
                            "id": made["id"], "sc": ""}, expire_at=int(gate.clock()) + 60,
    )  # fmt: skip
    assert await code(client, made["key"]) == "token_revoked"


async def test_redis_losing_its_data_rebuilds_keys_from_sql(app, redis_client):
    client = app.test_client()
    pair = await register_and_login(client)
    live = (await new_key(client, pair))["key"]
    gone = await new_key(client, pair)
    await client.delete(f"/auth/api-keys/{gone['id']}", headers=bearer(pair["access_token"]))
    assert await code(client, live) == 200
    await redis_client.flushdb()
    assert await code(client, live) == 200
    assert await code(client, gone["key"]) == "token_revoked"


async def test_leaked_keys_are_revoked_and_the_answer_says_nothing_of_which(app):
    client, gate = app.test_client(), gate_of(app)
    pair = await register_and_login(client)
    real = await new_key(client, pair, name="leaky")
    kept = await new_key(client, pair, name="kept")
    made_up = "tgk_" + "Q" * 32 + apikeys.checksum("Q" * 32)
    r = await client.post(
        "/auth/api-keys/leaked", json={"keys": [real["key"], made_up, "tgk_nonsense", "hello"]}
    )
    assert r.status_code == 200 and await r.get_json() == {"revoked": 2}
    r = await client.post("/auth/api-keys/leaked", json={"keys": [made_up]})
    assert await r.get_json() == {"revoked": 1}  # the same answer for a key that never was
    await gate.manager.background.drain()
    assert await code(client, real["key"]) == "token_revoked"
    assert await code(client, kept["key"]) == 200
    r = await client.get("/auth/api-keys", headers=bearer(pair["access_token"]))
    states = {k["name"]: k["revoked_why"] for k in (await r.get_json())["api_keys"]}
    assert states == {"leaky": "leaked", "kept": None}
    for bad in ({"keys": ["x"] * 101}, {"keys": "tgk_"}, {"keys": [1]}, {}, {"keys": [], "x": 1}):
        r = await client.post("/auth/api-keys/leaked", json=bad)
        assert r.status_code == 400 and (await r.get_json())["error"] == "invalid_request"


async def test_last_use_is_written_at_most_once_a_minute_off_the_request(make_app, clock):
    app = await make_app(clock=clock)
    client, gate = app.test_client(), gate_of(app)
    pair = await register_and_login(client)
    made = await new_key(client, pair)

    async def last_used():
        await gate.manager.background.drain()
        async with gate.db() as db:
            row = await db.get(ApiKey, made["id"])
        return row.last_used_at and row.last_used_at.timestamp(), row.last_used_ip

    assert await last_used() == (None, None)
    start = clock()
    r = await client.get(
        "/auth/me", headers=bearer(made["key"]), scope_base={"client": ("10.1.2.3", 1)}
    )
    assert r.status_code == 200
    assert await last_used() == (pytest.approx(start), "10.1.2.3")
    clock.advance(59)
    await client.get(
        "/auth/me", headers=bearer(made["key"]), scope_base={"client": ("10.9.9.9", 1)}
    )
    assert await last_used() == (pytest.approx(start), "10.1.2.3")
    clock.advance(1)
    await client.get(
        "/auth/me", headers=bearer(made["key"]), scope_base={"client": ("10.9.9.9", 1)}
    )
    assert await last_used() == (pytest.approx(start + 60), "10.9.9.9")


async def test_a_key_over_its_rate_limit_is_429_until_its_window_ends(make_app, clock):
    app = await make_app(clock=clock, rate_limit=(3, 60))
    client = app.test_client()
    pair = await register_and_login(client)
    key = (await new_key(client, pair))["key"]
    other = (await new_key(client, pair, name="other"))["key"]
    assert [await code(client, key) for _ in range(3)] == [200] * 3
    clock.advance(10)
    r = await client.get("/auth/me", headers=bearer(key))
    assert r.status_code == 429 and (await r.get_json())["error"] == "rate_limited"
    assert r.headers["Retry-After"] == "50"
    assert r.headers["RateLimit-Policy"] == '"credential";q=3;w=60'
    assert r.headers["RateLimit"] == '"credential";r=0;t=50'
    assert await code(client, other) == 200  # each key its own count
    assert await code(client, pair["access_token"]) == 200  # a person's session is not counted
    clock.advance(50)
    assert await code(client, key) == 200


async def test_api_keys_can_be_turned_off(app, make_app):
    client = app.test_client()
    pair = await register_and_login(client)
    key = (await new_key(client, pair))["key"]
    off = await make_app(api_keys=False)
    off_client = off.test_client()
    assert await code(off_client, key) == "invalid_token"
    pair = await register_and_login(off_client)
    r = await off_client.get("/auth/api-keys", headers=bearer(pair["access_token"]))
    assert r.status_code == 404


async def test_database_down_keys_redis_holds_still_work_the_rest_is_503_fast(app, redis_client):
    from quart_tokengate.service.db.engine import build_engine, build_sessionmaker
    from tests.support import assert_unavailable, free_port, timed_async

    client, gate = app.test_client(), gate_of(app)
    pair = await register_and_login(client)
    made = await new_key(client, pair)
    assert await code(client, made["key"]) == 200
    await gate.manager.background.drain()
    good = gate.api_keys.db
    dead = build_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test")
    gate.api_keys.db = gate.manager.db = build_sessionmaker(dead)
    try:
        assert await code(client, made["key"]) == 200  # no SQL on the key's hot path
        headers = bearer(pair["access_token"])
        for call in (
            lambda: client.post("/auth/api-keys", json={"name": "during"}, headers=headers),
            lambda: client.delete(f"/auth/api-keys/{made['id']}", headers=headers),
            lambda: client.get("/auth/api-keys", headers=headers),
        ):
            r, elapsed = await timed_async(call)
            assert_unavailable(r, elapsed, await r.get_json())
        await redis_client.flushdb()  # now the key's state must come from SQL
        r, elapsed = await timed_async(lambda: client.get("/auth/me", headers=bearer(made["key"])))
        assert_unavailable(r, elapsed, await r.get_json())
    finally:
        await dead.dispose()
        gate.api_keys.db = gate.manager.db = good
    assert await code(client, made["key"]) == 200
    pair = await register_and_login(client)
    r = await client.get("/auth/api-keys", headers=bearer(pair["access_token"]))
    assert [(k["name"], k["revoked_at"]) for k in (await r.get_json())["api_keys"]] == [
        ("ci", None)
    ]


async def test_a_revocation_redis_missed_is_taken_back_in_sql(make_app, private_redis):
    app = await make_app(redis_url=private_redis.url)
    client, gate = app.test_client(), gate_of(app)
    pair = await register_and_login(client)
    made = await new_key(client, pair)
    assert await code(client, made["key"]) == 200
    private_redis.stop()
    try:
        with pytest.raises(Exception) as failed:
            await gate.api_keys.revoke(made["id"], owner=None)  # as `tokengate api-keys revoke`
        from quart_tokengate.service.errors import is_infrastructure_failure

        assert is_infrastructure_failure(failed.value)
        async with gate.db() as db:
            assert (await db.get(ApiKey, made["id"])).revoked_at is None  # nothing half done
    finally:
        private_redis.start()
    # Redis came back empty; the key is live from SQL, and the revocation, sent again, holds.
    assert await code(client, made["key"]) == 200
    assert await gate.api_keys.revoke(made["id"], owner=None)
    assert await code(client, made["key"]) == "token_revoked"


async def test_rfc_7009_revocation_revokes_a_key_and_introspection_calls_it_inactive(make_app):
    app = await make_app(introspection_clients=(("rs", "rs-secret"),))
    client = app.test_client()
    pair = await register_and_login(client)
    made = await new_key(client, pair)
    basic = {"Authorization": "Basic cnM6cnMtc2VjcmV0"}
    r = await client.post("/auth/introspect", form={"token": made["key"]}, headers=basic)
    assert await r.get_json() == {"active": False}  # introspection speaks of access tokens
    for token in ("tgk_not-a-key", made["key"][:-1] + "0", made["key"]):
        r = await client.post("/auth/revoke", form={"token": token})
        assert r.status_code == 200
    assert await code(client, made["key"]) == "token_revoked"
    assert await code(client, pair["access_token"]) == 200


async def test_no_key_reaches_a_log_line(app, caplog):
    caplog.set_level("DEBUG")
    client, gate = app.test_client(), gate_of(app)
    pair = await register_and_login(client)
    made = await new_key(client, pair)
    await code(client, made["key"])
    await client.post("/auth/api-keys/leaked", json={"keys": [made["key"]]})
    await gate.manager.background.drain()
    assert await code(client, made["key"]) == "token_revoked"
    events = [getattr(r, "fields", {}) for r in caplog.records]
    assert {"api_key_created", "api_key_revoked", "api_keys_reported_leaked"} <= {
        e.get("event") for e in events
    }
    leaked = next(e for e in events if e.get("event") == "api_key_revoked")
    assert (leaked["reason"], leaked["api_key_id"]) == ("leaked", made["id"])
    everything = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert made["key"] not in everything and made["key"][4:36] not in everything


async def test_a_token_carrying_client_id_is_counted_under_its_client(make_app, clock):
    """Service accounts' tokens are ordinary access JWTs with ``client_id``, checked by the
    session's own script, which counts them under the client (near checks on or not)."""
    from quart_tokengate.service import tokens

    app = await make_app(clock=clock, rate_limit=(2, 30), near_cache=True)
    client, gate = app.test_client(), gate_of(app)

    def client_token(pair):  # what the client-credentials grant mints: client_id in it
        now = int(clock())
        return tokens.mint_access(
            gate.keyring.signing, user_id="1", username="svc", session_id=pair["session_id"],
            jti=tokens.new_jti(), iat=now, ttl=300,
            claims={"auth_time": now, "client_id": "reporting"},
        )  # fmt: skip

    one = client_token(await register_and_login(client, "svc"))
    two = client_token(await register_and_login(client, "svc", device="second"))
    person = await register_and_login(client, "alice")
    # Two tokens of one client share its count; a person's session has none.
    assert [await code(client, one) for _ in range(2)] == [200, 200]
    r = await client.get("/auth/me", headers=bearer(two))
    assert r.status_code == 429 and (await r.get_json())["error"] == "rate_limited"
    assert r.headers["Retry-After"] == "30"
    assert [await code(client, person["access_token"]) for _ in range(5)] == [200] * 5
    clock.advance(30)
    assert await code(client, two) == 200


async def test_a_key_is_read_from_the_header_even_where_browsers_use_cookies(make_app):
    app = await make_app(token_location=("cookies",))
    client = app.test_client()
    pair = await register_and_login(client)
    # Cookie mode: the login set the cookies; the key is made with them.
    csrf = next(c.value for c in client.cookie_jar if c.name == "csrf_token")
    r = await client.post("/auth/api-keys", json={"name": "ci"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, await r.get_data()
    key = (await r.get_json())["key"]
    other = app.test_client()  # no cookies: the key alone, and no CSRF header needed
    r = await other.get("/auth/me", headers=bearer(key))
    assert r.status_code == 200 and (await r.get_json())["api_key_id"]
    # A key manages no keys; it revokes itself as any token does (RFC 7009).
    r = await other.delete(
        f"/auth/api-keys/{(await r.get_json())['api_key_id']}", headers=bearer(key)
    )
    assert r.status_code == 403 and (await r.get_json())["error"] == "api_key_not_allowed"
    r = await other.post("/auth/revoke", form={"token": key})
    assert r.status_code == 200
    assert (await other.get("/auth/me", headers=bearer(key))).status_code == 401
    # A session's JWT in the header is still not read in cookie-only mode.
    assert (await other.get("/auth/me", headers=bearer(pair["access_token"]))).status_code == 401
