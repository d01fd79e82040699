"""A clock control is reachable only through the Python object the test kit passes in.

The service reads time through ``TokenGate.clock``, set by the ``clock=``
keyword or by ``TokenGate.reconfigure(clock=...)`` before start-up. No
setting, environment variable, route or header reaches it, and a started
service refuses to be reconfigured.
"""

from __future__ import annotations

import dataclasses
import time

import httpx
import jwt
import pytest

from quart_tokengate.service import Settings, create_app
from quart_tokengate.service.testing import gate_of


def test_the_served_app_has_the_real_clock_and_no_setting_for_another():
    # `tokengate serve` runs create_app() in each worker; that app reads time.time.
    gate = gate_of(create_app(Settings(secret_key="k" * 40)))
    assert gate.clock is time.time
    words = {"clock", "now", "offset", "time"}
    assert not [f.name for f in dataclasses.fields(Settings) if words & set(f.name.split("_"))]
    rules = [rule.rule for rule in create_app().url_map.iter_rules()]
    assert rules and not [r for r in rules if "clock" in r or "time" in r]


async def test_a_started_service_refuses_a_new_clock(tmp_path, redis_url):
    app = create_app(
        Settings(
            secret_key="k" * 40,
            redis_url=redis_url,
            # The embedded SQLite default: the extension migrates it at start-up.
            instance_dir=tmp_path,
        )
    )
    async with app.test_app():
        with pytest.raises(RuntimeError, match="reconfigure it before serving"):
            gate_of(app).reconfigure(clock=lambda: 0.0)
    assert gate_of(app).clock is time.time


def test_a_real_service_process_keeps_real_time_whatever_its_environment(service_factory):
    # Variables a user might guess at are not read: the service starts and keeps real time.
    service = service_factory(test_clock="86400", test_clock_offset="86400")
    with httpx.Client(base_url=service.base_url) as http:
        user = {"username": "alice", "password": "correct horse"}
        assert http.post("/auth/register", json=user).status_code == 201
        access = http.post("/auth/login", json=user).json()["access_token"]
    claims = jwt.decode(access, options={"verify_signature": False})
    assert abs(claims["iat"] - time.time()) < 60
