"""A request's DPoP proof (RFC 9449), read and checked for the guard and the token endpoints.

The checks that need no state are ``dpop.py``'s. This module adds what does:
the request (its one ``DPoP`` header, its URL as the client saw it through the
trusted proxies), the settings, the nonce key, the replay key the guard's
script notes (``check.lua``) or a token endpoint sets (``proof_once``), and the
HTTP error for each place: ``401`` with a ``DPoP`` challenge at a resource,
``400`` at a token endpoint (RFC 9449 sections 5 and 7.1).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from quart import request

from .. import dpop
from ..dpop import DPoPError, DPoPPolicy, UseDPoPNonce, VerifiedProof
from ..errors import (
    DPoPNonceRequired,
    DPoPProofRefused,
    InvalidToken,
    TokenRequestNonceRequired,
    TokenRequestProofRefused,
)
from ..proxies import public_origin
from ..settings import Settings
from ..store.redis_store import RedisSessionStore
from ..store.results import ProofReplay

# The nonce key is derived from the deployment's secret under a label of its own.
NONCE_LABEL = b"tokengate dpop nonce key"
# What the guard hands the session check: given the token's verified claims,
# the proof's replay key (or ``None``: no proof), or a refusal.
SenderCheck = Callable[[dict[str, Any], float], ProofReplay | None]


@dataclass(frozen=True, slots=True)
class ProofChecks:
    """``TOKENGATE_DPOP*`` as the guard and the token endpoints apply them."""

    mode: str  # off | allowed | required
    policy: DPoPPolicy
    nonce_key: bytes | None = None  # set with TOKENGATE_DPOP_NONCE
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, secret: bytes | None = None) -> ProofChecks:
        """The checks of ``settings``; ``secret`` (the deployment's) keys the nonces."""
        policy = DPoPPolicy(settings.dpop_algorithms, settings.dpop_max_age, settings.leeway)
        nonce_key = None
        if settings.dpop_nonce and secret is not None:
            nonce_key = hmac.new(secret, NONCE_LABEL, hashlib.sha256).digest()
        return cls(settings.dpop, policy, nonce_key, settings.trusted_proxies)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def required(self) -> bool:
        return self.mode == "required"

    @property
    def algs(self) -> str:
        """The algorithms a challenge names (RFC 9449 section 7.1)."""
        return " ".join(self.policy.algorithms)

    def nonce(self, now: float) -> str | None:
        """The nonce to hand out now, with ``TOKENGATE_DPOP_NONCE``."""
        if self.nonce_key is None:
            return None
        return dpop.make_nonce(self.nonce_key, now=now, ttl=self.policy.nonce_ttl)

    def replay(self, proof: VerifiedProof) -> ProofReplay:
        """The proof's replay key: its key and ``jti`` hashed (a client's text is never a key)."""
        seen = hashlib.sha256(f"{proof.jkt}\x00{proof.jti}".encode()).hexdigest()[:32]
        return ProofReplay(seen, self.policy.replay_ttl)

    def verify(self, proof: str, *, now: float, access_token: str | None = None) -> VerifiedProof:
        """``dpop.verify_proof`` against this request (domain errors: the caller renders them)."""
        return dpop.verify_proof(
            proof, method=request.method, url=request_url(self.trusted_proxies), now=now,
            policy=self.policy, access_token=access_token, nonce_key=self.nonce_key,
        )  # fmt: skip


def sent_proof() -> str | None:
    """This request's ``DPoP`` header; two of them are a malformed proof."""
    values = request.headers.getlist("DPoP")
    if len(values) > 1:
        raise dpop.InvalidDPoPProof("A request carries one DPoP header, not several.")
    return values[0] if values else None


def request_url(trusted: tuple[str, ...]) -> str:
    """This request's URL as the client addressed it, without query (RFC 9449 section 4.3)."""
    origin = public_origin(
        request.scheme, request.host, request.remote_addr,
        request.headers.getlist("X-Forwarded-Proto"), request.headers.getlist("X-Forwarded-Host"),
        trusted,
    )  # fmt: skip
    # The path as sent (ASGI's raw_path, percent-escapes and all); the decoded one else.
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else quote(request.path, safe="/~")
    return origin + path


# -- the guard ---------------------------------------------------------------------
def refuse_bound(claims: dict[str, Any], now: float) -> None:
    """A token sent as ``Bearer``: refused if it is bound (it proves nothing without its key)."""
    if "cnf" in claims and dpop.token_jkt(claims) is not None:
        raise InvalidToken("This token is bound to a key: send it as 'DPoP <token>' with a proof.")


def resource_check(checks: ProofChecks, proof: str | None, token: str) -> SenderCheck:
    """The sender check of a request sent with ``Authorization: DPoP <token>``."""

    def check(claims: dict[str, Any], now: float) -> ProofReplay:
        jkt = dpop.token_jkt(claims)
        if jkt is None:
            raise InvalidToken("This token is not bound to a key: send it as 'Bearer <token>'.")
        if proof is None:
            raise DPoPProofRefused("The DPoP scheme needs a DPoP header with a proof.")
        try:
            verified = checks.verify(proof, now=now, access_token=token)
            dpop.check_binding(verified, jkt)
        except UseDPoPNonce as exc:
            raise DPoPNonceRequired(exc.reason, nonce=checks.nonce(now)) from None
        except DPoPError as exc:
            raise DPoPProofRefused(exc.reason) from None
        return checks.replay(verified)

    return check


def bearer_required_check(claims: dict[str, Any], now: float) -> None:
    """``TOKENGATE_DPOP=required``: a token sent as ``Bearer`` is refused, bound or not."""
    raise InvalidToken("This server accepts only DPoP-bound tokens, sent as 'DPoP <token>'.")


# -- the token endpoints -------------------------------------------------------------
async def token_request_proof(
    checks: ProofChecks, store: RedisSessionStore, now: float
) -> VerifiedProof | None:
    """The proof of a token request (login, refresh, client credentials, device code).

    ``None`` when it carries none (and none is required) or DPoP is off. A good
    proof is noted in Redis once; a second use of it is refused.
    """
    if not checks.enabled:
        return None
    try:
        proof = sent_proof()
        if proof is None:
            if checks.required:
                raise dpop.InvalidDPoPProof("This server requires a DPoP proof.")
            return None
        verified = checks.verify(proof, now=now)
    except UseDPoPNonce as exc:
        raise TokenRequestNonceRequired(exc.reason, nonce=checks.nonce(now)) from None
    except DPoPError as exc:
        raise TokenRequestProofRefused(exc.reason) from None
    replay = checks.replay(verified)
    if not await store.proof_once(replay.digest, replay.ttl):
        raise TokenRequestProofRefused("This proof was used before.")
    return verified
