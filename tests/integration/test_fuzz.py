"""Random bodies and headers on every route: always a 4xx of the contract's shape, never a 5xx."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import bearer, register_and_login

ROUTES = [
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("POST", "/auth/password"),
    ("POST", "/auth/password-reset/request"),
    ("POST", "/auth/password-reset/confirm"),
    ("POST", "/auth/logout"),
    ("DELETE", "/auth/sessions/x"),
]
FIELDS = ["username", "password", "device", "refresh_token", "token", "new_password",
          "current_password"]  # fmt: skip

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=5), inner, max_size=3), max_leaves=8)  # fmt: skip
bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), values, max_size=4).map(
        lambda d: json.dumps(d).encode()
    ),
    values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)
auth_headers = st.one_of(
    st.none(),
    st.text(max_size=60).filter(lambda s: s.isprintable()),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=300).map(
        lambda t: "Bearer " + t
    ),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(route=st.sampled_from(ROUTES), body=bodies, authorization=auth_headers)
async def test_random_input_never_breaks_the_service(app, route, body, authorization):
    client = app.test_client()
    method, path = route
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    r = await client.open(path, method=method, data=body, headers=headers)
    assert r.status_code < 500, await r.get_data()
    if r.status_code >= 400:
        assert set(await r.get_json()) == {"error", "error_description"}


async def test_a_session_survives_the_noise(app):
    client = app.test_client()
    victim = await register_and_login(client, "victim")
    for route in ROUTES:
        method, path = route
        r = await client.open(
            path, method=method, data=b"\xff{", headers={"Content-Type": "application/json"}
        )
        assert 400 <= r.status_code < 500
    r = await client.get("/auth/me", headers=bearer(victim["access_token"]))
    assert r.status_code == 200
