"""The client-credentials grant's pure flow, driven by hand: no server, no transport, no clock."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from quart_tokengate.client import AuthError, InvalidClient, MemoryTokenStore, TokenAuth
from quart_tokengate.client._edges import Step
from quart_tokengate.client._flow import Call, Hook, Load, Renew, Send
from quart_tokengate.client._grants import (
    ASSERTION_TYPE,
    ClientCredentials,
    fetch_flow,
    token_request,
)
from quart_tokengate.client._tokens import KEEP, Tokens
from tests.unit.test_client_flow import NOW, problem, run, sent_token
from tests.unit.test_client_flow import jwt as fake_jwt

URL = "https://api.test/oauth/token"
SECRET = grant_secret = "tgcs_" + "s" * 43


def token_response(name: str = "1", exp: float = NOW + 300) -> httpx.Response:
    access = fake_jwt(exp, NOW, jti=name)
    body = {"access_token": access, "token_type": "Bearer", "expires_in": 300, "scope": ""}
    return httpx.Response(200, json=body)


def test_a_secret_goes_in_basic_and_never_in_the_body_or_a_repr():
    grant = ClientCredentials("tgc_id", SECRET, scope="a b")
    call = token_request(grant, URL, NOW)
    assert call.path == "/oauth/token" and call.form
    assert call.body == {"grant_type": "client_credentials", "scope": "a b"}
    scheme, _, raw = call.headers["Authorization"].partition(" ")
    assert scheme == "Basic" and base64.b64decode(raw).decode() == f"tgc_id:{SECRET}"
    assert SECRET not in repr(grant) and SECRET not in repr(call)


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ],
)
def test_a_private_key_signs_a_short_assertion_for_the_token_endpoint(key: Any, alg: str):
    grant = ClientCredentials("tgc_id", private_key=key, key_id="k1")
    one, two = token_request(grant, URL, NOW), token_request(grant, URL, NOW)
    assert "Authorization" not in one.headers
    assert one.body["client_assertion_type"] == ASSERTION_TYPE
    assertion = one.body["client_assertion"]
    assert jwt.get_unverified_header(assertion)["kid"] == "k1"
    claims = jwt.decode(
        assertion, key.public_key(), algorithms=[alg], audience=URL,
        options={"verify_exp": False, "verify_iat": False},
    )  # fmt: skip
    assert claims["iss"] == claims["sub"] == "tgc_id"
    assert claims["iat"] == int(NOW) and 0 < claims["exp"] - NOW <= 300
    # Every fetch signs a new jti: the service takes each once.
    assert (
        jwt.decode(two.body["client_assertion"], options={"verify_signature": False})["jti"]
        != claims["jti"]
    )


def test_secret_or_key_one_of_them():
    with pytest.raises(ValueError):
        ClientCredentials("tgc_id")
    with pytest.raises(ValueError):
        ClientCredentials("tgc_id", SECRET, private_key="pem")
    with pytest.raises(ValueError):
        ClientCredentials("", SECRET)


def test_a_fetch_stores_the_access_token_without_a_refresh_token():
    ops, outcome = run(
        fetch_flow(ClientCredentials("c", SECRET), URL, lambda: NOW), token_response()
    )
    assert isinstance(ops[0], Call)
    assert outcome.tokens.refresh_token == "" and outcome.tokens.received_at == NOW
    assert outcome.change == outcome.tokens
    # It survives the stores' round trip (a FileTokenStore writes it as JSON).
    assert Tokens.from_json(outcome.tokens.to_json()) == outcome.tokens


def test_invalid_client_is_its_own_error_and_clears_the_tokens():
    _ops, outcome = run(
        fetch_flow(ClientCredentials("c", SECRET), URL, lambda: NOW),
        problem(401, "invalid_client", **{"WWW-Authenticate": 'Basic realm="tokengate"'}),
    )
    assert isinstance(outcome.error, InvalidClient) and outcome.error.code == "invalid_client"
    assert outcome.change is None
    assert "c" in str(outcome.error) and SECRET not in str(outcome.error)


@pytest.mark.parametrize("reply", [httpx.ConnectError("refused"), problem(503, "auth_unavailable")])
def test_outages_keep_the_tokens(reply: Any):
    _ops, outcome = run(fetch_flow(ClientCredentials("c", SECRET), URL, lambda: NOW), reply)
    assert type(outcome.error) is AuthError and outcome.change is KEEP


def drive(auth: TokenAuth, request: httpx.Request, replies: dict[type, Any]) -> list[Any]:
    """Run the request flow and its renewals by hand, answering each operation from ``replies``."""
    seen: list[Any] = []
    flow = auth.flow(request)
    step = Step()
    stack = [flow]
    while stack:
        op = step.next(stack[-1])
        if op is None:
            stack.pop()
            step.value = step.result
            continue
        # The request is stamped in place: note the token it carries now.
        seen.append(sent_token(op) if isinstance(op, Send) else op)
        if isinstance(op, Renew):
            stack.append(auth.renewal(op))
            step.value = None
            continue
        if isinstance(op, Load):
            step.value = auth.token_store.load()
            continue
        if isinstance(op, Hook):
            step.value = None
            continue
        answer = replies[type(op)]
        step.value = answer.pop(0) if isinstance(answer, list) else answer
    return seen


def test_the_request_flow_fetches_first_then_again_after_a_revoked_token():
    auth = TokenAuth(clock=lambda: NOW, token_store=MemoryTokenStore())
    auth.grant = ClientCredentials("c", SECRET)
    request = httpx.Request("GET", "https://api.test/things")
    first, second = token_response("1"), token_response("2")
    seen = drive(
        auth,
        request,
        {
            Call: [first, second],
            Send: [problem(401, "token_revoked"), httpx.Response(200, json={})],
        },
    )
    calls = [op for op in seen if isinstance(op, Call)]
    sends = [op for op in seen if isinstance(op, str)]
    assert len(calls) == 2 and all(c.path == "/oauth/token" for c in calls)
    assert sends == [first.json()["access_token"], second.json()["access_token"]]
    assert auth.tokens is not None and auth.tokens.access_token == second.json()["access_token"]


def test_a_token_near_expiry_is_replaced_before_the_request():
    auth = TokenAuth(clock=lambda: NOW, token_store=MemoryTokenStore(), refresh_margin=30)
    auth.grant = ClientCredentials("c", SECRET)
    auth.token_store.save(Tokens(fake_jwt(NOW + 20, NOW - 280), ""))
    fresh = token_response("2")
    seen = drive(
        auth, httpx.Request("GET", "https://api.test/x"),
        {Call: [fresh], Send: [httpx.Response(200)]},
    )  # fmt: skip
    assert [op for op in seen if isinstance(op, str)] == [fresh.json()["access_token"]]
