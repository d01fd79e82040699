"""The API-key and rate-limit flows, driven by hand: no server, no I/O."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from quart_tokengate.client import (
    AsyncAuthClient,
    AuthClient,
    LoginRequired,
    RateLimited,
    TokenAuth,
)
from quart_tokengate.client._flow import Load, Send, Sleep
from quart_tokengate.client._program_flows import check_api_key

KEY = "tgk_" + "a" * 32 + "000000"


def problem(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "error_description": "..."}, headers=headers)


def request() -> httpx.Request:
    return httpx.Request("POST", "https://api.example/notes", json={"text": "hi"})


def drive(flow: Any, *replies: Any) -> list[Any]:
    ops = [next(flow)]
    try:
        for reply in replies:
            ops.append(flow.send(reply))
    except StopIteration:
        return ops
    raise AssertionError(f"the flow wants more: {ops[-1]!r}")


def test_a_key_is_sent_as_is_and_never_refreshed():
    auth = TokenAuth(api_key=KEY)
    ops = drive(auth.flow(request()), httpx.Response(200))
    assert isinstance(ops[0], Send)
    assert ops[0].request.headers["Authorization"] == f"Bearer {KEY}"
    assert not any(isinstance(op, Load) for op in ops)


def test_a_refused_key_raises_login_required_without_a_refresh():
    flow = TokenAuth(api_key=KEY).flow(request())
    next(flow)
    with pytest.raises(LoginRequired) as refused:
        flow.send(problem(401, "token_revoked"))
    assert refused.value.code == "token_revoked"
    assert KEY not in str(refused.value)


def test_a_429_raises_rate_limited_with_its_wait():
    flow = TokenAuth(api_key=KEY).flow(request())
    next(flow)
    with pytest.raises(RateLimited) as limited:
        flow.send(problem(429, "rate_limited", **{"Retry-After": "7"}))
    assert limited.value.retry_after == 7 and limited.value.code == "rate_limited"


def test_a_short_429_is_waited_out_and_sent_once_more():
    flow = TokenAuth(api_key=KEY, rate_limit_wait=10).flow(request())
    first = next(flow)
    assert isinstance(first, Send)
    assert flow.send(problem(429, "rate_limited", **{"Retry-After": "3"})) == Sleep(3.0)
    again = flow.send(None)
    assert isinstance(again, Send) and again.request.read() == first.request.read()
    with pytest.raises(RateLimited):  # once more only
        flow.send(problem(429, "rate_limited", **{"Retry-After": "3"}))
    flow = TokenAuth(api_key=KEY, rate_limit_wait=2).flow(request())
    next(flow)
    with pytest.raises(RateLimited):  # longer than the client waits
        flow.send(problem(429, "rate_limited", **{"Retry-After": "3"}))


def test_a_session_request_meets_the_same_rate_limit_rule():
    flow = TokenAuth().flow(request())
    assert isinstance(next(flow), Load)
    sent = flow.send(None)  # not logged in: sent for the service to answer
    assert isinstance(sent, Send)
    with pytest.raises(RateLimited):
        flow.send(problem(429, "too_many_attempts", **{"Retry-After": "1"}))


@pytest.mark.parametrize("bad", ["", "tgk_", "ghp_" + "a" * 38, KEY + "x", "tgk_" + "!" * 38])
def test_what_is_not_a_key_is_refused_at_once(bad):
    with pytest.raises(ValueError):
        check_api_key(bad)
    with pytest.raises(ValueError):
        AuthClient(api_key=bad)


def test_a_key_goes_with_no_credentials_and_never_in_a_repr():
    with pytest.raises(ValueError):
        TokenAuth(api_key=KEY, credentials=lambda: ("a", "b"))
    client = AsyncAuthClient(api_key=KEY, base_url="https://api.example")
    assert KEY not in repr(client._token_auth) and KEY not in repr(client)
