"""The device login's pure flows (RFC 8628), driven by hand: no server, no sleeping."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import httpx
import pytest

from quart_tokengate.client import (
    AuthError,
    DeviceAccessDenied,
    DeviceCode,
    DeviceCodeExpired,
    DeviceLoginFailed,
    Tokens,
)
from quart_tokengate.client._device import DEVICE_GRANT, poll_flow, start_flow
from quart_tokengate.client._flow import Call, Sleep

CODE = DeviceCode(
    device_code="dc-secret",
    user_code="BCDF-GHJK",
    verification_uri="http://id.test/account/device",
    verification_uri_complete="http://id.test/account/device?user_code=BCDF-GHJK",
    expires_in=30,
    interval=5,
)
PAIR = {"access_token": "a.b.c", "refresh_token": "d.e.f", "session_id": "s1", "scope": ""}


def answer(status: int, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body if body is not None else {}, headers=headers)


def oauth_error(code: str) -> httpx.Response:
    return answer(400, {"error": code, "error_description": "..."})


class Driver:
    """Runs a poll flow: records each Sleep, answers each Call from a list."""

    def __init__(self, flow: Generator[Any, Any, Any]) -> None:
        self.flow = flow
        self.sleeps: list[float] = []
        self.calls: list[Call] = []

    def run(self, answers: list[httpx.Response | Exception]) -> Any:
        pending = list(answers)
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                op = self.flow.throw(error) if error is not None else self.flow.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            if isinstance(op, Sleep):
                self.sleeps.append(op.seconds)
            else:
                assert isinstance(op, Call)
                self.calls.append(op)
                got = pending.pop(0)
                if isinstance(got, Exception):
                    error = got
                else:
                    value = got


def test_start_posts_a_form_and_reads_the_code():
    driver = Driver(start_flow(client_id="cli", device="pi", scope=None))
    code = driver.run([answer(200, {**CODE_JSON})])
    assert driver.calls[0].path == "/oauth/device_authorization" and driver.calls[0].form
    assert driver.calls[0].body == {"client_id": "cli", "device": "pi"}
    assert code == CODE
    assert "dc-secret" not in repr(code)


CODE_JSON = {
    "device_code": "dc-secret",
    "user_code": "BCDF-GHJK",
    "verification_uri": "http://id.test/account/device",
    "verification_uri_complete": "http://id.test/account/device?user_code=BCDF-GHJK",
    "expires_in": 30,
    "interval": 5,
}


@pytest.mark.parametrize(
    "bad", [{}, {**CODE_JSON, "expires_in": "30"}, {**CODE_JSON, "device_code": ""}, []]
)
def test_start_refuses_an_answer_that_is_no_device_code(bad):
    with pytest.raises(AuthError, match="not a device code"):
        Driver(start_flow()).run([httpx.Response(200, json=bad)])


def test_start_errors_are_typed():
    with pytest.raises(AuthError) as caught:
        Driver(start_flow(scope="a  b")).run([oauth_error("invalid_scope")])
    assert caught.value.code == "invalid_scope"
    with pytest.raises(AuthError, match="Could not start"):
        Driver(start_flow()).run([httpx.ConnectError("down")])


def test_polling_waits_the_interval_then_returns_the_pair():
    driver = Driver(poll_flow(CODE, client_id="cli", clock=lambda: 100.0))
    tokens = driver.run(
        [oauth_error("authorization_pending"), oauth_error("authorization_pending"),
         answer(200, PAIR)]
    )  # fmt: skip
    assert isinstance(tokens, Tokens) and tokens.session_id == "s1"
    assert tokens.received_at == 100.0
    assert driver.sleeps == [5, 5, 5]
    assert driver.calls[0].path == "/oauth/token" and driver.calls[0].form
    assert driver.calls[0].body == {
        "grant_type": DEVICE_GRANT, "device_code": "dc-secret", "client_id": "cli"
    }  # fmt: skip


def test_slow_down_adds_five_seconds_for_good():
    driver = Driver(poll_flow(CODE))
    driver.run(
        [oauth_error("slow_down"), oauth_error("authorization_pending"), oauth_error("slow_down"),
         answer(200, PAIR)]
    )  # fmt: skip
    assert driver.sleeps == [5, 10, 10, 15]


def test_denied_and_expired_raise_their_own_errors():
    with pytest.raises(DeviceAccessDenied) as denied:
        Driver(poll_flow(CODE)).run([oauth_error("access_denied")])
    assert denied.value.code == "access_denied"
    assert isinstance(denied.value, DeviceLoginFailed)
    with pytest.raises(DeviceCodeExpired):
        Driver(poll_flow(CODE)).run([oauth_error("expired_token")])
    with pytest.raises(AuthError) as other:
        Driver(poll_flow(CODE)).run([oauth_error("invalid_grant")])
    assert other.value.code == "invalid_grant"
    assert not isinstance(other.value, DeviceLoginFailed)


def test_polling_stops_at_expires_in_without_asking_again():
    driver = Driver(poll_flow(CODE))
    with pytest.raises(DeviceCodeExpired):
        driver.run([oauth_error("authorization_pending")] * 6)
    assert sum(driver.sleeps) == 30 and len(driver.calls) == 6


def test_outages_are_waited_out_and_retry_after_is_honoured():
    driver = Driver(poll_flow(CODE))
    tokens = driver.run(
        [httpx.ConnectError("refused"),
         answer(503, {"error": "auth_unavailable"}, **{"Retry-After": "8"}),
         answer(200, PAIR)]
    )  # fmt: skip
    assert tokens.access_token == "a.b.c"
    assert driver.sleeps == [5, 5, 3, 5]
