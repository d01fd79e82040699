"""The two edges that run the pure flows: one blocking, one async.

Only the edges do I/O: they send requests (through httpx, or through the
client a ``TokenAuth`` is bound to), wait for a flight, sleep, and call the
user's callbacks. Everything they decide comes from the flows. Just before a
request goes out they add the DPoP proof the flow asked for (made from the
key the store keeps, the clock and the origin's latest nonce), and they note
the ``DPoP-Nonce`` of every response that comes back.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx

from ._flow import (
    AskCredentials,
    Call,
    DeviceToken,
    Hook,
    Load,
    Op,
    Push,
    Renew,
    Send,
    Sleep,
    Wait,
    endpoint,
    origin_of,
)

if TYPE_CHECKING:
    from ._auth import TokenAuth

T = TypeVar("T")
SyncCall = Callable[[Call, httpx.URL], httpx.Response]
AsyncCall = Callable[[Call, httpx.URL], Awaitable[httpx.Response]]
# Adds the DPoP proof a Call asks for to the request built for it.
SignCall = Callable[[Call, httpx.Request], None]


class Step:
    """Drives a flow: sends the last result in, or throws the last error in."""

    __slots__ = ("error", "result", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.error: Exception | None = None
        self.result: Any = None

    def next(self, flow: Generator[Op, Any, Any]) -> Op | None:
        error, self.error = self.error, None
        try:
            return flow.throw(error) if error is not None else flow.send(self.value)
        except StopIteration as stop:
            self.result = stop.value
            return None


async def _awaited(value: Awaitable[T]) -> T:
    return await value


def resolve_sync(value: Any) -> Any:
    # An async callable given to the blocking client runs on a loop of its own.
    return asyncio.run(_awaited(value)) if inspect.isawaitable(value) else value


async def resolve_async(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _call_url(client: httpx.Client | httpx.AsyncClient, call: Call, origin: httpx.URL) -> Any:
    # Relative to base_url when the client has one, like any request it sends.
    return call.path if str(client.base_url) else endpoint(origin, call.path)


def _body(call: Call) -> dict[str, Any]:
    return {"data": call.body} if call.form else {"json": call.body}


def client_call(client: httpx.Client, sign: SignCall) -> SyncCall:
    """Send ``/auth`` calls through ``client``: its transport, timeouts and hooks apply."""

    def call(op: Call, origin: httpx.URL) -> httpx.Response:
        request = client.build_request(
            op.method, _call_url(client, op, origin), headers=op.headers, **_body(op)
        )
        sign(op, request)
        try:
            return client.send(request, auth=None)
        except httpx.HTTPStatusError as exc:  # an event hook called raise_for_status()
            return exc.response

    return call


def async_client_call(client: httpx.AsyncClient, sign: SignCall) -> AsyncCall:
    """Send ``/auth`` calls through ``client``: its transport, timeouts and hooks apply."""

    async def call(op: Call, origin: httpx.URL) -> httpx.Response:
        request = client.build_request(
            op.method, _call_url(client, op, origin), headers=op.headers, **_body(op)
        )
        sign(op, request)
        try:
            return await client.send(request, auth=None)
        except httpx.HTTPStatusError as exc:  # an event hook called raise_for_status()
            return exc.response

    return call


class SyncEdge:
    """Runs a ``TokenAuth``'s flows with blocking I/O."""

    def __init__(self, auth: TokenAuth) -> None:
        self.auth = auth
        # How /auth requests are sent; ``TokenAuth.bind`` puts a client's here.
        self.call: SyncCall = self._own_call

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self.auth.flow(request)
        origin = origin_of(request.url)
        step = Step()
        try:
            while (op := step.next(flow)) is not None:
                if isinstance(op, Send):
                    try:
                        self.auth._sign(op)
                    except Exception as exc:
                        step.error = exc
                        continue
                    response = yield op.request
                    if response.status_code in (401, 429):
                        response.read()
                    self.auth._saw(response)
                    step.value = response
                    continue
                try:
                    step.value = self.do(op, origin)
                except Exception as exc:
                    step.error = exc
        finally:
            flow.close()

    def run(self, flow: Generator[Op, Any, T], origin: httpx.URL) -> T:
        """Run a flow that sends nothing through httpx (a token flow, a renewal)."""
        step = Step()
        try:
            while (op := step.next(flow)) is not None:
                try:
                    step.value = self.do(op, origin)
                except Exception as exc:
                    step.error = exc
            return cast(T, step.result)
        finally:
            flow.close()

    def do(self, op: Op, origin: httpx.URL) -> Any:
        auth = self.auth
        if isinstance(op, Load):
            return auth.token_store.load()
        if isinstance(op, Renew):
            return self.run(auth.renewal(op), op.origin)
        if isinstance(op, Push):
            return auth._push(op)
        if isinstance(op, Call):
            response = self.call(op, origin)
            auth._saw(response)
            return response
        if isinstance(op, AskCredentials):
            assert auth.credentials is not None
            return resolve_sync(auth.credentials())
        if isinstance(op, DeviceToken):
            if op.token is None:
                return auth.token_store.device_token(op.username)
            auth.token_store.keep_device_token(op.username, op.token)
            return None
        if isinstance(op, Wait):
            return op.flight.wait()
        if isinstance(op, Sleep):
            time.sleep(op.seconds)
            return None
        if isinstance(op, Hook):
            hook = auth.hook(op.name)
            if hook is not None:
                try:
                    resolve_sync(hook(op.value))
                except Exception:
                    auth.hook_failed(op.name)
            return None
        raise TypeError(f"unknown operation {op!r}")

    def _own_call(self, call: Call, origin: httpx.URL) -> httpx.Response:
        with httpx.Client() as http:
            url = endpoint(self.auth.base_url or origin, call.path)
            request = http.build_request(call.method, url, headers=call.headers, **_body(call))
            self.auth._sign_call(call, request)
            return http.send(request)


class AsyncEdge:
    """Runs a ``TokenAuth``'s flows with async I/O."""

    def __init__(self, auth: TokenAuth, sync: SyncEdge) -> None:
        self.auth = auth
        self.sync = sync
        # How /auth requests are sent; ``TokenAuth.bind`` puts a client's here.
        self.call: AsyncCall = self._own_call

    async def auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self.auth.flow(request)
        origin = origin_of(request.url)
        step = Step()
        try:
            while (op := step.next(flow)) is not None:
                if isinstance(op, Send):
                    try:
                        self.auth._sign(op)
                    except Exception as exc:
                        step.error = exc
                        continue
                    response = yield op.request
                    if response.status_code in (401, 429):
                        await response.aread()
                    self.auth._saw(response)
                    step.value = response
                    continue
                try:
                    step.value = await self.do(op, origin)
                except Exception as exc:
                    step.error = exc
        finally:
            flow.close()

    async def run(self, flow: Generator[Op, Any, T], origin: httpx.URL) -> T:
        """Run a flow that sends nothing through httpx (a token flow, a renewal)."""
        step = Step()
        try:
            while (op := step.next(flow)) is not None:
                try:
                    step.value = await self.do(op, origin)
                except Exception as exc:
                    step.error = exc
            return cast(T, step.result)
        finally:
            flow.close()

    async def do(self, op: Op, origin: httpx.URL) -> Any:
        # Load, Push and the store calls inside a renewal touch a file at most
        # (a stat; one locked read-modify-write of a small file), never the
        # network, so they run inline: in a thread, a cancelled caller could
        # leave a refresh lease behind.
        auth = self.auth
        if isinstance(op, Renew):
            return await self.run(auth.renewal(op), op.origin)
        if isinstance(op, Call):
            response = await self.call(op, origin)
            auth._saw(response)
            return response
        if isinstance(op, AskCredentials):
            assert auth.credentials is not None
            return await resolve_async(auth.credentials())
        if isinstance(op, Wait):
            return await op.flight.wait_async()
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            return None
        if isinstance(op, Hook):
            hook = auth.hook(op.name)
            if hook is not None:
                try:
                    await resolve_async(hook(op.value))
                except Exception:
                    auth.hook_failed(op.name)
            return None
        assert isinstance(op, Load | Push | DeviceToken)
        return self.sync.do(op, origin)

    async def _own_call(self, call: Call, origin: httpx.URL) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            url = endpoint(self.auth.base_url or origin, call.path)
            request = http.build_request(call.method, url, headers=call.headers, **_body(call))
            self.auth._sign_call(call, request)
            return await http.send(request)
