"""The client's DPoP through its edges, over httpx.MockTransport: every proof the clients send
is checked with the service's own verifier (``service/dpop.py``). No server, no Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from quart_tokengate.client import (
    AsyncAuthClient,
    AuthClient,
    AuthError,
    FileTokenStore,
    MemoryTokenStore,
    TokenAuth,
    Tokens,
    TokenStore,
    _auth,
    _dpop,
)
from quart_tokengate.service import dpop

BASE = "http://api.test"
NONCE_TTL = 300


def token(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'typ': 'at+jwt', 'alg': 'HS256'})}.{part(claims)}.c2ln"


class DPoPService:
    """Stands in for the service's DPoP rules: binds at login and refresh, checks every proof.

    ``nonce_key`` makes it want its nonce in every proof (``use_dpop_nonce``
    with a ``DPoP-Nonce`` otherwise). ``expired`` makes the next access tokens
    expire at once, so a request refreshes.
    """

    def __init__(self, nonce_key: bytes | None = None) -> None:
        self.nonce_key = nonce_key
        self.lock = threading.Lock()
        self.jtis: set[str] = set()
        self.proofs: list[tuple[str, str, dict[str, Any]]] = []  # (method, path, claims)
        self.bound_jkt: str | None = None
        self.refresh_token = ""
        self.access_token = ""
        self.generation = 0
        self.refreshes = 0
        self.logins = 0
        self.refused: list[str] = []
        self.expired = False
        self.success_nonce: str | None = None

    def nonce(self) -> str:
        assert self.nonce_key is not None
        return dpop.make_nonce(self.nonce_key, now=time.time(), ttl=NONCE_TTL)

    def refuse(self, status: int, code: str, nonce: bool = False) -> httpx.Response:
        self.refused.append(code)
        headers = {"DPoP-Nonce": self.nonce()} if nonce else {}
        if status == 401:
            headers["WWW-Authenticate"] = f'DPoP error="{code}"'
        return httpx.Response(status, json={"error": code}, headers=headers)

    def check(self, request: httpx.Request, access_token: str | None) -> dpop.VerifiedProof:
        proof = request.headers.get("DPoP")
        verified = dpop.verify_proof(
            proof, method=request.method, url=str(request.url), now=time.time(),
            access_token=access_token, nonce_key=self.nonce_key,
        )  # fmt: skip
        with self.lock:
            if verified.jti in self.jtis:
                raise dpop.InvalidDPoPProof("replayed")
            self.jtis.add(verified.jti)
            claims = json.loads(base64.urlsafe_b64decode(proof.split(".")[1] + "=="))
            self.proofs.append((request.method, request.url.path, claims))
        return verified

    def issue(self, jkt: str | None) -> httpx.Response:
        with self.lock:
            self.generation += 1
            now = time.time()
            life = -10 if self.expired else 300
            claims: dict[str, Any] = {
                "exp": now + life,
                "iat": now - 1,
                "jti": f"a{self.generation}",
            }
            if jkt is not None:
                claims["cnf"] = {"jkt": jkt}
            self.bound_jkt = jkt
            self.access_token = token(claims)
            self.refresh_token = f"r{self.generation}"
            body = {
                "access_token": self.access_token, "refresh_token": self.refresh_token,
                "token_type": "DPoP" if jkt else "Bearer", "session_id": "s1",
                "expires_in": life, "refresh_expires_in": 900,
            }  # fmt: skip
        return httpx.Response(200, json=body)

    def token_endpoint(self, request: httpx.Request) -> tuple[str | None, httpx.Response | None]:
        if "DPoP" not in request.headers:
            return None, None
        try:
            return self.check(request, None).jkt, None
        except dpop.UseDPoPNonce:
            return None, self.refuse(400, "use_dpop_nonce", nonce=True)
        except dpop.InvalidDPoPProof:
            return None, self.refuse(400, "invalid_dpop_proof")

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/auth/login":
            jkt, refused = self.token_endpoint(request)
            if refused is not None:
                return refused
            self.logins += 1
            return self.issue(jkt)
        if path == "/auth/refresh":
            jkt, refused = self.token_endpoint(request)
            if refused is not None:
                return refused
            if json.loads(request.content)["refresh_token"] != self.refresh_token:
                return self.refuse(401, "refresh_reused")
            if self.bound_jkt is not None and jkt != self.bound_jkt:
                return self.refuse(400, "invalid_dpop_proof")
            self.refreshes += 1
            self.expired = False
            return self.issue(jkt)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if presented != self.access_token:
            return self.refuse(401, "invalid_token")
        if self.bound_jkt is not None:
            if scheme != "DPoP":
                return self.refuse(401, "invalid_token")
            try:
                verified = self.check(request, presented)
            except dpop.UseDPoPNonce:
                return self.refuse(401, "use_dpop_nonce", nonce=True)
            except dpop.InvalidDPoPProof:
                return self.refuse(401, "invalid_dpop_proof")
            if verified.jkt != self.bound_jkt:
                return self.refuse(401, "invalid_dpop_proof")
        elif scheme != "Bearer":
            return self.refuse(401, "invalid_token")
        if self.expired:
            return self.refuse(401, "token_expired")
        headers = {"DPoP-Nonce": self.success_nonce} if self.success_nonce else {}
        return httpx.Response(200, json={"ok": True}, headers=headers)

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        return self.handle(request)


def sync_client(service: DPoPService, **kwargs: Any) -> AuthClient:
    return AuthClient(base_url=BASE, transport=httpx.MockTransport(service.handle), **kwargs)


def async_client(service: DPoPService, **kwargs: Any) -> AsyncAuthClient:
    transport = httpx.MockTransport(service.handle_async)
    return AsyncAuthClient(base_url=BASE, transport=transport, **kwargs)


def kept_jkt(store: TokenStore) -> str:
    kept = store.dpop_key()
    assert kept is not None
    return _dpop.key_from_json(kept).jkt


def claims_of(proof_claims: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(method, path) for method, path, _ in proof_claims]


# -- login and requests ------------------------------------------------------------------
def test_a_sync_login_with_dpop_gets_bound_tokens_and_signs_every_request():
    service = DPoPService()
    store = MemoryTokenStore()
    with sync_client(service, token_store=store, dpop=True) as api:
        tokens = api.login("alice", "pw")
        assert tokens.bound and tokens.token_type == "DPoP"
        assert [api.get("/auth/me").status_code for _ in range(3)] == [200] * 3
    assert service.bound_jkt == kept_jkt(store)
    assert claims_of(service.proofs) == [("POST", "/auth/login")] + [("GET", "/auth/me")] * 3
    login_claims = service.proofs[0][2]
    assert "ath" not in login_claims and login_claims["htu"] == f"{BASE}/auth/login"
    assert all(c["ath"] == dpop.ath(tokens.access_token) for _, _, c in service.proofs[1:])
    assert len({c["jti"] for _, _, c in service.proofs}) == 4  # a fresh one every time


async def test_an_async_login_with_dpop_gets_bound_tokens_and_signs_every_request():
    service = DPoPService()
    async with async_client(service, dpop=True) as api:
        tokens = await api.login("alice", "pw")
        assert tokens.bound
        responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(5)))
    assert {r.status_code for r in responses} == {200}
    assert service.refused == []
    assert len({c["jti"] for _, _, c in service.proofs}) == 6


def test_without_dpop_the_tokens_are_bearer_and_no_proof_is_sent():
    service = DPoPService()
    store = MemoryTokenStore()
    with sync_client(service, token_store=store) as api:
        assert not api.login("alice", "pw").bound
        assert api.get("/auth/me").status_code == 200
    assert service.proofs == [] and store.dpop_key() is None


def test_a_query_is_left_out_of_the_proofs_htu():
    service = DPoPService()
    with sync_client(service, dpop=True) as api:
        api.login("alice", "pw")
        assert api.get("/auth/me", params={"page": "2"}).status_code == 200
    assert service.proofs[-1][2]["htu"] == f"{BASE}/auth/me"


def test_a_key_of_the_callers_own_signs_and_is_never_written_to_the_store(tmp_path):
    service = DPoPService()
    key = _dpop.generate_key("EdDSA")
    store = FileTokenStore(tmp_path / "tokens.json")
    with sync_client(service, token_store=store, dpop=key.private_key) as api:
        api.login("alice", "pw")
        assert api.get("/auth/me").status_code == 200
    assert service.bound_jkt == key.jkt
    assert "dpop_key" not in json.loads((tmp_path / "tokens.json").read_text())


def test_a_custom_store_written_before_dpop_keeps_the_key_in_memory():
    class Plain(TokenStore):
        def __init__(self) -> None:
            self.tokens: Tokens | None = None

        def load(self) -> Tokens | None:
            return self.tokens

        def update(self, change: Any) -> Tokens | None:
            self.tokens = change(self.tokens)
            return self.tokens

    service = DPoPService()
    store = Plain()
    with sync_client(service, token_store=store, dpop=True) as api:
        api.login("alice", "pw")
        assert api.get("/auth/me").status_code == 200
    assert service.bound_jkt == kept_jkt(store)


def test_bound_tokens_in_the_store_are_signed_for_without_asking():
    # As the command line does: `login --dpop`, then `request` with no flag.
    service = DPoPService()
    store = MemoryTokenStore()
    with sync_client(service, token_store=store, dpop=True) as api:
        api.login("alice", "pw")
    with sync_client(service, token_store=store) as api:
        assert api.get("/auth/me").status_code == 200
        service.expired = True
        api.refresh()
    assert service.refreshes == 1 and service.bound_jkt == kept_jkt(store)


def test_a_bound_session_whose_key_is_lost_says_so():
    service = DPoPService()
    with sync_client(service, dpop=True) as api:
        tokens = api.login("alice", "pw")
    with (
        sync_client(service, token_store=MemoryTokenStore(tokens)) as api,
        pytest.raises(AuthError, match="keeps no DPoP key"),
    ):
        api.get("/auth/me")


# -- refresh -------------------------------------------------------------------------------
async def test_50_concurrent_requests_with_an_expired_bound_token_refresh_once():
    service = DPoPService()
    async with async_client(service, dpop=True) as api:
        await api.login("alice", "pw")
        # The service refuses the token as expired; the client thinks it fresh.
        service.expired = True
        responses = await asyncio.gather(*(api.get("/auth/me") for _ in range(50)))
    assert {r.status_code for r in responses} == {200}
    assert service.refreshes == 1
    refresh = [c for m, p, c in service.proofs if p == "/auth/refresh"]
    assert len(refresh) == 1 and "ath" not in refresh[0]


def test_64_threads_with_an_expired_bound_token_refresh_once():
    service = DPoPService()
    with sync_client(service, dpop=True) as api:
        api.login("alice", "pw")
        service.expired = True
        barrier = threading.Barrier(16)

        def call(_: int) -> int:
            barrier.wait()
            return api.get("/auth/me").status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(call, range(16)))
    assert statuses == [200] * 16
    assert service.refreshes == 1


# -- nonces -------------------------------------------------------------------------------
def test_use_dpop_nonce_gets_one_resend_and_the_nonce_is_remembered():
    service = DPoPService(nonce_key=b"k" * 32)
    with sync_client(service, dpop=True) as api:
        api.login("alice", "pw")
        assert service.refused == ["use_dpop_nonce"]
        # The login's nonce is the origin's: the requests carry it at once.
        assert api.get("/auth/me").status_code == 200
        assert api.get("/auth/me").status_code == 200
    assert service.refused == ["use_dpop_nonce"]
    assert service.logins == 1
    assert all(c.get("nonce") == service.nonce() for _, _, c in service.proofs)


async def test_an_async_client_meets_a_nonce_at_a_resource_and_resends_once():
    service = DPoPService()
    async with async_client(service, dpop=True) as api:
        await api.login("alice", "pw")
        service.nonce_key = b"k" * 32  # the service starts wanting nonces
        assert (await api.get("/auth/me")).status_code == 200
        assert (await api.get("/auth/me")).status_code == 200
    assert service.refused == ["use_dpop_nonce"]


def test_a_service_that_keeps_refusing_the_nonce_gets_one_resend_only():
    service = DPoPService()
    with sync_client(service, dpop=True) as api:
        api.login("alice", "pw")
        service.nonce_key = b"k" * 32
        real = service.nonce
        calls = iter(range(100))
        service.nonce = lambda: f"{real()[:20]}{next(calls):04d}"  # type: ignore[method-assign]
        response = api.get("/auth/me")
    assert response.status_code == 401
    assert service.refused == ["use_dpop_nonce", "use_dpop_nonce"]


def test_a_nonce_on_a_successful_answer_is_used_next():
    service = DPoPService()
    with sync_client(service, dpop=True) as api:
        api.login("alice", "pw")
        service.success_nonce = "fresh-nonce-1"
        api.get("/auth/me")
        api.get("/auth/me")
    assert "nonce" not in service.proofs[1][2]
    assert service.proofs[2][2]["nonce"] == "fresh-nonce-1"


def test_nonces_are_remembered_per_origin():
    a, b = DPoPService(nonce_key=b"a" * 32), DPoPService(nonce_key=b"b" * 32)
    store = MemoryTokenStore()
    # One bound session both fakes accept (an auth with no base_url signs for any origin).
    jkt = _dpop.key_from_json(store.dpop_key(_new_key)).jkt
    a.issue(jkt)
    b.access_token, b.bound_jkt = a.access_token, jkt
    store.save(Tokens(a.access_token, a.refresh_token, "s1", token_type="DPoP"))

    def handle(request: httpx.Request) -> httpx.Response:
        return (a if request.url.host == "a.test" else b).handle(request)

    auth = TokenAuth(token_store=store, dpop=True)
    with httpx.Client(auth=auth, transport=httpx.MockTransport(handle)) as http:
        assert http.get("http://a.test/auth/me").status_code == 200
        assert http.get("http://b.test/auth/me").status_code == 200
        assert http.get("http://a.test:80/auth/me").status_code == 200
    # Each origin refused once, the first time; a's nonce never went to b.
    assert a.refused == b.refused == ["use_dpop_nonce"]
    assert [c.get("nonce") for _, _, c in b.proofs] == [b.nonce()]
    assert [c.get("nonce") for _, _, c in a.proofs] == [a.nonce(), a.nonce()]


def _new_key() -> dict[str, str]:
    return _dpop.key_to_json(_dpop.generate_key())


# -- the key in the token file ----------------------------------------------------------------
def test_the_key_is_kept_in_the_token_file_which_stays_private(tmp_path):
    service = DPoPService()
    path = tmp_path / "tokens.json"
    with sync_client(service, token_store=FileTokenStore(path), dpop=True) as api:
        api.login("alice", "pw")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert _dpop.key_from_json(stored["dpop_key"]).jkt == service.bound_jkt
    # Another process's store on the same file: the same key, and it refreshes.
    other = FileTokenStore(path)
    with sync_client(service, token_store=other, dpop=True) as api:
        service.expired = True
        assert api.get("/auth/me").status_code == 200
    assert service.refreshes == 1 and service.refused == ["token_expired"]
    assert kept_jkt(other) == service.bound_jkt


def test_stores_sharing_a_file_make_one_key_between_them(tmp_path):
    path = tmp_path / "tokens.json"
    made: list[None] = []
    barrier = threading.Barrier(8)

    def create() -> dict[str, str]:
        made.append(None)
        return _new_key()

    def first_use(_: int) -> dict[str, str] | None:
        store = FileTokenStore(path)  # one per "process": no shared memory, only the file
        barrier.wait()
        return store.dpop_key(create)

    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(first_use, range(8)))
    assert len(made) == 1
    assert all(k == keys[0] for k in keys)
    assert FileTokenStore(path).dpop_key() == keys[0]


def test_a_memory_store_makes_one_key_for_any_number_of_threads():
    store = MemoryTokenStore()
    made: list[None] = []
    barrier = threading.Barrier(8)

    def create() -> dict[str, str]:
        made.append(None)
        return _new_key()

    def first_use(_: int) -> dict[str, str] | None:
        barrier.wait()
        return store.dpop_key(create)

    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(first_use, range(8)))
    assert len(made) == 1 and all(k == keys[0] for k in keys)


def test_logout_keeps_the_key(tmp_path):
    service = DPoPService()
    store = FileTokenStore(tmp_path / "tokens.json")
    with sync_client(service, token_store=store, dpop=True) as api:
        api.login("alice", "pw")
        first = kept_jkt(store)
        store.save(None)
        api.login("alice", "pw")
    assert kept_jkt(store) == first == service.bound_jkt


# -- settings ---------------------------------------------------------------------------------
def test_dpop_and_an_api_key_do_not_go_together():
    with pytest.raises(ValueError, match="never bound"):
        TokenAuth(api_key="tgk_" + "a" * 38, dpop=True)


def test_a_key_that_is_neither_p256_nor_ed25519_is_refused():
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(ValueError, match="P-256"):
        TokenAuth(dpop=ec.generate_private_key(ec.SECP384R1()))


def test_dpop_without_cryptography_says_what_to_install(monkeypatch):
    monkeypatch.setattr(_auth, "HAVE_CRYPTOGRAPHY", False)
    line = 'DPoP needs the cryptography package: pip install "quart-tokengate[dpop]"'
    for make in (
        lambda: TokenAuth(dpop=True),
        lambda: AuthClient(base_url=BASE, dpop=True),
        lambda: AsyncAuthClient(base_url=BASE, dpop=True),
        lambda: AuthClient.for_client(BASE, "svc", "secret", dpop=True),
    ):
        with pytest.raises(_dpop.DPoPUnavailable) as caught:
            make()
        assert str(caught.value) == line
    TokenAuth()  # without dpop, nothing is asked of cryptography


def test_the_command_line_says_so_in_one_line_without_cryptography(tmp_path):
    probe = (
        "import sys\n"
        "sys.modules['cryptography'] = None\n"  # as if it were not installed
        "from quart_tokengate.client.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["login", "--dpop", "--base-url", "http://127.0.0.1:9", "--username", "alice",
            "--password-stdin", "--token-file", str(tmp_path / "t.json")]  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-c", probe, *args], input="pw\n", capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        'tokengate-client: DPoP needs the cryptography package: pip install "quart-tokengate[dpop]"'
    ]
