"""TokenGate inside someone else's Quart app."""

from quart import Quart

from quart_tokengate.service import Settings, TokenGate, current_identity, login_required
from quart_tokengate.service.passwords import Passwords
from tests.conftest import FAST_HASHER, bearer, register_and_login
from tests.support import SECRET


def build(redis_url, database_url, tmp_path):
    app = Quart("notes")

    @app.get("/notes")
    @login_required
    async def notes():
        me = current_identity()
        return {"owner": me.username, "session": me.session_id, "sub": me.claims["sub"]}

    @app.get("/public")
    async def public():
        return {"ok": True}

    settings = Settings(
        secret_key=SECRET,
        redis_url=redis_url,
        database_url=database_url,
        instance_dir=tmp_path / "instance",
    )
    TokenGate(app, settings=settings, passwords=Passwords(FAST_HASHER))
    return app


async def test_extension_guards_the_host_apps_routes(
    redis_client, redis_url, database_url, tmp_path
):
    app = build(redis_url, database_url, tmp_path)
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/public")).status_code == 200
        r = await client.get("/notes")
        assert r.status_code == 401
        assert (await r.get_json())["error"] == "missing_token"
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="tokengate"'
        pair = await register_and_login(client)
        r = await client.get("/notes", headers=bearer(pair["access_token"]))
        assert r.status_code == 200
        body = await r.get_json()
        assert body["owner"] == "alice" and body["session"] == pair["session_id"]
        await client.post("/auth/logout", headers=bearer(pair["access_token"]))
        r = await client.get("/notes", headers=bearer(pair["access_token"]))
        assert (await r.get_json())["error"] == "token_revoked"
        assert app.extensions["tokengate"].settings.issuer == "tokengate"


async def test_login_required_keeps_the_signature():
    @login_required
    async def view(item_id: int) -> dict[str, int]:
        """Docs of the view."""
        return {"id": item_id}

    assert view.__name__ == "view" and view.__doc__ == "Docs of the view."
    assert view.__wrapped__.__annotations__["item_id"] is int


async def test_the_host_apps_routes_are_logged_and_counted(
    redis_client, redis_url, database_url, tmp_path, caplog
):
    """The one pair of hooks covers every route: an unguarded one of the host's is in the
    access log and the request metrics, and a guarded one names its user in the log."""
    import logging

    from quart_tokengate.service.metrics import metrics

    app = build(redis_url, database_url, tmp_path)
    counter = metrics().requests
    before = counter.labels("/public", "GET", "200")._value.get()
    async with app.test_app():
        client = app.test_client()
        pair = await register_and_login(client)
        with caplog.at_level(logging.INFO, logger="tokengate.access"):
            assert (await client.get("/public")).status_code == 200
            r = await client.get("/notes", headers=bearer(pair["access_token"]))
            assert r.status_code == 200
    assert counter.labels("/public", "GET", "200")._value.get() == before + 1
    lines = [(r.getMessage(), r.fields) for r in caplog.records if r.name == "tokengate.access"]
    assert [m for m, _ in lines] == ["GET /public 200", "GET /notes 200"]
    assert lines[0][1]["user_id"] is None and lines[0][1]["duration_ms"] >= 0
    assert lines[1][1]["session_id"] == pair["session_id"]


async def test_start_up_freezes_what_it_made(redis_client, redis_url, database_url, tmp_path):
    """What import and start-up made is moved out of the collector's way (gc.freeze),
    and young collections come less often; the older generations keep Python's rule."""
    import gc

    from quart_tokengate.service.app import YOUNG_GC_THRESHOLD

    gc.unfreeze()
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        app = build(redis_url, database_url, tmp_path)
        async with app.test_app():
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, 10, 10)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
