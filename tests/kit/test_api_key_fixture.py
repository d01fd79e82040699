"""The ``tokengate_api_key`` fixture, used as a user's suite would use it (real HTTP)."""

from __future__ import annotations

import httpx
import pytest

from quart_tokengate.client import AsyncAuthClient, LoginRequired


def me(base_url: str, key: str) -> int | str:
    with httpx.Client(base_url=base_url) as http:
        r = http.get("/auth/me", headers={"Authorization": f"Bearer {key}"})
    return r.status_code if r.status_code == 200 else str(r.json()["error"])


@pytest.mark.parametrize(
    ("state", "answer"),
    [("live", 200), ("expired", "token_expired"), ("revoked", "token_revoked")],
)
def test_key_states(tokengate_server, tokengate_user, tokengate_api_key, state, answer):
    key = tokengate_api_key(tokengate_user(), state=state)
    assert key.startswith("tgk_") and len(key) == 42
    assert me(tokengate_server.base_url, key) == answer


async def test_the_kit_clock_moves_a_keys_expiry(
    tokengate_server, tokengate_user, tokengate_api_key, tokengate_clock
):
    key = tokengate_api_key(tokengate_user(scopes=["reports"]), scopes=["reports"])
    async with AsyncAuthClient(base_url=tokengate_server.base_url, api_key=key) as api:
        assert (await api.get("/auth/me")).status_code == 200
        tokengate_clock.advance(7_776_000)  # TOKENGATE_API_KEY_TTL, the default lifetime
        with pytest.raises(LoginRequired) as refused:
            await api.get("/auth/me")
    assert refused.value.code == "token_expired"


def test_a_scope_the_user_lacks_fails_the_test_naming_it(tokengate_user, tokengate_api_key):
    with pytest.raises(pytest.fail.Exception, match="insufficient_scope"):
        tokengate_api_key(tokengate_user(), scopes=["admin"])
    with pytest.raises(ValueError, match="state must be one of"):
        tokengate_api_key(tokengate_user(), state="idle")
