"""Pure checks of DPoP proofs (RFC 9449): the proof, its key's thumbprint, ``ath``, nonces.

Nothing here does I/O or reads a clock: the request's method and URL, the access
token, the policy, the nonce key and ``now`` are passed in, as in ``tokens.py``.
The caller keeps what needs state: the replay check of ``jti`` (Redis, in the
guard's one round trip), the key a session is bound to, the nonce key.

PyJWT's and ``cryptography``'s errors become a :class:`DPoPError` with a stable
``error`` (``invalid_dpop_proof``, ``use_dpop_nonce``) and a reason; the caller
renders it for its place (``400`` at a token endpoint, ``401`` at a resource).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .errors import InvalidToken
from .proof_signature import pyjwt_algorithm, signature_ok

# Algorithm -> the JWK key type and curves it may be used with. Asymmetric only:
# ``none`` and the HMACs can never be configured, so no proof can name them.
SUPPORTED_ALGORITHMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ES256": ("EC", ("P-256",)), "ES384": ("EC", ("P-384",)), "ES512": ("EC", ("P-521",)),
    "EdDSA": ("OKP", ("Ed25519", "Ed448")),
    **{f"{family}{bits}": ("RSA", ()) for family in ("RS", "PS") for bits in (256, 384, 512)},
}  # fmt: skip
DEFAULT_ALGORITHMS = ("ES256", "EdDSA")
DEFAULT_MAX_AGE = 60
# A real proof is well under 1 KiB (an RSA one under 2); refuse anything absurd before parsing.
MAX_PROOF_LENGTH = 8192
MAX_URL_LENGTH = 4096
MAX_JTI_LENGTH = 256
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
# JWK members that carry private or symmetric key material (RFC 7518 section 6).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# The members RFC 7638 hashes, per key type, in their (lexicographic) order.
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"),
                      "RSA": ("e", "kty", "n")}  # fmt: skip
_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {
    "P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48), "P-521": (ec.SECP521R1, 66),
}  # fmt: skip
_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_NONCE_CONTEXT = b"tokengate dpop nonce\x00"


class DPoPError(Exception):
    """A proof was refused; ``error`` is the code the answer carries, ``reason`` says why."""

    error: ClassVar[str] = "invalid_dpop_proof"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidDPoPProof(DPoPError):
    """The proof is malformed, forged, for another request, too old, or for another token."""

    error = "invalid_dpop_proof"


class UseDPoPNonce(DPoPError):
    """The server demands a nonce and the proof lacks one it made (RFC 9449 section 8)."""

    error = "use_dpop_nonce"


@dataclass(frozen=True, slots=True)
class DPoPPolicy:
    """What a proof must meet besides the request: algorithms, age, clock-skew leeway.

    ``max_age`` is how far ``iat`` may stand from ``now`` either way (plus
    ``leeway``); ``nonce_ttl`` is the length of a nonce's time bucket.
    """

    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    max_age: int = DEFAULT_MAX_AGE
    leeway: int = 0
    nonce_ttl: int = 300

    def __post_init__(self) -> None:
        unknown = [a for a in self.algorithms if a not in SUPPORTED_ALGORITHMS]
        if unknown or not self.algorithms:
            raise ValueError(f"DPoP algorithms must be among {', '.join(SUPPORTED_ALGORITHMS)}")
        if self.max_age < 1 or self.leeway < 0 or self.nonce_ttl < 1:
            raise ValueError("max_age and nonce_ttl must be positive, leeway not negative")

    @property
    def replay_ttl(self) -> int:
        """How long a ``jti`` must be remembered: a proof is accepted while
        ``now`` is within ``max_age + leeway`` of its ``iat`` on either side."""
        return 2 * (self.max_age + self.leeway)


DEFAULT_POLICY = DPoPPolicy()


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    """A proof that passed every check that needs no state.

    ``jkt`` is the RFC 7638 thumbprint of its key (compare it with the token's
    ``cnf.jkt``; bind a new session to it), ``jti`` and ``iat`` are for the
    caller's replay check, ``jwk`` is the public key as sent.
    """

    jkt: str
    jti: str
    iat: int
    algorithm: str
    jwk: dict[str, Any]


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    """Strict base64url without padding; ``ValueError`` for anything else."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None


def ath(access_token: str) -> str:
    """The ``ath`` of an access token: base64url(SHA-256(token)) (RFC 9449 section 4.2)."""
    return b64url(hashlib.sha256(access_token.encode("utf-8")).digest())


# A client sends the same access token with many proofs: its ``ath`` is kept (bounded,
# and only for a token of an access token's size, so that the cache stays small).
_ATH_CACHE_LENGTH = 4096
_kept_ath = functools.lru_cache(maxsize=256)(ath)


def _expected_ath(access_token: str) -> str:
    """``ath(access_token)``, kept for a token of an access token's size."""
    return _kept_ath(access_token) if len(access_token) <= _ATH_CACHE_LENGTH else ath(access_token)


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public EC, OKP or RSA JWK.

    Only the required members count, so the same key has the same thumbprint
    whatever else its JWK carries. Raises :class:`InvalidDPoPProof` for a JWK
    of another type or with a required member missing or not a string.
    """
    kty = jwk.get("kty")
    members = THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise InvalidDPoPProof("The proof's key is of an unsupported type.")
    if not all(isinstance(jwk.get(name), str) for name in members):
        raise InvalidDPoPProof("The proof's key lacks a required member.")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("duplicate member")
    return found


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Made once: ``json.loads`` with hooks would build a new decoder for every segment.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _json_object(segment: str) -> dict[str, Any]:
    """A JWS segment decoded as a JSON object: no duplicate names, no NaN or Infinity."""
    try:
        raw = _unb64url(segment)
        # The bytes read as ``json.loads`` reads them (its encoding detection), then decoded.
        value = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, RecursionError):
        raise InvalidDPoPProof("The proof is not a well-formed JWT.") from None
    if not isinstance(value, dict):
        raise InvalidDPoPProof("The proof is not a well-formed JWT.")
    return value


def _coordinate(jwk: dict[str, Any], name: str, size: int | None = None) -> bytes:
    value = jwk.get(name)
    try:
        raw = _unb64url(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if not raw or (size is not None and len(raw) != size):
        raise InvalidDPoPProof("The proof's key is malformed.")
    return raw


def public_key(algorithm: str, jwk: Any) -> Any:
    """The ``cryptography`` public key of a proof's ``jwk``, checked against ``algorithm``.

    The key type and curve must be the ones ``algorithm`` names (the JWK never
    chooses the algorithm), and no private or symmetric member may be present.
    """
    if not isinstance(jwk, dict):
        raise InvalidDPoPProof("The proof's jwk header is not a JSON object.")
    if PRIVATE_MEMBERS & jwk.keys():
        raise InvalidDPoPProof("The proof's jwk carries private key material.")
    kty, curves = SUPPORTED_ALGORITHMS[algorithm]
    if jwk.get("kty") != kty or (curves and jwk.get("crv") not in curves):
        raise InvalidDPoPProof("The proof's key does not fit its algorithm.")
    if "alg" in jwk and jwk["alg"] != algorithm:
        raise InvalidDPoPProof("The proof's key is meant for another algorithm.")
    if "use" in jwk and jwk["use"] != "sig":
        raise InvalidDPoPProof("The proof's key is not a signing key.")
    try:
        if kty == "EC":
            curve, size = _CURVES[jwk["crv"]]
            x, y = _coordinate(jwk, "x", size), _coordinate(jwk, "y", size)
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
            )
            return numbers.public_key()  # refuses a point that is not on the curve
        if kty == "OKP":
            size = 32 if jwk["crv"] == "Ed25519" else 57
            x = _coordinate(jwk, "x", size)
            if jwk["crv"] == "Ed25519":
                return ed25519.Ed25519PublicKey.from_public_bytes(x)
            return ed448.Ed448PublicKey.from_public_bytes(x)
        n = int.from_bytes(_coordinate(jwk, "n"), "big")
        e = int.from_bytes(_coordinate(jwk, "e"), "big")
        # Bounded both ways: a huge modulus or exponent would make one check costly.
        if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS or not 3 <= e < 2**32 or e % 2 == 0:
            raise InvalidDPoPProof("The proof's RSA key is too weak or too large.")
        return rsa.RSAPublicNumbers(e, n).public_key()
    except (ValueError, TypeError):
        raise InvalidDPoPProof("The proof's key is malformed.") from None


_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(?://([^/?#]*))?([^?#]*)")
# A plain host (no user info, no percent-escapes) and an optional port of digits.
_AUTHORITY = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(?::(?P<port>[0-9]{0,5}))?$"
)
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters a URI path may hold as they are (RFC 3986 section 3.3); others are percent-encoded.
_UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _normalise_escape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, for an absolute path."""
    output: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            output[-1:] = []
        if segment not in (".", ".."):
            output.append(segment)
    trailing = "/" if output and path.endswith(("/.", "/..")) else ""
    return "/" + "/".join(output) + trailing


def normalise_htu(url: str) -> str | None:
    """``url`` without query and fragment, normalised as RFC 9449 section 4.3 asks.

    Syntax- and scheme-based normalisation (RFC 3986 sections 6.2.2 and 6.2.3):
    scheme and host in lower case, the default port dropped, an empty path made
    ``/``, percent-escapes of unreserved characters decoded and the others in
    upper case, characters a URI may not hold percent-encoded as UTF-8, dot
    segments removed. ``None`` for anything but an absolute http(s) URL with a
    plain host (no user info, no control characters, no stray ``%``).
    """
    if len(url) > MAX_URL_LENGTH or _CONTROL.search(url):
        return None
    match = _URI.match(url)
    authority = _AUTHORITY.match(match.group(2) or "") if match else None
    if match is None or authority is None or match.group(1).lower() not in _DEFAULT_PORTS:
        return None
    scheme, host, port, path = (
        match.group(1).lower(), authority["host"].lower(), authority["port"] or "", match.group(3)
    )  # fmt: skip
    if port and not 0 < int(port) < 65536:
        return None
    port = "" if not port or int(port) == _DEFAULT_PORTS[scheme] else f":{int(port)}"
    if path.count("%") != len(_PERCENT.findall(path)):
        return None
    path = _UNSAFE_IN_PATH.sub(_quote, path)
    path = _remove_dot_segments(_PERCENT.sub(_normalise_escape, path or "/"))
    return f"{scheme}://{host}{port}{path}"


# The same few URLs come again and again (a route's, as the clients write it).
_normalised = functools.lru_cache(maxsize=1024)(normalise_htu)


def _quote(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode("utf-8", "surrogatepass"))


def verify_proof(
    proof: Any,
    *,
    method: str,
    url: str,
    now: float,
    policy: DPoPPolicy | None = None,
    access_token: str | None = None,
    nonce_key: bytes | None = None,
) -> VerifiedProof:
    """Check a ``DPoP`` header's value against the request it came with (RFC 9449 section 4.3).

    ``method`` is the request's method, ``url`` its URL as the client saw it
    (scheme and host through trusted proxies; query and fragment are ignored).
    ``access_token``, when the request presents one, must hash to the proof's
    ``ath``; at a token endpoint, where none is presented, ``ath`` is ignored.
    With ``nonce_key`` the proof must carry a nonce :func:`make_nonce` made
    with that key lately, else :class:`UseDPoPNonce`. Every other fault raises
    :class:`InvalidDPoPProof`. What is left to the caller: that ``jti`` was not
    seen within ``policy.replay_ttl``, and that ``jkt`` is the token's ``cnf.jkt``.
    """
    policy = policy or DEFAULT_POLICY
    if not isinstance(proof, str) or len(proof) > MAX_PROOF_LENGTH or not _JWS.match(proof):
        raise InvalidDPoPProof("The proof is not a well-formed JWT.")
    header_segment, payload_segment, signature_segment = proof.split(".")
    header = _HEADERS.get(header_segment)
    if header is None:
        header = _read_header(header_segment, policy)
    elif header.algorithm not in policy.algorithms:
        raise InvalidDPoPProof("The proof is signed with an algorithm that is not accepted.")
    try:
        signature = _unb64url(signature_segment)
    except ValueError:
        raise InvalidDPoPProof("The proof is not a well-formed JWT.") from None
    signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    if not signature_ok(header.algorithm, header.key, signing_input, signature):
        raise InvalidDPoPProof("The proof's signature does not verify.")
    algorithm, jwk = header.algorithm, header.jwk
    claims = _json_object(payload_segment)
    _check_request(claims, method=method, url=url)
    iat = claims.get("iat")
    # A JSON number (a float too, RFC 7519's NumericDate), never a boolean, finite and sane.
    if not isinstance(iat, int | float) or isinstance(iat, bool) or not 0 <= iat < 2**53:
        raise InvalidDPoPProof("The proof's iat is missing or not a time.")
    if abs(iat - now) > policy.max_age + policy.leeway:
        raise InvalidDPoPProof("The proof's iat is too far from the server's clock.")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH or not _utf8(jti):
        raise InvalidDPoPProof("The proof's jti is missing or malformed.")
    if access_token is not None:
        sent = claims.get("ath")
        if (
            not isinstance(sent, str)
            or not sent.isascii()
            or not hmac.compare_digest(
                sent.encode("utf-8"), _expected_ath(access_token).encode("ascii")
            )
        ):
            raise InvalidDPoPProof("The proof is not made for this access token.")
    if nonce_key is not None:
        _check_nonce_claim(claims, nonce_key, policy=policy, now=now)
    return VerifiedProof(jkt=header.jkt, jti=jti, iat=int(iat), algorithm=algorithm, jwk=jwk)


@dataclass(frozen=True, slots=True)
class _Header:
    """What a proof's header segment decodes to once every check of it passed."""

    algorithm: str
    key: Any  # prepared for PyJWT's implementation of ``algorithm``
    jwk: dict[str, Any]
    jkt: str


# A client sends the same header (typ, alg, jwk) with every proof: its decoding, key
# and thumbprint are kept by the segment's exact text, which is what the signature
# covers. Only headers that passed every check are kept; the oldest goes first.
_HEADERS: dict[str, _Header] = {}
HEADER_CACHE_SIZE = 4096


def _read_header(segment: str, policy: DPoPPolicy) -> _Header:
    """Check a header segment (typ, alg against ``policy``, crit, jwk) and keep it."""
    header = _json_object(segment)
    if header.get("typ") != "dpop+jwt":
        raise InvalidDPoPProof("The proof's typ is not dpop+jwt.")
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in policy.algorithms:
        raise InvalidDPoPProof("The proof is signed with an algorithm that is not accepted.")
    if "crit" in header:  # RFC 7515 section 4.1.11: we understand no extension
        raise InvalidDPoPProof("The proof names critical extensions this server does not know.")
    key = public_key(algorithm, header.get("jwk"))
    jwk: dict[str, Any] = header["jwk"]
    try:
        # prepare_key checks the key's family (and curve) once more, on PyJWT's side.
        prepared = pyjwt_algorithm(algorithm).prepare_key(key)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise InvalidDPoPProof("The proof's key is malformed.") from None
    found = _Header(algorithm, prepared, jwk, thumbprint(jwk))
    if len(_HEADERS) >= HEADER_CACHE_SIZE:
        del _HEADERS[next(iter(_HEADERS))]
    _HEADERS[segment] = found
    return found


def _utf8(text: str) -> bool:
    """Whether ``text`` is UTF-8 text (JSON's ``\ud800`` escapes make lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_request(claims: dict[str, Any], *, method: str, url: str) -> None:
    """``htm`` and ``htu``: the proof was made for this very request."""
    if claims.get("htm") != method:
        raise InvalidDPoPProof("The proof is made for another HTTP method.")
    htu = claims.get("htu")
    expected = _normalised(url)
    if expected is None:
        raise InvalidDPoPProof("The request's URL cannot be checked against a proof.")
    if not isinstance(htu, str) or _normalised(htu) != expected:
        raise InvalidDPoPProof("The proof is made for another URL.")


def _check_nonce_claim(
    claims: dict[str, Any], key: bytes, *, policy: DPoPPolicy, now: float
) -> None:
    sent = claims.get("nonce")
    if sent is None:
        raise UseDPoPNonce("The server needs a nonce in the proof.")
    if not isinstance(sent, str):
        raise InvalidDPoPProof("The proof's nonce is malformed.")
    if not check_nonce(key, sent, now=now, ttl=policy.nonce_ttl):
        raise UseDPoPNonce("The proof's nonce is not one this server made lately.")


def _nonce_for(key: bytes, bucket: int) -> str:
    digest = hmac.new(key, _NONCE_CONTEXT + str(bucket).encode("ascii"), hashlib.sha256)
    return b64url(digest.digest()[:18])


def make_nonce(key: bytes, *, now: float, ttl: int) -> str:
    """The nonce to hand out at ``now`` (RFC 9449 section 8): an HMAC of the time bucket.

    Any instance holding ``key`` makes the same nonce in the same bucket of
    ``ttl`` seconds and checks any other's, with no shared state.
    """
    return _nonce_for(key, int(now // ttl))


def check_nonce(key: bytes, nonce: str, *, now: float, ttl: int) -> bool:
    """Whether ``nonce`` was made with ``key`` in this bucket, the one before, or the
    one after (an instance whose clock runs a little ahead); in constant time."""
    if not isinstance(nonce, str) or len(nonce) != 24:
        return False
    bucket = int(now // ttl)
    sent = nonce.encode("ascii", "replace")
    found = False
    for candidate in (bucket - 1, bucket, bucket + 1):
        found |= hmac.compare_digest(sent, _nonce_for(key, candidate).encode("ascii"))
    return found


def token_jkt(claims: dict[str, Any]) -> str | None:
    """The thumbprint a verified access token is bound to (``cnf.jkt``), or ``None``.

    A ``cnf`` that is present but not ``{"jkt": "<string>", ...}`` makes the
    token :class:`InvalidToken` (the token's fault, not the proof's): a bound
    token must never pass as an unbound one.
    """
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str) or not jkt:
        raise InvalidToken("The token's confirmation claim is malformed.")
    return jkt


def check_binding(proof: VerifiedProof, bound_jkt: str) -> None:
    """The proof is signed by the key the token (or session) is bound to (RFC 9449 section 7.1)."""
    if not hmac.compare_digest(proof.jkt.encode("ascii"), bound_jkt.encode("utf-8")):
        raise InvalidDPoPProof("The proof is not signed by the key the token is bound to.")
