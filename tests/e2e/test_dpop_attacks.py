"""Forged and replayed DPoP proofs against the real service process: 0 accepted.

Three ``tokengate serve`` processes share one Redis and one database: A and B,
and N, which demands nonces (``TOKENGATE_DPOP_NONCE``). All three sit behind
one public origin, as instances behind a load balancer do: each trusts
127.0.0.1 as its proxy and every request carries ``X-Forwarded-Proto`` and
``X-Forwarded-Host``, so a proof made for ``https://api.tokengate.test`` fits
every instance and a replay on another one meets the ``jti`` check in Redis,
not a URL that differs. The victim and the attacker each logged in with a
proof of their own key and hold a bound token pair.

Each case is one request to a guarded route or a token endpoint (a replay is
the proof's legitimate use first, then the attack; a race sends one proof many
times at once, and exactly one copy may pass). It must be refused: ``401``
(``400`` at a token endpoint; for absurd input any ``4xx``), never ``2xx``,
never ``5xx``, with the contract's error and, at a resource, a ``DPoP``
challenge. The forgeries are signed with the victim's key wherever the
attacker's would be refused anyway, so that each fails only the check it is
about; ``test_the_forgeries_start_from_proofs_that_pass`` shows their base
passes. The last test checks that nothing got through and that fresh proofs
still work on every instance: the refusals changed nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import get_default_algorithms

from quart_tokengate.client._dpop import ProofKey, generate_key, make_proof
from quart_tokengate.service import dpop
from quart_tokengate.service.credentials.apikeys import derive_secret
from quart_tokengate.service.credentials.proofs import ProofChecks
from quart_tokengate.service.settings import Settings
from tests.support import SECRET, PrivateRedis, ServiceProcess, service_env
from tests.unit.test_dpop import KEYS, b64, b64json, private_jwk, public_jwk, sign_raw

from .session_helpers import PASSWORD, TIMEOUT, new_name

HOST = "api.tokengate.test"
PUBLIC = f"https://{HOST}"
ME = f"{PUBLIC}/auth/me"
LOGIN = f"{PUBLIC}/auth/login"
REFRESH = f"{PUBLIC}/auth/refresh"
PROXY = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": HOST}
INSTANCES = ("a", "b", "n")
MAX_AGE = 60  # TOKENGATE_DPOP_MAX_AGE's default, which the instances keep
NONCE_TTL = dpop.DEFAULT_POLICY.nonce_ttl
OTHER_SECRET = "another-deployment-" + "o" * 40
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

PROOF = frozenset({"invalid_dpop_proof"})
NONCE = frozenset({"use_dpop_nonce"})
TOKEN = frozenset({"invalid_token"})
UNAUTHORIZED = frozenset({401})
BAD_REQUEST = frozenset({400})
# Absurd input: the HTTP server's own 400, 413 or 431 is a refusal as good as the service's 401.
TOO_LARGE = frozenset({400, 401, 413, 431})

Headers = list[tuple[str, str | bytes]]


@dataclass
class Party:
    """Someone who logged in with a proof: their key and their bound token pair."""

    name: str
    key: ProofKey
    access: str
    refresh: str
    login_proof: str  # the token-endpoint proof the login was made with


@dataclass
class World:
    services: dict[str, ServiceProcess]
    http: dict[str, httpx.Client]
    victim: Party
    attacker: Party
    unbound: str  # the victim's access token from a login without a proof
    nonce: str  # a nonce N handed out

    def direct(self, name: str) -> str:
        """An instance's own address, as the proxy reaches it."""
        return self.services[name].base_url


@dataclass
class Attack:
    """One request: where it goes, what it carries, and how it must be refused."""

    headers: Headers
    on: str = "a"
    method: str = "GET"
    path: str = "/auth/me"
    json: Any = None
    statuses: frozenset[int] = UNAUTHORIZED
    errors: frozenset[str] = PROOF


@dataclass
class Race:
    """One proof sent many times at once: exactly one copy is its legitimate use."""

    attacks: list[Attack]


@dataclass
class Outcome:
    statuses: list[int] = field(default_factory=list)
    accepted: int = 0
    problems: list[str] = field(default_factory=list)


Build = Callable[[World], Attack | Race]
CASES: dict[str, Build] = {}
OUTCOMES: dict[str, Outcome] = {}


def add(category: str, name: str, build: Build) -> None:
    key = f"{category}: {name}"
    assert key not in CASES, key
    CASES[key] = build


# -- proofs ------------------------------------------------------------------------------
def fresh(
    key: ProofKey, token: str | None, *, method: str = "GET", url: str = ME, at: float = 0.0,
    nonce: str | None = None,
) -> str:  # fmt: skip
    """A good proof by ``key``, ``at`` seconds from now, for ``token`` (``None``: no ath)."""
    return make_proof(key, method, url, now=time.time() + at, access_token=token, nonce=nonce)


def dpop_headers(token: str, *proofs: str | bytes) -> Headers:
    return [("Authorization", f"DPoP {token}"), *(("DPoP", p) for p in proofs)]


def wire(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The headers as bytes: httpx takes str or bytes, not both (a case sends a non-ASCII byte)."""
    return [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in headers]


def victim_attack(w: World, proof: str | bytes, **kw: Any) -> Attack:
    return Attack(dpop_headers(w.victim.access, proof), **kw)


def head_of(key: ProofKey, **over: Any) -> dict[str, Any]:
    """The header of ``key``'s proofs; a ``None`` in ``over`` drops a member."""
    found = {"typ": "dpop+jwt", "alg": key.algorithm, "jwk": dict(key.public_jwk), **over}
    return {k: v for k, v in found.items() if v is not None}


def body_of(token: str | None, **over: Any) -> dict[str, Any]:
    """The claims of a good proof for ``GET ME`` now; a ``None`` in ``over`` drops a claim."""
    found: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": "GET", "htu": ME}
    found["iat"] = int(time.time())
    if token is not None:
        found["ath"] = dpop.ath(token)
    found.update(over)
    return {k: v for k, v in found.items() if v is not None}


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def sign_input(signing_input: str, key: Any, alg: str = "ES256") -> str:
    """``signing_input`` signed as PyJWT signs with ``alg`` (raw ``r || s`` for ECDSA)."""
    signature = get_default_algorithms()[alg].sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def sign_text(head: str, body: str, key: Any, alg: str = "ES256") -> str:
    """A JWS of exactly these JSON texts (duplicate members, NaN...), signed."""
    return sign_input(f"{b64(head.encode())}.{b64(body.encode())}", key, alg)


def signature_of(proof: str) -> bytes:
    return dpop._unb64url(proof.rsplit(".", 1)[1])


def with_signature(proof: str, signature: bytes) -> str:
    return f"{proof.rsplit('.', 1)[0]}.{b64(signature)}"


@functools.cache
def public_forms(key: ProofKey) -> dict[str, bytes]:
    """The victim's public key in the forms an HMAC confusion might be keyed with."""
    public = key.private_key.public_key()
    info = serialization.PublicFormat.SubjectPublicKeyInfo
    return {
        "PEM": public.public_bytes(serialization.Encoding.PEM, info),
        "DER": public.public_bytes(serialization.Encoding.DER, info),
        "JWK JSON": compact(key.public_jwk).encode(),
        "raw x": dpop._unb64url(key.public_jwk["x"]),
        "thumbprint": key.jkt.encode(),
    }


def nonce_at(secret_key: str, at: float) -> str:
    """The nonce a deployment with ``secret_key`` hands out ``at`` seconds from now.

    White-box: the key derived as the service derives it (the fixture checks the
    result against a nonce N handed out), to have nonces from another time, or
    from another deployment, that no request can fetch.
    """
    settings = Settings(secret_key=secret_key, dpop_nonce=True)
    key = ProofChecks.from_settings(settings, derive_secret(secret_key)).nonce_key
    assert key is not None
    return dpop.make_nonce(key, now=time.time() + at, ttl=NONCE_TTL)


# -- case builders -------------------------------------------------------------------------
def good(
    *, key: str = "victim", token: str | None = "victim", send: str = "victim", on: str = "a",
    path: str = "/auth/me", errors: frozenset[str] = PROOF, **proof: Any,
) -> Build:  # fmt: skip
    """A proof made by the client's ``make_proof``, right but for ``proof`` (``url``,
    ``method``, ``at``, ``nonce``, with ``"N"`` for N's), or the key it is made with, the
    token it is made for (``ath``), the token it is ``send`` with: "victim" or "attacker"."""

    def build(w: World) -> Attack:
        party = {"victim": w.victim, "attacker": w.attacker}
        access = None if token is None else party[token].access
        nonce = {"nonce": w.nonce} if proof.get("nonce") == "N" else {}
        made = fresh(party[key].key, access, **{**proof, **nonce})
        return Attack(dpop_headers(party[send].access, made), on=on, path=path, errors=errors)

    return build


def forgery(
    *, head: dict[str, Any] | None = None, jwk: dict[str, Any] | None = None,
    signer: Any = None, hmac_key: str | None = None, sign_alg: str | None = None, on: str = "a",
    errors: frozenset[str] = PROOF, **claims: Any,
) -> Build:  # fmt: skip
    """A proof for the victim's token signed as PyJWT signs: the victim's header changed by
    ``head`` (its jwk's members by ``jwk``), the good claims by ``claims`` (``None`` drops
    one; ``nonce="N"`` is N's), signed by ``signer`` (a key, or a function of the world
    giving one; default: the victim's key), or by the victim's public key in the form
    ``hmac_key`` names, with ``sign_alg`` (default: the header's alg)."""

    def build(w: World) -> Attack:
        over = dict(head or {})
        if jwk is not None:
            over["jwk"] = {**w.victim.key.public_jwk, **jwk}
        header = head_of(w.victim.key, **over)
        nonce = {"nonce": w.nonce} if claims.get("nonce") == "N" else {}
        body = body_of(w.victim.access, **{**claims, **nonce})
        key = signer(w) if callable(signer) else signer or w.victim.key.private_key
        if hmac_key is not None:
            key = public_forms(w.victim.key)[hmac_key]
        proof = sign_raw(header, body, key, sign_alg or header["alg"])
        return victim_attack(w, proof, on=on, errors=errors)

    return build


def changed(change: Callable[[str], str | bytes]) -> Build:
    """A good proof, then ``change``d as text."""
    return lambda w: victim_attack(w, change(fresh(w.victim.key, w.victim.access)))


def used_once(w: World, on: str, proof: str) -> str:
    """``proof``'s legitimate use, which must be accepted; returns it for the replay."""
    r = w.http[on].get("/auth/me", headers=wire(dpop_headers(w.victim.access, proof)))
    assert r.status_code == 200, ("the legitimate use was refused", r.status_code, r.text)
    return proof


# -- replays -------------------------------------------------------------------------------
def replay(
    first: str, then: str, *, path: str = "/auth/me", nonce: bool = False,
    change: Callable[[str], str] = lambda p: p, errors: frozenset[str] = PROOF,
) -> Build:  # fmt: skip
    def build(w: World) -> Attack:
        proof = fresh(w.victim.key, w.victim.access, nonce=w.nonce if nonce else None)
        return victim_attack(
            w, change(used_once(w, first, proof)), on=then, path=path, errors=errors
        )

    return build


def malleated(proof: str) -> str:
    # ECDSA's (r, n - s) verifies as well as (r, s); the jti, signed, still names the proof.
    raw = signature_of(proof)
    s = (P256_ORDER - int.from_bytes(raw[32:], "big")).to_bytes(32, "big")
    return with_signature(proof, raw[:32] + s)


for _first in ("a", "b"):
    for _then in ("a", "b"):
        add(
            "replay",
            f"used on {_first.upper()}, replayed on {_then.upper()}",
            replay(_first, _then),
        )
add("replay", "used on A, replayed on B with a query string", replay("a", "b", path="/auth/me?p=2"))
add("replay", "used on N with its nonce, replayed on A", replay("n", "a", nonce=True))
add("replay", "used on A with N's nonce, replayed on N", replay("a", "n", nonce=True))
add("replay", "used on N with its nonce, replayed on N", replay("n", "n", nonce=True))
add("replay", "used on A, replayed on N without a nonce", replay("a", "n", errors=NONCE))
add("replay", "used on A, ECDSA signature malleated, on B", replay("a", "b", change=malleated))
add(
    "replay",
    "used on A, re-signed (same claims, new signature), on B",
    lambda w: victim_attack(
        w, sign_input(used_once(w, "a", fresh(w.victim.key, w.victim.access)).rsplit(".", 1)[0],
                      w.victim.key.private_key), on="b",
    ),
)  # fmt: skip


def _replay_lower_case_scheme(w: World) -> Attack:
    proof = used_once(w, "a", fresh(w.victim.key, w.victim.access))
    return Attack([("Authorization", f"dpop {w.victim.access}"), ("DPoP", proof)], on="b")


def _same_jti(w: World) -> Attack:
    jti = secrets.token_urlsafe(16)
    key = w.victim.key.private_key
    used_once(w, "a", sign_raw(head_of(w.victim.key), body_of(w.victim.access, jti=jti), key))
    later = body_of(w.victim.access, jti=jti, iat=int(time.time()) + 1)
    return victim_attack(w, sign_raw(head_of(w.victim.key), later, key), on="b")


def _fifth_send(w: World) -> Attack:
    proof = used_once(w, "b", fresh(w.victim.key, w.victim.access))
    for on in ("a", "b", "n"):
        r = w.http[on].get("/auth/me", headers=wire(dpop_headers(w.victim.access, proof)))
        assert r.status_code == 401, (on, r.status_code, r.text)
    return victim_attack(w, proof, on="a")


add("replay", "used on A, replayed on B as 'dpop <token>'", _replay_lower_case_scheme)
add("replay", "a new proof with a used jti (and a new iat)", _same_jti)
add("replay", "the fifth send of one proof", _fifth_send)


def race(spread: str, copies: int, nonce: bool = False) -> Build:
    def build(w: World) -> Race:
        proof = fresh(w.victim.key, w.victim.access, nonce=w.nonce if nonce else None)
        return Race([victim_attack(w, proof, on=spread[i % len(spread)]) for i in range(copies)])

    return build


add("replay", "20 concurrent copies of one proof on A", race("a", 20))
add("replay", "20 concurrent copies of one proof on A and B", race("ab", 20))
add("replay", "21 concurrent copies of a proof with N's nonce on A, B and N", race("abn", 21, True))

# -- a proof made for another request -----------------------------------------------------
for _path in ("/auth/sessions", "/auth/me/", "/auth/ME", "/auth/me/x", "/auth", "/", "/auth/login"):
    add("another request", f"path {_path}", good(url=PUBLIC + _path))
add("another request", "a proof for /auth/me at /auth/sessions", good(path="/auth/sessions"))
for _origin in (
    f"http://{HOST}", "https://evil.test", f"https://{HOST}:8443", f"https://{HOST}:80",
    f"https://{HOST}.evil.test", "https://tokengate.test", f"https://www.{HOST}",
):  # fmt: skip
    add("another request", f"origin {_origin}", good(url=_origin + "/auth/me"))


def direct_origin(instance: str) -> Build:
    """A proof for an instance's own address, sent to A through the proxy."""
    return lambda w: victim_attack(
        w, fresh(w.victim.key, w.victim.access, url=w.direct(instance) + "/auth/me")
    )


add("another request", "origin: A's own address, at A through the proxy", direct_origin("a"))
add("another request", "origin: B's own address, at A through the proxy", direct_origin("b"))


def _spoofed_forwarded_host(w: World) -> Attack:
    # The attacker's X-Forwarded-Host arrives first; the proxy's own, the last, is the one used.
    proof = fresh(w.victim.key, w.victim.access, url="https://evil.test/auth/me")
    spoofed: Headers = [("X-Forwarded-Host", "evil.test"), ("X-Forwarded-Host", HOST)]
    return Attack(dpop_headers(w.victim.access, proof) + spoofed)


add("another request", "origin from an X-Forwarded-Host the attacker sent", _spoofed_forwarded_host)
for _method in ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "get"):
    add("another request", f"method {_method}", good(method=_method))
add("another request", "a token-endpoint proof (no ath) at a resource", good(token=None))
add(
    "another request",
    "the victim's login proof at a resource",
    lambda w: victim_attack(w, w.victim.login_proof),
)
add("another request", "ath of the attacker's token", good(token="attacker"))


def _sha(text: str, algorithm: str = "sha256") -> bytes:
    return hashlib.new(algorithm, text.encode()).digest()


def ath_case(change: Callable[[str], Any]) -> Build:
    """A proof whose ath is ``change`` of the victim's token."""
    return lambda w: forgery(ath=change(w.victim.access))(w)


for _name, _ath in (
    ("truncated", lambda t: dpop.ath(t)[:-1]),
    ("padded with '='", lambda t: dpop.ath(t) + "="),
    ("hex", lambda t: _sha(t).hex()),
    ("standard base64", lambda t: base64.b64encode(_sha(t)).decode()),
    ("of 'DPoP <token>'", lambda t: b64(_sha(f"DPoP {t}"))),
    ("SHA-384", lambda t: b64(_sha(t, "sha384"))),
    ("the token itself", lambda t: t),
    ("empty", lambda t: ""),
    ("a number", lambda t: 0),
    ("a list", lambda t: [dpop.ath(t)]),
):
    add("another request", f"ath {_name}", ath_case(_ath))

# -- iat away from the clock -----------------------------------------------------------------
for _seconds in (MAX_AGE + 5, 90, 120, 600, 3600, 86400, 10**8):
    add("clock", f"iat {_seconds} s ago", good(at=-_seconds))
for _seconds in (MAX_AGE + 5, 90, 120, 600, 3600, 86400, 10**9):
    add("clock", f"iat {_seconds} s ahead", good(at=_seconds))
for _iat in (0, -1, 2**53, 1e308, "now", True, [1]):
    add("clock", f"iat {_iat!r}", forgery(iat=_iat))
add("clock", "no iat", forgery(iat=None))
add(
    "clock",
    "iat the current time as a string",
    lambda w: forgery(iat=str(int(time.time())))(w),
)

# -- key confusion ---------------------------------------------------------------------------
for _alg in ("HS256", "HS384", "HS512"):
    for _form in ("PEM", "DER", "JWK JSON", "raw x", "thumbprint"):
        add(
            "key confusion",
            f"{_alg} keyed with the victim's public key ({_form})",
            forgery(head={"alg": _alg}, hmac_key=_form),
        )
add(
    "key confusion",
    "HS256 with a symmetric jwk (kty oct, k)",
    forgery(
        head={"alg": "HS256", "jwk": {"kty": "oct", "k": b64(b"s" * 32)}},
        signer=b"s" * 32,
    ),
)


def _alg_none(signature: str) -> Build:
    def build(w: World) -> Attack:
        head = b64json(head_of(w.victim.key, alg="none"))
        return victim_attack(w, f"{head}.{b64json(body_of(w.victim.access))}.{signature}")

    return build


add("key confusion", "alg none, no signature", _alg_none(""))
add("key confusion", "alg none, some signature", _alg_none("AAAA"))
for _alg in ("None", "NONE", "ES256\u0000", "es256", "ES256K", "ES256 "):
    add(
        "key confusion",
        f"alg {_alg!r}, an ES256 signature",
        forgery(head={"alg": _alg}, sign_alg="ES256"),
    )
for _alg in ("EdDSA", "RS256", "PS256", "ES384"):
    add(
        "key confusion",
        f"alg {_alg} over the victim's P-256 jwk and an ES256 signature",
        forgery(head={"alg": _alg}, sign_alg="ES256"),
    )
add("key confusion", "the victim's jwk relabelled P-384", forgery(jwk={"crv": "P-384"}))
add("key confusion", "the victim's jwk relabelled secp256k1", forgery(jwk={"crv": "secp256k1"}))
add("key confusion", "the victim's jwk as kty OKP", forgery(jwk={"kty": "OKP"}))
add("key confusion", "the victim's jwk with alg RS256", forgery(jwk={"alg": "RS256"}))
add("key confusion", "the victim's jwk with use enc", forgery(jwk={"use": "enc"}))
add(
    "key confusion",
    "the victim's jwk with y = x (off the curve)",
    lambda w: forgery(jwk={"y": w.victim.key.public_jwk["x"]})(w),
)
for _alg, _key_name, _sign_alg in (
    ("ES256", "EdDSA", "EdDSA"), ("ES256", "RS256", "RS256"), ("ES256", "ES384", "ES384"),
    ("EdDSA", "ES512", "ES512"),
):  # fmt: skip
    add(
        "key confusion",
        f"alg {_alg} with an {_key_name} jwk and signature",
        forgery(
            head={"alg": _alg, "jwk": public_jwk(KEYS[_key_name])},
            signer=KEYS[_key_name], sign_alg=_sign_alg,
        ),
    )  # fmt: skip
for _alg, _key_name in (
    ("RS256", "RS256"),
    ("PS256", "RS256"),
    ("ES384", "ES384"),
    ("ES512", "ES512"),
):
    add(
        "key confusion",
        f"{_alg}, not allowed, with a fitting key",
        forgery(
            head={"alg": _alg, "jwk": public_jwk(KEYS[_key_name])},
            signer=KEYS[_key_name],
        ),
    )
add(
    "key confusion",
    "the victim's full private jwk in the header",
    lambda w: forgery(head={"jwk": private_jwk(w.victim.key.private_key)})(w),
)
for _member in sorted(dpop.PRIVATE_MEMBERS):
    add(
        "key confusion",
        f"the victim's jwk with a private member {_member}",
        forgery(jwk={_member: b64(b"x" * 32)}),
    )
for _alg, _key_name in (("RS256", "RS256"), ("EdDSA", "EdDSA")):
    add(
        "key confusion",
        f"an {_key_name} private jwk (d...) under {_alg}",
        forgery(
            head={"alg": _alg, "jwk": private_jwk(KEYS[_key_name])},
            signer=KEYS[_key_name],
        ),
    )
add(
    "key confusion",
    "the victim's jwk, the attacker's signature",
    forgery(signer=lambda w: w.attacker.key.private_key),
)


def _attacker_header_victim_signature(w: World) -> Attack:
    _, body, signature = fresh(w.victim.key, w.victim.access).split(".")
    return victim_attack(w, f"{b64json(head_of(w.attacker.key))}.{body}.{signature}")


add(
    "key confusion",
    "the attacker's jwk over the victim's signature",
    _attacker_header_victim_signature,
)
add(
    "key confusion",
    "the attacker's proof for the victim's token (thumbprint)",
    good(key="attacker"),
)
add(
    "key confusion",
    "the attacker's proof for their own token, with the victim's",
    good(key="attacker", token="attacker"),
)
add("key confusion", "the victim's proof sent with the attacker's token", good(send="attacker"))
add(
    "key confusion",
    "the victim's key proving the attacker's token, sent with it",
    good(token="attacker", send="attacker"),
)
add(
    "key confusion",
    "a new Ed25519 key's proof for the victim's token",
    lambda w: victim_attack(w, fresh(generate_key("EdDSA"), w.victim.access)),
)


# -- signatures ----------------------------------------------------------------------------
def _ecdsa(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


for _name, _change in (
    ("all zero", lambda p: with_signature(p, _ecdsa(0, 0))),
    ("r = s = n", lambda p: with_signature(p, _ecdsa(P256_ORDER, P256_ORDER))),
    ("r = s = 1", lambda p: with_signature(p, _ecdsa(1, 1))),
    ("truncated", lambda p: with_signature(p, signature_of(p)[:-1])),
    ("doubled", lambda p: with_signature(p, signature_of(p) * 2)),
):
    add("signature", f"signature {_name}", changed(_change))


def _der_signature(w: World) -> Attack:
    good_proof = fresh(w.victim.key, w.victim.access)
    signing_input = good_proof.rsplit(".", 1)[0].encode()
    der = w.victim.key.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    return victim_attack(w, with_signature(good_proof, der))


def _payload_swapped(w: World) -> Attack:
    # A good proof for another route, its payload replaced by one for /auth/me.
    other = fresh(w.victim.key, w.victim.access, url=PUBLIC + "/auth/sessions")
    head, _, signature = other.split(".")
    return victim_attack(w, f"{head}.{b64json(body_of(w.victim.access))}.{signature}")


def _another_proofs_signature(w: World) -> Attack:
    donor = fresh(w.victim.key, w.victim.access)
    return victim_attack(
        w, with_signature(fresh(w.victim.key, w.victim.access), signature_of(donor))
    )


add("signature", "DER-encoded instead of raw r || s", _der_signature)
add("signature", "payload swapped under a valid signature", _payload_swapped)
add("signature", "the signature of another good proof", _another_proofs_signature)

# -- malformed headers, claims and JSON --------------------------------------------------------
for _typ in ("jwt", "JWT", "application/dpop+jwt", "DPoP+jwt", "dpop+jwt ", ["dpop+jwt"], 1):
    add("malformed", f"typ {_typ!r}", forgery(head={"typ": _typ}))
add("malformed", "no typ", forgery(head={"typ": None}))
for _jti in ("", "j" * (dpop.MAX_JTI_LENGTH + 1), "j" * 5000, 1, 1.5, True, ["x"], {"j": 1}):
    _shown = f"'j' * {len(_jti)}" if isinstance(_jti, str) and _jti else repr(_jti)
    add("malformed", f"jti {_shown}", forgery(jti=_jti))
for _claim in ("jti", "htm", "htu"):
    _over: dict[str, Any] = {_claim: None}
    add("malformed", f"no {_claim}", forgery(**_over))
for _claim, _value in (
    ("htm", ["GET"]), ("htm", "GET "), ("htu", "/auth/me"), ("htu", f"https://x@{HOST}/auth/me"),
    ("htu", f"https://evil.test#@{HOST}/auth/me"), ("htu", [ME]), ("htu", ME + "\n"),
):  # fmt: skip
    _over = {_claim: _value}
    add("malformed", f"{_claim} {_value!r}", forgery(**_over))
for _crit in (["exp"], ["b64"], []):
    add("malformed", f"crit {_crit!r}", forgery(head={"crit": _crit}))
add("malformed", "no jwk", forgery(head={"jwk": None}))
add(
    "malformed",
    "jwk as a JSON string",
    lambda w: forgery(head={"jwk": compact(w.victim.key.public_jwk)})(w),
)


def duplicate(where: str, name: str, first: Any) -> Build:
    """A member twice in the header or the claims, the first one an attacker's: signed."""

    def build(w: World) -> Attack:
        texts = {"head": compact(head_of(w.victim.key)), "body": compact(body_of(w.victim.access))}
        texts[where] = f'{{"{name}":{compact(first)},{texts[where][1:]}'
        return victim_attack(w, sign_text(texts["head"], texts["body"], w.victim.key.private_key))

    return build


add("malformed", "duplicate alg in the header", duplicate("head", "alg", "none"))
add("malformed", "duplicate typ in the header", duplicate("head", "typ", "jwt"))
add("malformed", "duplicate jwk in the header", duplicate("head", "jwk", {"kty": "oct", "k": "AA"}))
add("malformed", "duplicate htu in the claims", duplicate("body", "htu", "https://evil.test/"))
add("malformed", "duplicate ath in the claims", duplicate("body", "ath", "x"))
add("malformed", "duplicate jti in the claims", duplicate("body", "jti", "same"))


def raw_claims(extra: str) -> Build:
    """Good claims with ``extra`` JSON text (NaN, deep nesting) appended: signed."""

    def build(w: World) -> Attack:
        body = compact(body_of(w.victim.access, iat=None))[:-1] + extra + "}"
        return victim_attack(
            w, sign_text(compact(head_of(w.victim.key)), body, w.victim.key.private_key)
        )

    return build


for _constant in ("NaN", "Infinity", "-Infinity"):
    add("malformed", f"iat {_constant}", raw_claims(f',"iat":{_constant}'))
add(
    "malformed",
    "a claim nested 2000 deep",
    lambda w: raw_claims(f',"iat":{int(time.time())},"x":' + "[" * 2000 + "]" * 2000)(w),
)


def raw_head(text: bytes) -> Build:
    return lambda w: victim_attack(w, f"{b64(text)}.{b64json(body_of(w.victim.access))}.AAAA")


add("malformed", "a header nested 2000 deep", raw_head(b"[" * 2000 + b"]" * 2000))
for _name, _text in (
    ("an array", b"[]"),
    ("a string", b'"dpop+jwt"'),
    ("null", b"null"),
    ("not UTF-8", b"\xff{}"),
):
    add("malformed", f"header {_name}", raw_head(_text))
add(
    "malformed",
    "claims a JSON array",
    lambda w: victim_attack(
        w, sign_text(compact(head_of(w.victim.key)), "[]", w.victim.key.private_key)
    ),
)
for _name, _change in (
    ("standard base64 alphabet", lambda p: p.replace("-", "+").replace("_", "/") + "+/"),
    ("padded with '='", lambda p: p + "=="),
    ("a space inside", lambda p: p[:20] + " " + p[20:]),
    ("a non-ASCII byte", lambda p: (p[:20] + "é" + p[20:]).encode("latin-1")),
    ("a segment of 4n+1 characters", lambda p: p.rsplit(".", 1)[0] + ".AAAAA"),
    ("one segment", lambda p: p.replace(".", "")),
    ("two segments", lambda p: p.rsplit(".", 1)[0]),
    ("four segments", lambda p: p + ".AAAA"),
    ("five segments (JWE-shaped)", lambda p: p + ".AAAA.AAAA"),
    ("empty segments", lambda p: ".."),
):
    add("malformed", f"proof: {_name}", changed(_change))
add("malformed", "proof: the access token", lambda w: victim_attack(w, w.victim.access))


# -- sizes ---------------------------------------------------------------------------------
def padded(length: int) -> Build:
    """A good proof, signed, padded by a claim to at least ``length`` characters."""

    def build(w: World) -> Attack:
        key = w.victim.key.private_key
        base = sign_raw(head_of(w.victim.key), body_of(w.victim.access, pad=""), key)
        pad = (length - len(base)) * 3 // 4 + 1
        proof = sign_raw(head_of(w.victim.key), body_of(w.victim.access, pad="x" * pad), key)
        assert length <= len(proof) <= length + 8, (length, len(proof))
        return victim_attack(w, proof, statuses=TOO_LARGE)

    return build


add("size", "a signed proof of 8193 characters", padded(dpop.MAX_PROOF_LENGTH + 1))
add("size", "a signed proof of 9 KiB", padded(9 * 1024))
add("size", "a signed proof of 64 KiB", padded(64 * 1024))
add("size", "64 KiB of base64url", lambda w: victim_attack(w, "A" * 65536, statuses=TOO_LARGE))

# -- the Authorization scheme ------------------------------------------------------------------
add(
    "scheme",
    "the victim's bound token as Bearer",
    lambda w: Attack([("Authorization", f"Bearer {w.victim.access}")], errors=TOKEN),
)
add(
    "scheme",
    "the victim's bound token as Bearer, a good proof beside it",
    lambda w: Attack(
        [
            ("Authorization", f"Bearer {w.victim.access}"),
            ("DPoP", fresh(w.victim.key, w.victim.access)),
        ],
        errors=TOKEN,
    ),
)
add(
    "scheme", "the DPoP scheme with no DPoP header", lambda w: Attack(dpop_headers(w.victim.access))
)
add("scheme", "the DPoP scheme with an empty DPoP header", lambda w: victim_attack(w, ""))
add(
    "scheme",
    "two DPoP headers, both good proofs",
    lambda w: Attack(
        dpop_headers(w.victim.access, *(fresh(w.victim.key, w.victim.access) for _ in "12"))
    ),
)
add(
    "scheme",
    "two DPoP headers, a good proof and garbage",
    lambda w: Attack(
        dpop_headers(w.victim.access, fresh(w.victim.key, w.victim.access), "garbage")
    ),
)
add(
    "scheme",
    "two DPoP headers, one good proof twice",
    lambda w: Attack(dpop_headers(w.victim.access, *[fresh(w.victim.key, w.victim.access)] * 2)),
)
add(
    "scheme",
    "'DPoP' with no token, a good proof",
    lambda w: Attack(
        [("Authorization", "DPoP"), ("DPoP", fresh(w.victim.key, w.victim.access))], errors=TOKEN
    ),
)
add(
    "scheme",
    "an unbound token sent as DPoP, with a good proof",
    lambda w: Attack(dpop_headers(w.unbound, fresh(w.victim.key, w.unbound)), errors=TOKEN),
)


def _tampered_token(w: World) -> Attack:
    head, body, signature = w.victim.access.split(".")
    token = f"{head}.{body}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    return Attack(dpop_headers(token, fresh(w.victim.key, token)), errors=TOKEN)


add("scheme", "the victim's token with its signature changed", _tampered_token)
add(
    "scheme",
    "token and proof swapped between the headers",
    lambda w: Attack(
        [
            ("Authorization", f"DPoP {fresh(w.victim.key, w.victim.access)}"),
            ("DPoP", w.victim.access),
        ],
        errors=TOKEN,
    ),
)


# -- nonces (instance N) -----------------------------------------------------------------------
def nonce_case(nonce: Callable[[World], Any], errors: frozenset[str] = NONCE) -> Build:
    return lambda w: forgery(nonce=nonce(w), on="n", errors=errors)(w)


def nonce_of(secret_key: str, at: float) -> Callable[[World], str]:
    return lambda w: nonce_at(secret_key, at)


def _flip(text: str, at: int) -> str:
    """``text`` with its character at ``at`` changed (to another base64url one)."""
    chars = list(text)
    chars[at] = "B" if chars[at] != "B" else "C"
    return "".join(chars)


add("nonce", "no nonce", good(on="n", errors=NONCE))
add("nonce", "a made-up nonce, A * 24", nonce_case(lambda w: "A" * 24))
add("nonce", "a made-up random nonce", nonce_case(lambda w: dpop.b64url(secrets.token_bytes(18))))
add(
    "nonce",
    "another deployment's nonce (another secret)",
    nonce_case(nonce_of(OTHER_SECRET, 0)),
)
add("nonce", "N's nonce, its first character changed", nonce_case(lambda w: _flip(w.nonce, 0)))
add("nonce", "N's nonce, its last character changed", nonce_case(lambda w: _flip(w.nonce, -1)))
add("nonce", "N's nonce and one more character", nonce_case(lambda w: w.nonce + "A"))
add("nonce", "N's nonce less its last character", nonce_case(lambda w: w.nonce[:-1]))
add("nonce", "N's nonce swapped case", nonce_case(lambda w: w.nonce.swapcase()))
add("nonce", "an empty nonce", nonce_case(lambda w: ""))
add("nonce", "a nonce that is a number", nonce_case(lambda w: 12345, PROOF))
add("nonce", "N's nonce in a list", nonce_case(lambda w: [w.nonce], PROOF))
for _buckets in (2, 5, 1000):
    add(
        "nonce",
        f"N's nonce of {_buckets} buckets ago ({_buckets * NONCE_TTL} s)",
        nonce_case(nonce_of(SECRET, -_buckets * NONCE_TTL)),
    )
add("nonce", "N's nonce of 3 buckets ahead", nonce_case(nonce_of(SECRET, 3 * NONCE_TTL)))
add(
    "nonce",
    "N's nonce, the attacker's proof for the victim's token",
    good(key="attacker", nonce="N", on="n"),
)
add("nonce", "N's nonce, iat 120 s old", good(at=-120, nonce="N", on="n"))
add(
    "nonce",
    "N's nonce, HS256 keyed with the victim's PEM",
    forgery(head={"alg": "HS256"}, hmac_key="PEM", nonce="N", on="n"),
)


# -- token endpoints ---------------------------------------------------------------------------
def token_request(path: str, proof: Callable[[World], str | None], on: str = "a") -> Build:
    """``POST path`` (the victim's refresh, or login) with ``proof``: ``400`` is the refusal."""

    def build(w: World) -> Attack:
        sent = proof(w)
        body = {"refresh_token": w.victim.refresh}
        if path == "/auth/login":
            body = {"username": w.victim.name, "password": PASSWORD}
        headers: Headers = [] if sent is None else [("DPoP", sent)]
        return Attack(headers, on=on, method="POST", path=path, json=body, statuses=BAD_REQUEST)

    return build


add("token endpoint", "refresh: no proof", token_request("/auth/refresh", lambda w: None))
add(
    "token endpoint",
    "refresh: the attacker's proof",
    token_request(
        "/auth/refresh", lambda w: fresh(w.attacker.key, None, method="POST", url=REFRESH)
    ),
)
add(
    "token endpoint",
    "refresh: the victim's login proof",
    token_request("/auth/refresh", lambda w: w.victim.login_proof),
)
add(
    "token endpoint",
    "refresh: a proof 300 s old",
    token_request(
        "/auth/refresh", lambda w: fresh(w.victim.key, None, method="POST", url=REFRESH, at=-300)
    ),
)
add(
    "token endpoint",
    "refresh: HS256 keyed with the victim's PEM",
    token_request(
        "/auth/refresh",
        lambda w: sign_raw(
            head_of(w.victim.key, alg="HS256"), body_of(None, htm="POST", htu=REFRESH),
            public_forms(w.victim.key)["PEM"], "HS256",
        ),
    ),
)  # fmt: skip
for _on in ("a", "b"):
    add(
        "token endpoint",
        f"login: the victim's login proof replayed on {_on.upper()}",
        token_request("/auth/login", lambda w: w.victim.login_proof, on=_on),
    )


# -- the deployment --------------------------------------------------------------------------
def bound_login(http: httpx.Client, username: str, key: ProofKey) -> Party:
    proof = fresh(key, None, method="POST", url=LOGIN)
    login = {"username": username, "password": PASSWORD}
    r = http.post("/auth/login", json=login, headers={"DPoP": proof})
    assert r.status_code == 200, r.text
    pair = r.json()
    assert pair["token_type"] == "DPoP", pair
    return Party(username, key, pair["access_token"], pair["refresh_token"], proof)


@pytest.fixture(scope="module")
def world(
    module_redis: PrivateRedis, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    database = tmp_path_factory.mktemp("dpop-attacks") / "shared.db"
    shutil.copy(sqlite_template, database)
    services: dict[str, ServiceProcess] = {}
    try:
        for name in INSTANCES:
            workdir = tmp_path_factory.mktemp(f"dpop-attacks-{name}")
            env = service_env(
                workdir, module_redis.url, database_url=f"sqlite+aiosqlite:///{database}",
                trusted_proxies="127.0.0.1", dpop_nonce=str(name == "n").lower(),
            )  # fmt: skip
            services[name] = ServiceProcess(env, workdir)
            services[name].launch()  # the database is migrated already: all start at once
        for service in services.values():
            service.wait_ready()
        with contextlib.ExitStack() as stack:
            http = {
                name: stack.enter_context(
                    httpx.Client(base_url=service.base_url, headers=PROXY, timeout=TIMEOUT)
                )
                for name, service in services.items()
            }
            names = new_name("victim"), new_name("attacker")
            for username in names:
                user = {"username": username, "password": PASSWORD}
                assert http["a"].post("/auth/register", json=user).status_code == 201
            victim = bound_login(http["a"], names[0], generate_key())
            attacker = bound_login(http["b"], names[1], generate_key())
            r = http["a"].post("/auth/login", json={"username": names[0], "password": PASSWORD})
            assert r.status_code == 200 and r.json()["token_type"] == "Bearer", r.text
            unbound = r.json()["access_token"]
            # N hands out its nonce as RFC 9449 section 9 says: the first try is refused.
            proof = fresh(victim.key, victim.access)
            r = http["n"].get("/auth/me", headers=wire(dpop_headers(victim.access, proof)))
            assert r.status_code == 401 and r.json()["error"] == "use_dpop_nonce", r.text
            nonce = r.headers["DPoP-Nonce"]
            # The old nonces are derived white-box: genuine only if the derivation
            # gives the very nonce N handed out.
            assert nonce in {nonce_at(SECRET, at) for at in (-NONCE_TTL, 0, NONCE_TTL)}
            yield World(services, http, victim, attacker, unbound, nonce)
    finally:
        for service in services.values():
            service.stop()


# -- running a case --------------------------------------------------------------------------
def problem(attack: Attack, r: httpx.Response) -> str | None:
    """Why ``r`` is not a proper refusal of ``attack``, or ``None``."""
    if r.is_success:
        return f"ACCEPTED ({r.status_code})"
    if r.status_code >= 500:
        return f"server error {r.status_code}: {r.text[:200]}"
    if r.status_code not in attack.statuses:
        return f"status {r.status_code}, expected {sorted(attack.statuses)}: {r.text[:200]}"
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        # Only the HTTP server's own refusal of absurd input may lack the contract's body.
        server_own = r.status_code != 401 and attack.statuses == TOO_LARGE
        return None if server_own else f"no JSON error: {r.text[:200]}"
    error = body.get("error")
    if error not in attack.errors:
        return f"error {error!r}, expected {sorted(attack.errors)}: {body}"
    if r.status_code == 401 and error in PROOF | NONCE:
        challenge = r.headers.get("WWW-Authenticate", "")
        if not challenge.startswith("DPoP ") or f'error="{error}"' not in challenge:
            return f"challenge {challenge!r} for {error}"
    if error in NONCE and not r.headers.get("DPoP-Nonce"):
        return "use_dpop_nonce without a DPoP-Nonce header"
    return None


async def send_at_once(w: World, attacks: list[Attack]) -> list[httpx.Response]:
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(
                httpx.AsyncClient(base_url=w.direct(name), headers=PROXY, timeout=TIMEOUT)
            )
            for name in {a.on for a in attacks}
        }
        sends = (clients[a.on].request(a.method, a.path, headers=wire(a.headers)) for a in attacks)
        return list(await asyncio.gather(*sends))


def run(w: World, name: str) -> Outcome:
    outcome = OUTCOMES[name] = Outcome()
    built = CASES[name](w)
    if isinstance(built, Race):
        answers = asyncio.run(send_at_once(w, built.attacks))
        passed = sum(r.is_success for r in answers)
        outcome.accepted = max(0, passed - 1)  # one of them is the proof's legitimate use
        if passed != 1:
            outcome.problems.append(f"{passed} of {len(answers)} copies accepted, not 1")
        pairs = zip(built.attacks, answers, strict=True)
    else:
        r = w.http[built.on].request(
            built.method, built.path, headers=wire(built.headers), json=built.json
        )
        outcome.accepted = int(r.is_success)
        answers, pairs = [r], zip([built], [r], strict=True)
    outcome.statuses = [r.status_code for r in answers]
    for attack, r in pairs:
        found = None if r.is_success and isinstance(built, Race) else problem(attack, r)
        if found:
            outcome.problems.append(found)
    return outcome


# -- the tests ---------------------------------------------------------------------------------
def test_the_corpus_has_at_least_a_hundred_cases() -> None:
    assert len(CASES) >= 100, len(CASES)


def test_the_forgeries_start_from_proofs_that_pass(world: World) -> None:
    # Each forged case changes one thing in one of these; unchanged, each is accepted.
    victim = world.victim
    key = victim.key.private_key
    bases = {
        "a": sign_raw(head_of(victim.key), body_of(victim.access), key),
        "b": sign_text(compact(head_of(victim.key)), compact(body_of(victim.access)), key),
        "n": sign_raw(head_of(victim.key), body_of(victim.access, nonce=world.nonce), key),
    }
    for on, proof in bases.items():
        assert used_once(world, on, proof)
    r = world.http["a"].post(
        "/auth/login", json={"username": victim.name, "password": PASSWORD},
        headers={"DPoP": fresh(victim.key, None, method="POST", url=LOGIN)},
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["token_type"] == "DPoP", r.text


@pytest.mark.parametrize("name", list(CASES))
def test_the_forged_or_replayed_proof_is_refused(world: World, name: str) -> None:
    outcome = run(world, name)
    assert not outcome.problems, (outcome.statuses, outcome.problems)


def test_nothing_got_through_and_fresh_proofs_still_work_everywhere(world: World) -> None:
    missing = set(CASES) - set(OUTCOMES)
    assert not missing, f"run the whole module: {len(missing)} cases did not run"
    assert len(OUTCOMES) >= 100
    accepted = {n: o.statuses for n, o in OUTCOMES.items() if o.accepted}
    assert not accepted, accepted
    errors = {n: o.statuses for n, o in OUTCOMES.items() if any(s >= 500 for s in o.statuses)}
    assert not errors, errors
    # The refusals changed nothing: both keys still work on every instance, and the
    # victim's session still refreshes with its key.
    for party in (world.victim, world.attacker):
        for name in INSTANCES:
            proof = fresh(party.key, party.access, nonce=world.nonce if name == "n" else None)
            r = world.http[name].get("/auth/me", headers=wire(dpop_headers(party.access, proof)))
            assert r.status_code == 200, (name, r.text)
            assert r.json()["username"] == party.name
    proof = fresh(world.victim.key, None, method="POST", url=REFRESH)
    r = world.http["b"].post(
        "/auth/refresh", json={"refresh_token": world.victim.refresh}, headers={"DPoP": proof}
    )
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    for name, service in world.services.items():
        assert service.process is not None and service.process.poll() is None, name
        assert "Traceback" not in service.log.read_text(), (name, service.log)
