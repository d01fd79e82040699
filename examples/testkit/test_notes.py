"""The notes API, tested with the tokengate pytest plugin's fixtures only."""

import httpx
import pytest

from quart_tokengate.client import LoginRequired


async def test_a_logged_in_user_keeps_notes(auth_client):
    r = await auth_client.post("/notes", json={"text": "buy milk"})
    assert r.status_code == 201
    r = await auth_client.get("/notes")
    assert r.json()["notes"] == ["buy milk"]


def test_the_sync_client_too(sync_auth_client):
    assert sync_auth_client.get("/notes").json()["notes"] == []


def test_without_a_token_the_api_says_so(tokengate_server):
    r = httpx.get(tokengate_server.base_url + "/notes")
    assert r.status_code == 401
    assert r.json()["error"] == "missing_token"


async def test_the_client_refreshes_an_expired_token_by_itself(auth_client, tokengate_clock):
    before = auth_client.tokens
    tokengate_clock.advance(301)  # past the 5-minute access token; no sleeping
    r = await auth_client.get("/notes")
    assert r.status_code == 200
    assert auth_client.tokens.access_token != before.access_token


async def test_an_idle_session_ends(auth_client, tokengate_clock):
    tokengate_clock.advance(31 * 60)  # past the 30-minute idle timeout
    with pytest.raises(LoginRequired):
        await auth_client.get("/notes")


@pytest.mark.parametrize(
    ("state", "error"),
    [("expired", "token_expired"), ("revoked", "token_revoked")],
)
def test_tokens_in_each_state(tokengate_server, tokengate_user, tokengate_tokens, state, error):
    pair = tokengate_tokens(tokengate_user(), state=state)
    r = httpx.get(
        tokengate_server.base_url + "/notes",
        headers={"Authorization": f"Bearer {pair.access_token}"},
    )
    assert r.status_code == 401
    assert r.json()["error"] == error
