"""A fresh-only route over real HTTP, with the real client: past the fresh-login window
the client raises ``FreshLoginRequired`` and keeps its session; a new password login,
by hand or through ``credentials``, lets the same request through."""

from __future__ import annotations

import pytest
from quart import Quart

from quart_tokengate.client import AsyncAuthClient, FreshLoginRequired, MemoryTokenStore
from quart_tokengate.service import Settings, create_app, current_identity, login_required

FRESH_TTL = 900


@pytest.fixture
def tokengate_app() -> Quart:
    app = create_app(Settings(secret_key="k" * 40, fresh_ttl=FRESH_TTL))

    @app.post("/account/close")
    @login_required(fresh=True)
    async def close_account() -> dict[str, str]:
        return {"closed": current_identity().username}

    return app


def client(server, **kwargs) -> AsyncAuthClient:
    return AsyncAuthClient(
        base_url=server.base_url, clock=server.clock, token_store=MemoryTokenStore(), **kwargs
    )


async def test_a_stale_login_raises_fresh_login_required_and_a_new_login_passes(
    tokengate_server, tokengate_user, tokengate_clock
):
    user = tokengate_user()
    async with client(tokengate_server) as api:
        await api.login(user.username, user.password)
        assert (await api.post("/account/close")).status_code == 200

        tokengate_clock.advance(FRESH_TTL + 1)  # past the access TTL too: a refresh first
        with pytest.raises(FreshLoginRequired):
            await api.post("/account/close")
        # The session is still good for the routes that do not need a fresh login.
        session = api.tokens.session_id
        me = await api.get("/auth/me")
        assert me.status_code == 200 and me.json()["session_id"] == session

        await api.login(user.username, user.password)
        r = await api.post("/account/close")
        assert r.status_code == 200 and r.json() == {"closed": user.username}


async def test_credentials_log_in_again_and_the_request_is_retried(
    tokengate_server, tokengate_user, tokengate_clock
):
    user = tokengate_user()
    asked: list[int] = []

    def credentials() -> tuple[str, str]:
        asked.append(1)
        return user.username, user.password

    async with client(tokengate_server, credentials=credentials) as api:
        await api.login(user.username, user.password)
        first = api.tokens.session_id
        tokengate_clock.advance(FRESH_TTL + 1)
        r = await api.post("/account/close")
        assert r.status_code == 200 and r.json() == {"closed": user.username}
        assert asked == [1]
        assert api.tokens.session_id != first
