"""The client's DPoP in its pure flows, driven by hand: which request carries a proof, for
which token, and the one resend a ``use_dpop_nonce`` answer gets. No server, no key."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from quart_tokengate.client import AuthError, MemoryTokenStore, TokenAuth
from quart_tokengate.client._device import DeviceCode, poll_flow
from quart_tokengate.client._flow import (
    Call,
    DeviceToken,
    Load,
    Push,
    Renew,
    Send,
    Sleep,
    login_flow,
    obtain,
    request_flow,
    send_call,
)
from quart_tokengate.client._grants import ClientCredentials, fetch_flow
from quart_tokengate.client._tokens import Tokens

from .test_client_flow import NOW, URL, jwt, pair, pair_json, problem


def bound(name: str = "1", exp: float = NOW + 300) -> Tokens:
    return Tokens(jwt(exp, NOW, jti=name), f"refresh-{name}", session_id="s1", token_type="DPoP")


def auth(**kwargs: Any) -> TokenAuth:
    kwargs.setdefault("clock", lambda: NOW)
    return TokenAuth(**kwargs)


def requesting(request: httpx.Request) -> Any:
    """The request flow itself, which returns the last response (``TokenAuth.flow`` does not)."""
    return request_flow(request, expiring=lambda _: False, can_login=False)


def nonce_please(status: int = 401) -> httpx.Response:
    return problem(status, "use_dpop_nonce", **{"DPoP-Nonce": "n-1"})


def sent(op: Any) -> tuple[str, str | None]:
    """What a ``Send`` presents: its Authorization header and the token a proof is asked for."""
    assert isinstance(op, Send), op
    return op.request.headers["Authorization"], op.proof_token


# -- requests -----------------------------------------------------------------------
def test_bearer_tokens_are_sent_as_today_with_no_proof():
    tokens = pair()
    flow = auth().flow(httpx.Request("GET", URL))
    next(flow)
    op = flow.send(tokens)
    assert sent(op) == (f"Bearer {tokens.access_token}", None)
    assert "DPoP" not in op.request.headers


def test_a_bound_token_goes_with_the_dpop_scheme_and_asks_for_a_proof_for_it():
    tokens = bound()
    flow = auth().flow(httpx.Request("GET", URL))
    next(flow)
    assert sent(flow.send(tokens)) == (f"DPoP {tokens.access_token}", tokens.access_token)
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(200, json={}))


def test_every_resend_asks_for_a_fresh_proof_for_the_token_it_carries():
    old, fresh = bound("1"), bound("2")
    flow = auth().flow(httpx.Request("GET", URL))
    next(flow)
    assert sent(flow.send(old))[1] == old.access_token
    op = flow.send(problem(401, "token_expired"))
    assert isinstance(op, Renew) and op.stale == old
    assert sent(flow.send(fresh)) == (f"DPoP {fresh.access_token}", fresh.access_token)


def test_use_dpop_nonce_is_resent_once_with_the_same_token():
    tokens = bound()
    flow = requesting(httpx.Request("POST", URL, json={"a": 1}))
    next(flow)
    first = flow.send(tokens)
    assert sent(first)[1] == tokens.access_token
    again = flow.send(nonce_please())
    # The same token, and a new proof asked for (the edge puts the nonce in it).
    assert sent(again) == (f"DPoP {tokens.access_token}", tokens.access_token)
    assert again.request.content == b'{"a":1}'
    with pytest.raises(StopIteration) as stop:
        flow.send(httpx.Response(200, json={"ok": True}))
    assert stop.value.value.status_code == 200


def test_use_dpop_nonce_twice_is_the_callers_answer():
    flow = requesting(httpx.Request("GET", URL))
    next(flow)
    flow.send(bound())
    flow.send(nonce_please())
    second = nonce_please()
    with pytest.raises(StopIteration) as stop:
        flow.send(second)
    assert stop.value.value is second


def test_use_dpop_nonce_after_a_refresh_is_not_resent_again():
    # One resend for the nonce per request, whatever came between.
    flow = requesting(httpx.Request("GET", URL))
    next(flow)
    flow.send(bound("1"))
    flow.send(nonce_please())
    assert isinstance(flow.send(problem(401, "token_expired")), Renew)
    flow.send(bound("2"))
    last = nonce_please()
    with pytest.raises(StopIteration) as stop:
        flow.send(last)
    assert stop.value.value is last


def test_use_dpop_nonce_for_a_bearer_token_is_not_resent():
    flow = requesting(httpx.Request("GET", URL))
    next(flow)
    flow.send(pair())
    answer = nonce_please()
    with pytest.raises(StopIteration) as stop:
        flow.send(answer)
    assert stop.value.value is answer


def test_a_streamed_body_is_not_resent_for_a_nonce():
    def body():
        yield b"x"

    flow = auth().flow(httpx.Request("POST", URL, content=body()))
    next(flow)
    flow.send(bound())
    with pytest.raises(AuthError, match="use_dpop_nonce"):
        flow.send(nonce_please())


def test_a_pushed_access_token_stays_bound():
    tokens, pushed = bound("1"), jwt(NOW + 600, NOW + 1, jti="pushed")
    store = MemoryTokenStore(tokens)
    token_auth = auth(token_store=store)
    flow = token_auth.flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(tokens)
    op = flow.send(httpx.Response(200, json={}, headers={"X-Access-Token": pushed}))
    assert isinstance(op, Push)
    token_auth._push(op)
    stored = store.load()
    assert stored is not None and stored.access_token == pushed and stored.bound


def test_a_proof_left_from_a_bound_send_is_dropped_for_a_bearer_one():
    request = httpx.Request("GET", URL, headers={"DPoP": "old-proof"})
    flow = auth().flow(request)
    next(flow)
    op = flow.send(pair())
    assert "DPoP" not in op.request.headers


# -- token requests -------------------------------------------------------------------
def refresh_call(flow: Any, first: Any = None) -> Call:
    op = next(flow) if first is None else flow.send(first)
    assert isinstance(op, Call) and op.path == "/auth/refresh", op
    return op


@pytest.mark.parametrize(
    ("tokens", "dpop", "proof"),
    [(pair(), False, False), (pair(), True, True), (bound(), False, True), (bound(), True, True)],
    ids=["bearer", "bearer-asking-dpop", "bound", "bound-asking-dpop"],
)
def test_a_refresh_carries_a_proof_when_asked_or_when_the_session_is_bound(tokens, dpop, proof):
    flow = obtain(tokens, relogin=False, reason=None, can_login=False, dpop=dpop)
    assert refresh_call(flow).dpop is proof


def test_a_refresh_refused_for_a_nonce_is_sent_once_more_then_lands():
    fresh = bound("2")
    flow = obtain(bound(), relogin=False, reason=None, can_login=False, dpop=True)
    first = refresh_call(flow)
    again = refresh_call(flow, nonce_please(400))
    assert again == first and again.dpop
    with pytest.raises(StopIteration) as stop:
        flow.send(httpx.Response(200, json=pair_json(fresh)))
    assert stop.value.value.tokens == fresh and stop.value.value.tokens.bound


def test_a_refresh_refused_for_a_nonce_twice_fails_and_keeps_the_tokens():
    flow = obtain(bound(), relogin=False, reason=None, can_login=False, dpop=True)
    refresh_call(flow)
    refresh_call(flow, nonce_please(400))
    with pytest.raises(StopIteration) as stop:
        flow.send(nonce_please(400))
    outcome = stop.value.value
    assert outcome.error is not None and outcome.error.code == "use_dpop_nonce"
    assert not outcome.dead and outcome.tokens is None


def test_a_bearer_call_refused_for_a_nonce_is_not_resent():
    flow = send_call(Call("POST", "/auth/refresh", {}))
    next(flow)
    answer = nonce_please(400)
    with pytest.raises(StopIteration) as stop:
        flow.send(answer)
    assert stop.value.value is answer


def test_a_login_with_dpop_carries_a_proof_and_one_resend_for_a_nonce():
    fresh = bound("2")
    flow = login_flow("alice", "pw", dpop=True)
    assert isinstance(next(flow), DeviceToken)
    first = flow.send(None)
    assert isinstance(first, Call) and first.path == "/auth/login" and first.dpop
    assert flow.send(nonce_please(400)) == first
    with pytest.raises(StopIteration) as stop:
        flow.send(httpx.Response(200, json=pair_json(fresh)))
    assert stop.value.value.bound


def test_a_login_refused_for_want_of_a_proof_says_to_turn_dpop_on():
    flow = login_flow("alice", "pw")
    next(flow)
    flow.send(None)
    with pytest.raises(AuthError, match="dpop=True") as refused:
        flow.send(problem(400, "invalid_dpop_proof"))
    assert refused.value.code == "invalid_dpop_proof"


def test_a_login_again_through_credentials_keeps_asking_for_bound_tokens():
    flow = obtain(bound(), relogin=True, reason="session_expired", can_login=True)
    next(flow)  # AskCredentials
    assert isinstance(flow.send(("alice", "pw")), DeviceToken)
    login = flow.send(None)
    assert isinstance(login, Call) and login.path == "/auth/login" and login.dpop


def test_a_client_credentials_fetch_with_dpop_carries_a_proof_and_reads_the_token_type():
    grant = ClientCredentials("svc", "secret")
    flow = fetch_flow(grant, "http://api.test/oauth/token", lambda: NOW, dpop=True)
    call = next(flow)
    assert isinstance(call, Call) and call.dpop and call.form
    assert flow.send(nonce_please(400)) == call
    access = jwt(NOW + 300, NOW, jti="svc")
    body = {"access_token": access, "token_type": "DPoP", "expires_in": 300}
    with pytest.raises(StopIteration) as stop:
        flow.send(httpx.Response(200, json=body))
    assert stop.value.value.tokens.bound


def test_a_client_credentials_fetch_without_dpop_is_bearer():
    grant = ClientCredentials("svc", "secret")
    flow = fetch_flow(grant, "http://api.test/oauth/token", lambda: NOW)
    assert not next(flow).dpop
    body = {"access_token": jwt(NOW + 300, NOW), "token_type": "Bearer", "expires_in": 300}
    with pytest.raises(StopIteration) as stop:
        flow.send(httpx.Response(200, json=body))
    assert not stop.value.value.tokens.bound


def test_every_device_poll_carries_a_proof_and_a_nonce_refusal_keeps_polling():
    code = DeviceCode("dc", "ABCD-EFGH", "http://api.test/device", "http://api.test/d", 60, 5)
    flow = poll_flow(code, client_id="cli", dpop=True)
    assert isinstance(next(flow), Sleep)
    first = flow.send(None)
    assert isinstance(first, Call) and first.dpop
    assert flow.send(nonce_please(400)) == first  # the one resend
    assert isinstance(flow.send(nonce_please(400)), Sleep)  # the nonce changed: poll again
    assert flow.send(None) == first
    with pytest.raises(StopIteration) as stop:
        flow.send(httpx.Response(200, json=pair_json(bound("9"))))
    assert stop.value.value.bound


# -- the tokens ------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "is_bound"), [("DPoP", True), ("dpop", True), ("Bearer", False)])
def test_the_token_type_says_whether_a_pair_is_bound(kind, is_bound):
    tokens = Tokens.from_json({"access_token": "a", "refresh_token": "r", "token_type": kind})
    assert tokens.bound is is_bound
    assert Tokens.from_json(tokens.to_json()).bound is is_bound


def test_not_logged_in_sends_no_proof():
    flow = auth(dpop=True).flow(httpx.Request("GET", URL))
    assert isinstance(next(flow), Load)
    op = flow.send(None)
    assert isinstance(op, Send) and op.proof_token is None
    assert "Authorization" not in op.request.headers
