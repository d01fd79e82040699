"""Tokens that expire while their requests wait for a pooled connection.

httpx stamps a request with its token before the request waits for a
connection, so under load a token fresh when stamped can be past its ``exp``
when it is sent. The client must never hand such a ``401 token_expired`` to
its caller: it sends again with newer tokens, refreshing once per expiry.

The app is served over real HTTP by the test kit (real Redis, real SQLite) on
the kit's clock, and its one route moves that clock on by ``STEP`` each time it
answers: a burst of requests through a pool of four connections spans several
token lifetimes without any sleep, however fast or slow the machine.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from quart import Quart

from quart_tokengate.client import AsyncAuthClient, AuthClient, MemoryTokenStore
from quart_tokengate.client.pytest_plugin import TokengateClock
from quart_tokengate.service import Settings, create_app, login_required

ACCESS_TTL = 10
STEP = 0.1  # clock seconds per answered request
LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)


@pytest.fixture
def tokengate_app(tokengate_clock: TokengateClock) -> Quart:
    app = create_app(Settings(secret_key="k" * 40, access_ttl=ACCESS_TTL))

    @app.get("/work")
    @login_required
    async def work() -> dict[str, bool]:
        tokengate_clock.advance(STEP)  # the time this request took
        return {"done": True}

    return app


@dataclass
class Seen:
    """What went over the wire: refresh tokens presented, and the service's 401 codes."""

    presented: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)

    def request(self, request: httpx.Request) -> None:
        if request.url.path == "/auth/refresh":
            self.presented.append(json.loads(request.content)["refresh_token"])

    def response(self, response: httpx.Response) -> None:
        path = response.request.url.path
        if response.status_code == 401:
            self.refused[response.json()["error"]] += 1
        elif path in ("/auth/login", "/auth/refresh") and response.status_code == 200:
            self.issued.append(response.json()["refresh_token"])

    def check(self, answers: Counter[int], total: int, clock: TokengateClock) -> None:
        # The scenario happened: tokens expired while their requests waited.
        assert self.refused["token_expired"] > 0, self.refused
        # None of it reached the caller.
        assert answers == Counter({200: total}), answers
        # One refresh per expiry: each refresh presented the newest refresh token
        # (the one the previous login or refresh handed out), none twice.
        assert self.presented == self.issued[:-1]
        assert len(set(self.presented)) == len(self.presented)
        assert len(self.presented) >= 2
        # ...and no refresh before its token was (within a second of) expiring.
        assert len(self.presented) <= clock.advanced / (ACCESS_TTL - 1) + 1


async def test_async_requests_queued_past_their_tokens_expiry_are_resent_not_refused(
    tokengate_server, tokengate_user, tokengate_clock
):
    user, seen = tokengate_user(), Seen()

    async def on_request(request: httpx.Request) -> None:
        seen.request(request)

    async def on_response(response: httpx.Response) -> None:
        await response.aread()
        seen.response(response)

    async with AsyncAuthClient(
        base_url=tokengate_server.base_url,
        clock=tokengate_clock,
        token_store=MemoryTokenStore(),
        refresh_margin=0,
        limits=LIMITS,
        timeout=120,
        event_hooks={"request": [on_request], "response": [on_response]},
    ) as api:
        await api.login(user.username, user.password)
        answers = await asyncio.gather(*(api.get("/work") for _ in range(300)))
    seen.check(Counter(r.status_code for r in answers), 300, tokengate_clock)


def test_sync_requests_queued_past_their_tokens_expiry_are_resent_not_refused(
    tokengate_server, tokengate_user, tokengate_clock
):
    user, seen = tokengate_user(), Seen()

    def on_response(response: httpx.Response) -> None:
        response.read()
        seen.response(response)

    with AuthClient(
        base_url=tokengate_server.base_url,
        clock=tokengate_clock,
        token_store=MemoryTokenStore(),
        refresh_margin=0,
        limits=LIMITS,
        # A read that waits 10 s is one of httpcore's lost requests (below): the
        # service answers these in milliseconds.
        timeout=httpx.Timeout(120, read=10),
        event_hooks={"request": [seen.request], "response": [on_response]},
    ) as api:
        api.login(user.username, user.password)
        lost: list[str] = []

        def get() -> httpx.Response:
            # httpcore's blocking pool, shared by many threads, now and then closes a
            # connection under a request it has just handed it to (encode/httpcore#1110):
            # a ReadError, or, where the closed socket's poll() is never woken, a read
            # that waits for its timeout; never an answer of the service (seen: every
            # pooled connection idle, no request pending in the service). Such a
            # request is sent again. The faster the service answers (near checks),
            # the more often the pool meets that race on a loaded machine.
            for _ in range(3):
                try:
                    return api.get("/work")
                except (httpx.ReadError, httpx.ReadTimeout) as exc:
                    lost.append(repr(exc))
            raise AssertionError(f"three lost requests in a row: {lost}")

        with ThreadPoolExecutor(max_workers=48) as threads:
            answers = list(threads.map(lambda _: get(), range(300)))
    assert len(lost) < 15, lost
    seen.check(Counter(r.status_code for r in answers), 300, tokengate_clock)
