"""Bad input of every kind: a 4xx JSON error of the contract's shape, and nothing changes."""

import pytest
from sqlalchemy import func, select

from quart_tokengate.service.db.models import User
from tests.conftest import bearer, register_and_login

JSON = {"Content-Type": "application/json"}


async def user_count(app):
    async with app.extensions["tokengate"].db() as db:
        return (await db.execute(select(func.count()).select_from(User))).scalar_one()


def assert_error_shape(status, body, expected_status=None):
    assert 400 <= status < 500, status
    if expected_status:
        assert status == expected_status
    assert set(body) == {"error", "error_description"}
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert "Traceback" not in body["error_description"]


BODIES = {
    "malformed-json": b'{"username": "bob", "password": ',
    "not-an-object": b'["bob", "correct horse"]',
    "json-null": b"null",
    "wrong-types": b'{"username": 12, "password": ["correct horse"]}',
    "missing-field": b'{"username": "bob"}',
    "unknown-field": b'{"username": "bob", "password": "correct horse", "admin": true}',
    "10kB-username": b'{"username": "' + b"b" * 10_000 + b'", "password": "correct horse"}',
    "invalid-utf8": b'{"username": "b\xff\xfeob", "password": "correct horse"}',
    "lone-surrogate": b'{"username": "bob", "password": "correct \\ud800horse"}',
    "nul-in-username": b'{"username": "b\\u0000ob", "password": "correct horse"}',
    "rtl-override": b'{"username": "bob\\u202e", "password": "correct horse"}',
    "empty-body": b"",
    "deep-nesting": b'{"username": ' + b"[" * 5000 + b"]" * 5000 + b', "password": "x"}',
    "huge-number": b'{"username": "bob", "password": 1e999999}',
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize("path", ["/auth/register", "/auth/login"])
async def test_bad_bodies(app, path, body):
    client = app.test_client()
    r = await client.post(path, data=body, headers=JSON)
    assert_error_shape(r.status_code, await r.get_json(), 400)
    assert await user_count(app) == 0


async def test_one_megabyte_body(app):
    client = app.test_client()
    body = b'{"username": "bob", "password": "' + b"p" * 1_000_000 + b'"}'
    r = await client.post("/auth/register", data=body, headers=JSON)
    assert_error_shape(r.status_code, await r.get_json(), 413)
    assert await user_count(app) == 0


async def test_huge_password_within_the_body_limit(app):
    client = app.test_client()
    r = await client.post("/auth/register", json={"username": "bob", "password": "p" * 50_000})
    assert_error_shape(r.status_code, await r.get_json(), 400)


@pytest.mark.parametrize(
    "path,body",
    [
        ("/auth/refresh", {"refresh_token": 5}),
        ("/auth/refresh", {"refresh_token": "x" * 100_000}),
        ("/auth/refresh", {"refresh_token": "not.a.jwt"}),
        ("/auth/password-reset/request", {"username": None}),
        ("/auth/password-reset/confirm", {"token": "abc"}),
        ("/auth/password-reset/confirm", {"token": "abc", "new_password": "correct horse"}),
    ],
)
async def test_bad_bodies_elsewhere(app, path, body):
    r = await app.test_client().post(path, json=body)
    assert_error_shape(r.status_code, await r.get_json())


async def test_bad_password_change_changes_nothing(app):
    client = app.test_client()
    pair = await register_and_login(client)
    for body in [{"current_password": "correct horse"}, {"current_password": 1, "new_password": 2}]:
        r = await client.post("/auth/password", json=body, headers=bearer(pair["access_token"]))
        assert_error_shape(r.status_code, await r.get_json(), 400)
    r = await client.post("/auth/login", json={"username": "alice", "password": "correct horse"})
    assert r.status_code == 200


async def test_unknown_route_and_wrong_method(app):
    client = app.test_client()
    r = await client.get("/nowhere")
    assert_error_shape(r.status_code, await r.get_json(), 404)
    r = await client.get("/auth/login")
    assert_error_shape(r.status_code, await r.get_json(), 405)


async def test_deleting_a_session_with_an_odd_id(app):
    client = app.test_client()
    pair = await register_and_login(client)
    for sid in ["x", "%00", "a" * 500, "..%2F..%2Fetc"]:
        r = await client.delete(f"/auth/sessions/{sid}", headers=bearer(pair["access_token"]))
        assert_error_shape(r.status_code, await r.get_json(), 404)
