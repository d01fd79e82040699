from tests.conftest import bearer, register_and_login


async def test_register_login_me(app):
    client = app.test_client()
    pair = await register_and_login(client)
    r = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert r.status_code == 200
    assert (await r.get_json())["username"] == "alice"
