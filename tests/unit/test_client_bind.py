"""``TokenAuth.bind`` on plain httpx clients, and bodies resent after a refresh."""

from __future__ import annotations

import httpx

from quart_tokengate.client import MemoryTokenStore, TokenAuth

from .test_client_edges import BASE, FakeService


def test_a_bound_sync_client_carries_the_refresh_and_names_the_service():
    service = FakeService()
    seen: list[tuple[str, str | None]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("Authorization")))
        return service.handle_sync(request)

    auth = TokenAuth(token_store=MemoryTokenStore(service.tokens(1)))
    with httpx.Client(base_url=BASE, auth=auth, transport=httpx.MockTransport(handle)) as http:
        auth.bind(http)
        assert http.get("/data").status_code == 200
        assert http.get("http://elsewhere.test/x").status_code == 401
    # The refresh went through the bound client's transport (an unbound auth
    # would have opened its own connection to api.test and failed).
    assert service.refreshes == 1
    assert (f"{BASE}/auth/refresh", None) in seen
    # The bound client's base_url names the service: another host gets no token.
    assert seen[-1] == ("http://elsewhere.test/x", None)


async def test_a_bound_async_client_carries_the_refresh_and_login():
    service = FakeService()
    auth = TokenAuth(token_store=MemoryTokenStore(service.tokens(1)))
    transport = httpx.MockTransport(service.handle_async)
    async with httpx.AsyncClient(base_url=BASE, auth=auth, transport=transport) as http:
        auth.bind(http)
        assert (await http.get("/data")).status_code == 200
        assert service.refreshes == 1
        tokens = await auth.async_login("alice", "correct horse")
    assert service.logins == 1
    assert auth.tokens == tokens == service.tokens(service.generation)


def test_a_multipart_upload_is_resent_whole_after_token_expired(tmp_path):
    service = FakeService(expired_first=True)
    bodies: list[bytes] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/upload":
            bodies.append(request.read())
            request = httpx.Request("GET", f"{BASE}/data", headers=request.headers)
        return service.handle_sync(request)

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100_000)
    # The first token looks fresh to the client but the service says it expired.
    auth = TokenAuth(token_store=MemoryTokenStore(service.tokens(1)))
    transport = httpx.MockTransport(handle)
    with httpx.Client(base_url=BASE, auth=auth, transport=transport) as http, path.open("rb") as f:
        auth.bind(http)
        assert http.post("/upload", files={"f": f}).status_code == 200
    assert service.refreshes == 1
    assert len(bodies) == 2 and bodies[0] == bodies[1] and b"x" * 100_000 in bodies[0]
