"""An attack corpus against the pure DPoP verifier: forged and replay-shaped proofs, 0 accepted.

Each case is a proof an attacker could send (forged, tampered, key-confused,
made for another request, token or time) with the request it is sent with.
Replays of the very same proof to the very same request are the guard's
``jti`` check in Redis, across instances, and are tested with the wiring;
here every case must fail a check that needs no state.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms

from quart_tokengate.service import dpop
from quart_tokengate.service.dpop import DPoPPolicy

from .test_dpop import (
    ALL,
    KEYS,
    NONCE_KEY,
    NOW,
    OTHER_ES256,
    TOKEN,
    URL,
    b64,
    b64json,
    claims,
    header,
    private_jwk,
    proof,
    public_jwk,
    sign_raw,
)

VICTIM = KEYS["ES256"]
VICTIM_JKT = dpop.thumbprint(public_jwk(VICTIM))
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@dataclass
class Attack:
    """A proof and the request it arrives with; ``bound`` is the token's cnf.jkt, if any."""

    value: Any
    method: str = "GET"
    url: str = URL
    now: float = NOW
    token: str | None = TOKEN
    policy: DPoPPolicy = field(default_factory=DPoPPolicy)
    nonce_key: bytes | None = None
    bound: str | None = None


CASES: dict[str, Callable[[], Attack]] = {}


def case(name: str, make: Callable[[], Attack]) -> None:
    assert name not in CASES, name
    CASES[name] = make


def with_signature(good: str, signature: bytes) -> str:
    head, body, _ = good.split(".")
    return f"{head}.{body}.{b64(signature)}"


def hmac_signed(alg: str, secret: bytes, jwk: dict | None = None) -> str:
    head = header(alg=alg) if jwk is None else {"typ": "dpop+jwt", "alg": alg, "jwk": jwk}
    signing_input = f"{b64json(head)}.{b64json(claims())}"
    return (
        f"{signing_input}.{b64(get_default_algorithms()[alg].sign(signing_input.encode(), secret))}"
    )


# -- replay-shaped: a real proof, sent again to another request, token or time ------------
for path in ("/other", "/notes/", "/Notes", "/notes/../admin", "/admin", "/notes/1"):
    case(
        f"replayed to path {path}",
        lambda p=path: Attack(proof(), url="https://api.example.com" + p),
    )
for origin in (
    "http://api.example.com",
    "https://evil.example.com",
    "https://api.example.com:8443",
    "https://api.example.com.evil.com",
    "https://example.com",
):
    case(f"replayed to origin {origin}", lambda o=origin: Attack(proof(), url=o + "/notes"))
for method in ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
    case(f"replayed with method {method}", lambda m=method: Attack(proof(), method=m))
for token in (TOKEN + "x", "another.access.token", ""):
    case(f"replayed with token {token!r}", lambda t=token: Attack(proof(), token=t))
case("token-endpoint proof (no ath) replayed at a resource", lambda: Attack(proof(ath=None)))
for later in (61, 120, 3600, 86400, 10**8):
    case(f"replayed {later}s later", lambda s=later: Attack(proof(), now=NOW + s))
for ahead in (61, 600, 86400, 10**9):
    case(f"pre-made with iat {ahead}s ahead", lambda s=ahead: Attack(proof(iat=NOW + s)))
for buckets in (2, 5, 100):
    case(
        f"nonce {buckets} buckets old",
        lambda b=buckets: Attack(
            proof(nonce=dpop.make_nonce(NONCE_KEY, now=NOW - 300 * b, ttl=300)), nonce_key=NONCE_KEY
        ),
    )
case(
    "nonce of another deployment",
    lambda: Attack(proof(nonce=dpop.make_nonce(b"x" * 32, now=NOW, ttl=300)), nonce_key=NONCE_KEY),
)
case("nonce missing when demanded", lambda: Attack(proof(), nonce_key=NONCE_KEY))
case("nonce made up", lambda: Attack(proof(nonce="A" * 24), nonce_key=NONCE_KEY))

# -- key confusion -------------------------------------------------------------------------
PUBLIC = VICTIM.public_key()
PUBLIC_FORMS = {
    "PEM": PUBLIC.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ),
    "DER": PUBLIC.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ),
    "JWK JSON": str(public_jwk(VICTIM)).encode(),
    "x coordinate": dpop._unb64url(public_jwk(VICTIM)["x"]),
    "thumbprint": VICTIM_JKT.encode(),
}
for alg in ("HS256", "HS384", "HS512"):
    for form, secret in PUBLIC_FORMS.items():
        case(
            f"{alg} keyed with the public key ({form})",
            lambda a=alg, s=secret: Attack(hmac_signed(a, s), policy=ALL),
        )
case(
    "HS256 with an oct jwk",
    lambda: Attack(hmac_signed("HS256", b"s" * 32, {"kty": "oct", "k": b64(b"s" * 32)})),
)
case(
    "ES256 header with a P-384 key",
    lambda: Attack(sign_raw(header(KEYS["ES384"], "ES256"), claims(), KEYS["ES384"], "ES384")),
)
case(
    "ES256 header with a P-521 key",
    lambda: Attack(sign_raw(header(KEYS["ES512"], "ES256"), claims(), KEYS["ES512"], "ES512")),
)
case(
    "ES256 header with an Ed25519 key",
    lambda: Attack(sign_raw(header(KEYS["EdDSA"], "ES256"), claims(), KEYS["EdDSA"], "EdDSA")),
)
case(
    "ES256 header with an RSA key",
    lambda: Attack(sign_raw(header(KEYS["RS256"], "ES256"), claims(), KEYS["RS256"], "RS256")),
)
case(
    "EdDSA header with a P-256 key",
    lambda: Attack(sign_raw(header(VICTIM, "EdDSA"), claims(), VICTIM, "ES256")),
)
case(
    "EdDSA header with an RSA key",
    lambda: Attack(
        sign_raw(header(KEYS["RS256"], "EdDSA"), claims(), KEYS["RS256"], "RS256"), policy=ALL
    ),
)
case(
    "RS256 header with a P-256 key",
    lambda: Attack(sign_raw(header(VICTIM, "RS256"), claims(), VICTIM, "ES256"), policy=ALL),
)
case(
    "PS256 header, RS256 signature",
    lambda: Attack(
        sign_raw(header(KEYS["RS256"], "PS256"), claims(), KEYS["RS256"], "RS256"), policy=ALL
    ),
)
case(
    "RS256 header, PS256 signature",
    lambda: Attack(
        sign_raw(header(KEYS["RS256"], "RS256"), claims(), KEYS["RS256"], "PS256"), policy=ALL
    ),
)
case(
    "ES384 header, ES256 signature by a P-256 key",
    lambda: Attack(sign_raw(header(VICTIM, "ES384"), claims(), VICTIM, "ES256"), policy=ALL),
)
case("RS256 when only ES256 and EdDSA are allowed", lambda: Attack(proof(KEYS["RS256"], "RS256")))
case(
    "1024-bit RSA",
    lambda: Attack(
        proof(rsa.generate_private_key(public_exponent=65537, key_size=1024), "RS256"), policy=ALL
    ),
)
case(
    "jwk alg says RS256",
    lambda: Attack(proof(head=header(jwk={**public_jwk(VICTIM), "alg": "RS256"}))),
)
case(
    "secp256k1 key under ES256",
    lambda: Attack(
        proof(
            ec.generate_private_key(ec.SECP256K1()),
            "ES256",
            head={
                "typ": "dpop+jwt",
                "alg": "ES256",
                "jwk": {**public_jwk(VICTIM), "crv": "secp256k1"},
            },
        )
    ),
)

# -- private key material in the header ----------------------------------------------------
for member in sorted(dpop.PRIVATE_MEMBERS):
    case(
        f"jwk with {member}",
        lambda m=member: Attack(proof(head=header(jwk={**public_jwk(VICTIM), m: b64(b"secret")}))),
    )
case("jwk is the full EC private key", lambda: Attack(proof(head=header(jwk=private_jwk(VICTIM)))))
case(
    "jwk is the full Ed25519 private key",
    lambda: Attack(
        proof(
            KEYS["EdDSA"],
            "EdDSA",
            head=header(KEYS["EdDSA"], "EdDSA", jwk=private_jwk(KEYS["EdDSA"])),
        )
    ),
)
case(
    "jwk is the full RSA private key",
    lambda: Attack(
        proof(
            KEYS["RS256"],
            "RS256",
            head=header(KEYS["RS256"], "RS256", jwk=private_jwk(KEYS["RS256"])),
        ),
        policy=ALL,
    ),
)

# -- alg and typ tricks --------------------------------------------------------------------
for alg in (
    "none",
    "None",
    "NONE",
    "nOnE",
    "",
    None,
    "ES256\x00",
    "ES256K",
    "EdDSA ",
    "ed25519",
    "es256",
    ["ES256"],
    {"alg": "ES256"},
    256,
):
    case(f"alg {alg!r}", lambda a=alg: Attack(proof(head=header(alg=a))))
case(
    "alg none without a signature",
    lambda: Attack(f"{b64json(header(alg='none'))}.{b64json(claims())}."),
)
for typ in (
    None,
    "jwt",
    "JWT",
    "application/dpop+jwt",
    "dpop+JWT",
    "at+jwt",
    "dpop",
    " dpop+jwt",
    ["dpop+jwt"],
    {"typ": "dpop+jwt"},
):
    case(f"typ {typ!r}", lambda t=typ: Attack(proof(head=header(typ=t))))
case("no jwk", lambda: Attack(proof(head=header(jwk=None))))
case("jwk as a string", lambda: Attack(proof(head=header(jwk=str(public_jwk(VICTIM))))))
case("jwk as a list", lambda: Attack(proof(head=header(jwk=[public_jwk(VICTIM)]))))
case(
    "jwk point not on the curve",
    lambda: Attack(proof(head=header(jwk={**public_jwk(VICTIM), "y": public_jwk(VICTIM)["x"]}))),
)
case("crit extension", lambda: Attack(proof(head=header(crit=["b64"], b64=False))))


# -- signatures ----------------------------------------------------------------------------
def _ecdsa_raw(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


case(
    "attacker's key in the header of a victim-signed proof",
    lambda: Attack(sign_raw(header(OTHER_ES256), claims(), VICTIM)),
)
case(
    "victim's key in the header of an attacker-signed proof",
    lambda: Attack(sign_raw(header(VICTIM), claims(), OTHER_ES256)),
)
case("signature zero (r=0, s=0)", lambda: Attack(with_signature(proof(), _ecdsa_raw(0, 0))))
case("signature r=s=n", lambda: Attack(with_signature(proof(), _ecdsa_raw(P256_ORDER, P256_ORDER))))
case("signature r=1, s=1", lambda: Attack(with_signature(proof(), _ecdsa_raw(1, 1))))


def der_signed() -> str:
    good = proof()
    signing_input = good.rpartition(".")[0].encode()
    return with_signature(good, VICTIM.sign(signing_input, ec.ECDSA(hashes.SHA256())))


case("signature DER-encoded instead of raw", lambda: Attack(der_signed()))
case("signature truncated", lambda: Attack(proof()[:-8]))
case(
    "signature of another proof",
    lambda: Attack(with_signature(proof(), dpop._unb64url(proof(jti="other").split(".")[2]))),
)
case(
    "payload swapped under a valid signature",
    lambda: Attack(
        ".".join(
            [
                proof().split(".")[0],
                b64json(claims(htu="https://api.example.com/admin")),
                proof().split(".")[2],
            ]
        )
    ),
)
case(
    "header swapped to another key",
    lambda: Attack(".".join([b64json(header(OTHER_ES256)), *proof().split(".")[1:]])),
)
case(
    "Ed25519 signature all zero",
    lambda: Attack(with_signature(proof(KEYS["EdDSA"], "EdDSA"), b"\x00" * 64)),
)

# -- sizes ---------------------------------------------------------------------------------
case("proof over 8 KiB", lambda: Attack(proof(pad="x" * 6200)))
case("proof of 100 KiB", lambda: Attack(proof(pad="x" * 100_000)))
case(
    "RSA key of 16384 bits (costly to check)",
    lambda: Attack(
        proof(
            head=header(
                KEYS["RS256"], "RS256", jwk={"kty": "RSA", "e": "AQAB", "n": b64(b"\xff" * 2048)}
            )
        ),
        policy=ALL,
    ),
)
case("jti of 5000 characters", lambda: Attack(proof(jti="j" * 5000)))
case(
    "header nested 2000 deep",
    lambda: Attack(f"{b64(('[' * 2000 + ']' * 2000).encode())}.{b64json(claims())}.AAAA"),
)

# -- claims of the wrong type --------------------------------------------------------------
for name, value in [
    ("iat", str(NOW)),
    ("iat", True),
    ("iat", None),
    ("iat", -1),
    ("iat", 1e400),
    ("iat", [NOW]),
    ("jti", 1),
    ("jti", ""),
    ("jti", None),
    ("jti", ["x"]),
    ("htm", ["GET"]),
    ("htm", None),
    ("htm", "get"),
    ("htm", "GET "),
    ("htu", ["https://api.example.com/notes"]),
    ("htu", "/notes"),
    ("htu", "javascript:alert(1)"),
    ("htu", "file:///notes"),
    ("htu", "https://api.example.com@evil.com/notes"),
    ("htu", "https://evil.com#@api.example.com/notes"),
    ("htu", "https://api.example.com\\@evil.com/notes"),
    ("ath", None),
    ("ath", 0),
    ("ath", ["x"]),
    ("ath", dpop.ath(TOKEN)[:-1]),
]:
    case(f"claim {name}={value!r}"[:80], lambda n=name, v=value: Attack(proof(**{n: v})))

# -- binding -------------------------------------------------------------------------------
case(
    "attacker's own valid proof for a token bound to the victim's key",
    lambda: Attack(proof(OTHER_ES256, head=header(OTHER_ES256)), bound=VICTIM_JKT),
)
case(
    "victim's proof checked against another binding",
    lambda: Attack(proof(), bound=dpop.thumbprint(public_jwk(KEYS["EdDSA"]))),
)
case("bound to a thumbprint with padding", lambda: Attack(proof(), bound=VICTIM_JKT + "="))


def run(attack: Attack) -> None:
    result = dpop.verify_proof(
        attack.value,
        method=attack.method,
        url=attack.url,
        now=attack.now,
        access_token=attack.token,
        policy=attack.policy,
        nonce_key=attack.nonce_key,
    )
    if attack.bound is not None:
        dpop.check_binding(result, attack.bound)


def test_the_corpus_has_at_least_a_hundred_cases():
    assert len(CASES) >= 100


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_attack_is_accepted(name):
    attack = CASES[name]()
    with pytest.raises(dpop.DPoPError) as caught:
        run(attack)
    assert caught.value.error in ("invalid_dpop_proof", "use_dpop_nonce")


def test_the_corpus_starts_from_proofs_that_pass():
    # The forged cases are built from these; each passes when nothing is changed.
    run(Attack(proof()))
    run(Attack(proof(), bound=VICTIM_JKT))
    run(Attack(proof(KEYS["RS256"], "RS256"), policy=ALL))
    run(Attack(proof(nonce=dpop.make_nonce(NONCE_KEY, now=NOW, ttl=300)), nonce_key=NONCE_KEY))
    run(Attack(proof(ath=None), token=None))
