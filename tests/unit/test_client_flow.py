"""The client's pure flows, driven by hand: no server, no transport, no clock."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from quart_tokengate.client import (
    AuthError,
    FreshLoginRequired,
    InvalidCredentials,
    LoginRequired,
    RateLimited,
    TokenAuth,
)
from quart_tokengate.client._flow import (
    MAX_EXPIRED_RESENDS,
    AskCredentials,
    Call,
    DeviceToken,
    Hook,
    Load,
    Push,
    Renew,
    Send,
    Wait,
    error_code,
    login_flow,
    make_replayable,
    obtain,
)
from quart_tokengate.client._tokens import KEEP, Tokens

NOW = 1_800_000_000.0
URL = "http://api.test/auth/me"
ORIGIN = httpx.URL("http://api.test/")


def jwt(exp: float, iat: float | None = None, jti: str = "a") -> str:
    """A token shaped like the service's (the client never checks signatures)."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims: dict[str, Any] = {"exp": exp, "jti": jti}
    if iat is not None:
        claims["iat"] = iat
    return f"{part({'typ': 'at+jwt', 'alg': 'HS256'})}.{part(claims)}.c2ln"


def pair(exp: float = NOW + 300, iat: float = NOW, name: str = "1") -> Tokens:
    return Tokens(jwt(exp, iat, jti=name), f"refresh-{name}", session_id="s1")


def pair_json(tokens: Tokens) -> dict[str, Any]:
    return {**tokens.to_json(), "expires_in": 300, "refresh_expires_in": 1000}


def problem(status: int, code: str, **headers: str) -> httpx.Response:
    body = {"error": code, "error_description": "..."}
    return httpx.Response(status, json=body, headers=headers)


def auth(**kwargs: Any) -> TokenAuth:
    kwargs.setdefault("clock", lambda: NOW)
    return TokenAuth(**kwargs)


def sent_token(op: Any) -> str:
    assert isinstance(op, Send), op
    return str(op.request.headers["Authorization"]).removeprefix("Bearer ")


# -- the request flow -------------------------------------------------------------
def test_fresh_token_is_attached_and_the_response_ends_the_flow():
    tokens = pair()
    flow = auth().flow(httpx.Request("GET", URL))
    assert isinstance(next(flow), Load)
    assert sent_token(flow.send(tokens)) == tokens.access_token
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(200, json={}))


def test_not_logged_in_without_credentials_sends_the_request_bare():
    flow = auth().flow(httpx.Request("GET", URL))
    next(flow)
    op = flow.send(None)
    assert isinstance(op, Send) and "Authorization" not in op.request.headers
    with pytest.raises(StopIteration):
        flow.send(problem(401, "missing_token"))


def test_not_logged_in_with_credentials_logs_in_first():
    flow = auth(credentials=lambda: ("alice", "pw")).flow(httpx.Request("GET", URL))
    next(flow)
    op = flow.send(None)
    assert isinstance(op, Renew) and op.stale is None and op.relogin
    assert op.reason == "missing_token"
    fresh = pair(name="2")
    assert sent_token(flow.send(fresh)) == fresh.access_token


def test_a_token_within_the_margin_is_refreshed_before_sending():
    old, fresh = pair(exp=NOW + 20, iat=NOW - 280), pair(name="2")
    flow = auth(refresh_margin=30).flow(httpx.Request("GET", URL))
    next(flow)
    op = flow.send(old)
    assert isinstance(op, Renew) and op.stale == old and not op.relogin and op.reason is None
    assert op.origin == httpx.URL("http://api.test/")
    assert sent_token(flow.send(fresh)) == fresh.access_token


@pytest.mark.parametrize(("now", "refreshes"), [(NOW + 4, False), (NOW + 5, True)])
def test_the_margin_is_at_most_half_the_token_lifetime(now, refreshes):
    # A 10-second token with the default 30-second margin would refresh on
    # every request; it refreshes from half its life on instead.
    tokens = pair(exp=NOW + 10, iat=NOW)
    flow = auth(clock=lambda: now).flow(httpx.Request("GET", URL))
    next(flow)
    assert isinstance(flow.send(tokens), Renew) is refreshes


@pytest.mark.parametrize(
    ("skew", "after", "refreshes"),
    [(280, 268, False), (280, 269, True), (-3600, 268, False), (-3600, 269, True)],
)
def test_expiry_is_judged_by_arrival_and_lifetime_not_the_local_clock(skew, after, refreshes):
    # The local clock is off by ``skew``: a 300-second token received at local
    # time NOW + skew expires at NOW + skew + 299 by that clock (a second less:
    # iat is rounded down), and is refreshed from 30 s before then, whatever its
    # exp says.
    tokens = pair(exp=NOW + 300, iat=NOW).received(NOW + skew)
    flow = auth(clock=lambda: NOW + skew + after).flow(httpx.Request("GET", URL))
    next(flow)
    assert isinstance(flow.send(tokens), Renew) is refreshes


def test_tokens_of_unknown_arrival_are_judged_by_exp():
    tokens = pair(exp=NOW + 300, iat=NOW)
    assert tokens.received_at is None and tokens.local_expiry == NOW + 300
    flow = auth(clock=lambda: NOW + 275).flow(httpx.Request("GET", URL))
    next(flow)
    assert isinstance(flow.send(tokens), Renew)


def test_new_and_pushed_tokens_note_their_arrival_by_the_auth_clock():
    skewed = auth(clock=lambda: NOW + 500)
    _ops, outcome = run(
        obtain(pair(), relogin=False, reason=None, can_login=False, clock=skewed.clock),
        httpx.Response(200, json=pair_json(pair(name="2"))),
    )
    assert outcome.tokens.received_at == NOW + 500
    assert outcome.tokens.local_expiry == NOW + 799
    _ops, logged_in = run(
        login_flow("alice", "pw", clock=skewed.clock),
        None,  # no device token kept
        httpx.Response(200, json=pair_json(pair(name="3"))),
    )
    assert logged_in.received_at == NOW + 500
    stamped = pair()
    skewed.token_store.save(stamped)
    skewed._push(Push(stamped, jwt(NOW + 600, NOW + 300, jti="pushed")))
    pushed = skewed.token_store.load()
    assert pushed is not None and pushed.local_expiry == NOW + 799


def test_token_expired_renews_and_resends():
    old, fresh = pair(), pair(name="2")
    flow = auth().flow(httpx.Request("POST", URL, json={"a": 1}))
    next(flow)
    assert sent_token(flow.send(old)) == old.access_token
    op = flow.send(problem(401, "token_expired"))
    assert isinstance(op, Renew) and op.stale == old and op.reason == "token_expired"
    assert not op.relogin
    retry = flow.send(fresh)
    assert sent_token(retry) == fresh.access_token
    assert retry.request.content == b'{"a":1}'
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(200, json={}))


def test_a_resent_request_whose_new_token_expired_too_is_sent_again_with_newer_ones():
    # The request waited for a pooled connection longer than the new token lived.
    first, second, third = pair(), pair(name="2"), pair(name="3")
    flow = auth().flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(first)
    assert flow.send(problem(401, "token_expired")).stale == first
    flow.send(second)
    op = flow.send(problem(401, "token_expired"))
    assert isinstance(op, Renew) and op.stale == second and op.reason == "token_expired"
    assert sent_token(flow.send(third)) == third.access_token
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(200, json={}))


def test_token_expired_resends_are_bounded():
    # A service that refuses every token as expired does not make the client loop.
    flow = auth().flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(pair(name="0"))
    for n in range(1, MAX_EXPIRED_RESENDS + 1):
        assert isinstance(flow.send(problem(401, "token_expired")), Renew)
        assert sent_token(flow.send(pair(name=str(n)))) == pair(name=str(n)).access_token
    with pytest.raises(StopIteration):
        flow.send(problem(401, "token_expired"))


def test_token_expired_with_nothing_newer_is_the_callers_answer():
    tokens = pair()
    flow = auth().flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(tokens)
    assert isinstance(flow.send(problem(401, "token_expired")), Renew)
    with pytest.raises(StopIteration):
        flow.send(tokens)  # a renewal that found nothing newer: no resend


def test_an_expired_token_that_is_not_the_newest_takes_the_newest_without_a_refresh():
    old, newest = pair(exp=NOW - 1, iat=NOW - 301), pair(name="2")
    owner = auth()
    owner.token_store.save(newest)
    renewal = owner.renewal(Renew(old, ORIGIN, reason="token_expired"))
    with pytest.raises(StopIteration) as done:
        next(renewal)  # no Call: nothing is sent
    assert done.value.value == newest


def test_an_expired_newest_token_is_refreshed_once_for_every_request_that_met_it():
    old, fresh = pair(exp=NOW - 1, iat=NOW - 301), pair(name="2")
    owner = auth()
    owner.token_store.save(old)
    leader = owner.renewal(Renew(old, ORIGIN, reason="token_expired"))
    call = next(leader)
    assert isinstance(call, Call) and call.path == "/auth/refresh"
    assert call.body == {"refresh_token": old.refresh_token}
    # Another request refused meanwhile, with the same token: it waits, it does not refresh.
    follower = owner.renewal(Renew(old, ORIGIN, reason="token_expired"))
    wait = next(follower)
    assert isinstance(wait, Wait)
    hook = leader.send(httpx.Response(200, json=pair_json(fresh)))
    assert isinstance(hook, Hook) and hook.name == "refreshed"
    with pytest.raises(StopIteration) as led:
        leader.send(None)
    assert led.value.value == fresh
    with pytest.raises(StopIteration) as waited:
        follower.send(wait.flight.outcome)
    assert waited.value.value == fresh
    assert owner.token_store.load() == fresh


@pytest.mark.parametrize(
    "code",
    ["token_revoked", "session_expired", "session_replaced", "invalid_token", "missing_token"],
)
def test_other_401_codes_do_not_refresh(code):
    tokens = pair()
    flow = auth().flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(tokens)
    try:
        op = flow.send(problem(401, code))
    except StopIteration:
        return
    # Only a look at the store, in case someone logged in again meanwhile.
    assert isinstance(op, Load)
    with pytest.raises(StopIteration):
        flow.send(tokens)


def test_a_request_stamped_with_older_tokens_than_stored_is_retried_with_them():
    old, current = pair(), pair(name="2")
    flow = auth().flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(old)
    assert isinstance(flow.send(problem(401, "token_revoked")), Load)
    assert sent_token(flow.send(current)) == current.access_token


def test_session_over_with_credentials_logs_in_again():
    tokens = pair()
    flow = auth(credentials=lambda: ("alice", "pw")).flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(tokens)
    op = flow.send(problem(401, "session_expired"))
    assert isinstance(op, Renew) and op.relogin and op.reason == "session_expired"


def test_the_code_is_read_from_www_authenticate_when_the_body_is_not_json():
    header = 'Bearer realm="tokengate", error="invalid_token", error_description="token_expired"'
    response = httpx.Response(401, text="nope", headers={"WWW-Authenticate": header})
    assert error_code(response) == "token_expired"
    flow = auth().flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(pair())
    assert isinstance(flow.send(response), Renew)


def test_a_pushed_access_token_is_stored():
    tokens, pushed = pair(), jwt(NOW + 600, NOW, jti="pushed")
    flow = auth().flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(tokens)
    op = flow.send(httpx.Response(200, json={}, headers={"X-Access-Token": pushed}))
    assert isinstance(op, Push) and op.access_token == pushed and op.stamped == tokens
    with pytest.raises(StopIteration):
        flow.send(None)


def test_a_streamed_body_is_not_resent_after_token_expired():
    tokens, fresh = pair(), pair(name="2")
    request = httpx.Request("POST", URL, content=iter([b"chunk"]))
    assert not make_replayable(request)
    flow = auth().flow(request)
    next(flow)
    flow.send(tokens)
    expired = problem(401, "token_expired")
    assert isinstance(flow.send(expired), Renew)  # renewed, so that a resend can work
    with pytest.raises(AuthError) as raised:
        flow.send(fresh)
    assert type(raised.value) is AuthError
    assert raised.value.response is expired and raised.value.code == "token_expired"
    assert "cannot be sent twice" in str(raised.value)


def test_a_streamed_body_near_expiry_refreshes_before_it_is_sent():
    request = httpx.Request("POST", URL, content=iter([b"chunk"]))
    flow = auth().flow(request)
    next(flow)
    assert isinstance(flow.send(pair(exp=NOW + 1, iat=NOW - 299)), Renew)


def test_replayable_bodies(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"data")
    assert make_replayable(httpx.Request("POST", URL, json={"a": 1}))
    assert make_replayable(httpx.Request("POST", URL, data={"a": "1"}))
    assert make_replayable(httpx.Request("POST", URL, content=b"raw"))
    with path.open("rb") as f:
        assert make_replayable(httpx.Request("POST", URL, files={"f": f}))
    assert not make_replayable(httpx.Request("POST", URL, content=iter([b"x"])))


# -- the token flows ---------------------------------------------------------------
def run(flow: Any, *replies: Any) -> tuple[list[Any], Any]:
    """Drive ``flow`` with ``replies`` (an exception is thrown in); return ops and result."""
    ops = [next(flow)]
    try:
        for reply in replies:
            if isinstance(reply, BaseException):
                ops.append(flow.throw(reply))
            else:
                ops.append(flow.send(reply))
    except StopIteration as stop:
        return ops, stop.value
    raise AssertionError(f"the flow wants more: {ops[-1]!r}")


def test_refresh_success():
    old, fresh = pair(), pair(name="2")
    ops, outcome = run(
        obtain(old, relogin=False, reason=None, can_login=False),
        httpx.Response(200, json=pair_json(fresh)),
    )
    assert ops[0] == Call("POST", "/auth/refresh", {"refresh_token": old.refresh_token})
    assert outcome.tokens == fresh and outcome.error is None and outcome.change == fresh
    assert outcome.notes == (("refreshed", fresh),)


def test_refresh_401_clears_the_tokens_and_requires_a_login():
    _ops, outcome = run(
        obtain(pair(), relogin=False, reason=None, can_login=False),
        problem(401, "refresh_reused"),
    )
    assert isinstance(outcome.error, LoginRequired) and outcome.error.code == "refresh_reused"
    assert outcome.change is None
    assert [name for name, _ in outcome.notes] == ["refresh_failed", "login_required"]


def test_refresh_401_with_credentials_logs_in_again():
    fresh = pair(name="2")
    ops, outcome = run(
        obtain(pair(), relogin=False, reason=None, can_login=True),
        problem(401, "session_expired"),
        ("alice", "pw"),
        None,  # no device token kept
        httpx.Response(200, json=pair_json(fresh)),
    )
    assert isinstance(ops[1], AskCredentials)
    assert ops[2] == DeviceToken("alice")
    assert ops[3] == Call("POST", "/auth/login", {"username": "alice", "password": "pw"})
    assert outcome.tokens == fresh
    assert [name for name, _ in outcome.notes] == ["refresh_failed", "refreshed"]


def test_relogin_skips_the_refresh():
    fresh = pair(name="2")
    ops, outcome = run(
        obtain(pair(), relogin=True, reason="token_revoked", can_login=True),
        ("alice", "pw"),
        None,
        httpx.Response(200, json=pair_json(fresh)),
    )
    assert isinstance(ops[0], AskCredentials) and outcome.tokens == fresh


def test_relogin_refused_is_invalid_credentials():
    _ops, outcome = run(
        obtain(None, relogin=True, reason="missing_token", can_login=True),
        ("alice", "wrong"),
        None,
        problem(401, "invalid_credentials"),
    )
    assert isinstance(outcome.error, InvalidCredentials) and outcome.change is None
    assert [name for name, _ in outcome.notes] == ["login_required"]


def test_a_failing_credentials_callable_is_an_auth_error():
    _ops, outcome = run(
        obtain(None, relogin=True, reason="missing_token", can_login=True),
        RuntimeError("keyring locked"),
    )
    assert type(outcome.error) is AuthError
    assert isinstance(outcome.error.__cause__, RuntimeError)


@pytest.mark.parametrize(
    "reply",
    [
        httpx.ConnectError("connection refused"),
        problem(503, "auth_unavailable", **{"Retry-After": "1"}),
        httpx.Response(500, text="oops"),
        httpx.Response(200, text="not json"),
    ],
)
def test_network_errors_and_5xx_keep_the_tokens(reply):
    _ops, outcome = run(obtain(pair(), relogin=False, reason=None, can_login=True), reply)
    assert type(outcome.error) is AuthError
    assert outcome.change is KEEP
    assert [name for name, _ in outcome.notes] == ["refresh_failed"]
    if isinstance(reply, httpx.Response) and reply.status_code == 503:
        assert outcome.error.code == "auth_unavailable" and outcome.error.response is reply


def test_login_errors_are_typed():
    flow = login_flow("alice", "pw", device="laptop")
    assert next(flow) == DeviceToken("alice")
    assert flow.send(None) == Call(
        "POST", "/auth/login", {"username": "alice", "password": "pw", "device": "laptop"}
    )
    with pytest.raises(RateLimited) as limited:
        flow.send(problem(429, "too_many_attempts", **{"Retry-After": "7"}))
    assert limited.value.retry_after == 7 and limited.value.code == "too_many_attempts"

    flow = login_flow("alice", "pw")
    next(flow)
    flow.send(None)
    with pytest.raises(InvalidCredentials) as refused:
        flow.send(problem(401, "invalid_credentials"))
    assert isinstance(refused.value, LoginRequired)

    flow = login_flow("alice", "pw")
    next(flow)
    flow.send(None)
    with pytest.raises(AuthError) as unreachable:
        flow.throw(httpx.ConnectError("refused"))
    assert isinstance(unreachable.value.__cause__, httpx.ConnectError)


def test_login_sends_the_kept_device_token_and_keeps_the_new_one():
    fresh = pair(name="2")
    ops, tokens = run(
        login_flow("alice", "pw"),
        "device-token-1",
        httpx.Response(200, json={**pair_json(fresh), "device_token": "device-token-2"}),
        None,
    )
    assert ops[0] == DeviceToken("alice")
    assert ops[1] == Call(
        "POST", "/auth/login",
        {"username": "alice", "password": "pw", "device_token": "device-token-1"},
    )  # fmt: skip
    assert ops[2] == DeviceToken("alice", "device-token-2") and tokens == fresh
    assert "device-token-2" not in repr(ops[2])
    # The same token back (renewed service-side or not): nothing new to keep.
    _ops, tokens = run(
        login_flow("alice", "pw"),
        "device-token-2",
        httpx.Response(200, json={**pair_json(fresh), "device_token": "device-token-2"}),
    )
    assert tokens == fresh


def test_passwords_and_tokens_stay_out_of_reprs():
    tokens = pair()
    call = Call("POST", "/auth/login", {"username": "alice", "password": "s3cret"})
    assert "s3cret" not in repr(call)
    assert tokens.access_token not in repr(tokens) and tokens.refresh_token not in repr(tokens)
    assert tokens.access_token not in repr(Push(tokens, tokens.access_token))


def test_fresh_login_required_raises_its_own_error_and_keeps_the_tokens():
    tokens = pair()
    flow = auth().flow(httpx.Request("DELETE", "http://api.test/account"))
    next(flow)
    flow.send(tokens)
    with pytest.raises(FreshLoginRequired) as info:
        flow.send(problem(401, "fresh_login_required"))
    assert isinstance(info.value, LoginRequired)
    assert info.value.code == "fresh_login_required"
    assert "DELETE /account" in str(info.value) and tokens.access_token not in str(info.value)


def test_fresh_login_required_with_credentials_logs_in_again_and_retries():
    tokens, fresh = pair(), pair(name="2")
    flow = auth(credentials=lambda: ("alice", "pw")).flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(tokens)
    op = flow.send(problem(401, "fresh_login_required"))
    assert isinstance(op, Renew) and op.relogin and op.reason == "fresh_login_required"
    assert sent_token(flow.send(fresh)) == fresh.access_token
