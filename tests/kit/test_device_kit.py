"""The test kit's device-login helper: a user's suite tests ``login_device`` with no browser."""

from __future__ import annotations

import httpx
import pytest
from quart import Quart

from quart_tokengate.client import AuthClient, DeviceAccessDenied, MemoryTokenStore
from quart_tokengate.service import Settings, create_app


@pytest.fixture
def tokengate_app() -> Quart:
    # No interval between polls: the test does not wait five seconds of real time.
    return create_app(Settings(device_poll_interval=0))


def test_a_device_login_approved_by_the_kit_gets_a_session(
    tokengate_server, tokengate_user, tokengate_device_approve
):
    user = tokengate_user()
    shown: list[tuple[str, str, str]] = []

    def on_code(uri: str, complete: str, code: str) -> None:
        shown.append((uri, complete, code))
        tokengate_device_approve(code, user)

    with AuthClient(base_url=tokengate_server.base_url, token_store=MemoryTokenStore()) as api:
        tokens = api.login_device(on_code, device="kit test")
        assert api.get("/auth/me").json()["username"] == user.username
        sessions = api.sessions()
    assert tokens.session_id is not None
    ((uri, complete, code),) = shown
    assert uri == tokengate_server.base_url + "/account/device"
    assert complete == f"{uri}?user_code={code}"
    assert [s["device"] for s in sessions if s["current"]] == ["kit test (device login)"]


def test_the_kit_can_deny_and_refuses_an_unknown_code(
    tokengate_server, tokengate_user, tokengate_device_approve
):
    user = tokengate_user()
    with AuthClient(base_url=tokengate_server.base_url) as api:
        with pytest.raises(DeviceAccessDenied):
            api.login_device(lambda uri, complete, code: tokengate_device_approve(
                code, user, approve=False
            ))  # fmt: skip
        assert api.tokens is None
    with pytest.raises(pytest.fail.Exception, match="No device is waiting"):
        tokengate_device_approve("BBBB-BBBB", user)
    r = httpx.post(tokengate_server.base_url + "/oauth/device_authorization", json={"a": 1})
    assert r.status_code == 400  # not a form: nothing started
