"""Leak reports wait in a bounded backlog: past it, 503 and nothing queued."""

from __future__ import annotations

from quart_tokengate.service.db.engine import build_engine, build_sessionmaker
from tests.conftest import bearer, register_and_login
from tests.support import assert_unavailable, free_port, timed_async


def gate_of(app):
    return app.extensions["tokengate"]


async def new_key(client, pair, name):
    headers = bearer(pair["access_token"])
    r = await client.post("/auth/api-keys", json={"name": name}, headers=headers)
    assert r.status_code == 201, await r.get_data()
    return (await r.get_json())["key"]


async def states(client, pair):
    r = await client.get("/auth/api-keys", headers=bearer(pair["access_token"]))
    return {k["name"]: k["revoked_why"] for k in (await r.get_json())["api_keys"]}


async def test_leak_reports_held_by_an_outage_are_bounded_and_the_one_past_it_changes_nothing(
    app,
):
    client, gate = app.test_client(), gate_of(app)
    pair = await register_and_login(client)
    first, second, refused = [await new_key(client, pair, n) for n in ("a", "b", "c")]
    gate.api_keys.leaked_backlog = 2
    good = gate.api_keys.db
    dead = build_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test")
    gate.api_keys.db = build_sessionmaker(dead)
    try:
        # The database is down: each report waits in the background, retried.
        for key in (first, second):
            r = await client.post("/auth/api-keys/leaked", json={"keys": [key]})
            assert r.status_code == 200 and await r.get_json() == {"revoked": 1}
        r, elapsed = await timed_async(
            lambda: client.post("/auth/api-keys/leaked", json={"keys": [refused]})
        )
        assert_unavailable(r, elapsed, await r.get_json())
        # Bad input is still refused as such, before the backlog.
        r = await client.post("/auth/api-keys/leaked", json={"keys": "tgk_"})
        assert r.status_code == 400
        # Reports of no well-formed key queue nothing, so they are answered.
        r = await client.post("/auth/api-keys/leaked", json={"keys": ["hello"]})
        assert r.status_code == 200 and await r.get_json() == {"revoked": 0}
    finally:
        gate.api_keys.db = good
        await dead.dispose()
    await gate.manager.background.drain()  # the waiting reports go through now
    assert await states(client, pair) == {"a": "leaked", "b": "leaked", "c": None}
    # The backlog emptied: the refused report, sent again, is taken.
    r = await client.post("/auth/api-keys/leaked", json={"keys": [refused]})
    assert r.status_code == 200
    await gate.manager.background.drain()
    assert await states(client, pair) == {"a": "leaked", "b": "leaked", "c": "leaked"}
