"""Sessions that end on their own (replaced, idle) are logged with the reason."""

import logging

from tests.conftest import bearer, register_and_login


def ended(caplog) -> list[dict]:
    return [
        r.fields
        for r in caplog.records
        if r.name == "tokengate.security" and r.fields.get("event") == "session_ended"
    ]


async def test_a_session_pushed_out_by_a_newer_login_is_logged(make_app, caplog):
    caplog.set_level(logging.INFO, logger="tokengate")
    app = await make_app(max_sessions=1)
    client = app.test_client()
    first = await register_and_login(client)
    second = await register_and_login(client)
    assert ended(caplog) == [
        {"event": "session_ended", "reason": "replaced", "user_id": "1",
         "session_id": first["session_id"]},
    ]  # fmt: skip
    r = await client.get("/auth/me", headers=bearer(second["access_token"]))
    assert r.status_code == 200


async def test_an_idle_session_is_logged_when_the_guard_finds_it(make_app, clock, caplog):
    caplog.set_level(logging.INFO, logger="tokengate")
    app = await make_app(clock=clock, idle_timeout=60)
    client = app.test_client()
    pair = await register_and_login(client)
    clock.advance(61)
    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert (await r.get_json())["error"] == "session_expired"
    assert ended(caplog) == [
        {
            "event": "session_ended",
            "reason": "expired",
            "user_id": "1",
            "session_id": pair["session_id"],
        }
    ]
