"""The Redis side of API keys: each key's hot state, checked and changed by Lua scripts.

Key layout (``<tag>`` is the first characters of the key's digest, so a raw
key finds its state with no other lookup, and the key's state and its rate
counter share one Redis Cluster slot)::

    tg:{a<tag>}:k     hash   the key's state (fields in lua/api_key.lua)
    tg:{a<tag>}:rl:k  hash   its rate counter (lua/rate_lib.lua)

SQL is the truth (``api_keys``); this is its hot copy, built on first use
and rebuilt after a loss, as sessions are. A key that SQL does not hold is
remembered as ``none`` for ``UNKNOWN_TTL`` seconds: a stream of made-up keys
with good checksums costs one query per key per few minutes, not per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.commands.core import AsyncScript

from .connect import KEY_PREFIX, AnyRedis
from .pipelined import PipelinedScripts
from .redis_store import _source, _text, rate_key, script_source
from .results import KeyEnded, KeyLive, KeyMiss, KeyResult, KeyUnknown, Limited, RateCount

SCRIPTS = ("api_key", "api_key_load", "api_key_mark")
# How long Redis remembers that SQL holds no key of a digest.
UNKNOWN_TTL = 300
# An API key's last use goes back to SQL at most this often (seconds).
LAST_USE_INTERVAL = 60


class RedisApiKeyStore:
    """API keys' hot state in Redis; each method is one script call."""

    def __init__(self, redis: AnyRedis, pipelined: PipelinedScripts | None = None) -> None:
        self.redis = redis
        self.pipelined = pipelined
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script_source(name)) for name in SCRIPTS
        }
        script = self._scripts["api_key"]
        self._check_sha, self._check_source = script.sha, _source(script)

    @staticmethod
    def tag(digest_tag: str) -> str:
        """The prefix of every Redis key of one API key: one hash tag, one cluster slot."""
        return f"{KEY_PREFIX}{{a{digest_tag}}}:"

    @classmethod
    def state_key(cls, digest_tag: str) -> str:
        return cls.tag(digest_tag) + "k"

    async def check(self, digest_tag: str, *, now: float, rate: RateCount | None) -> KeyResult:
        """The guard's one round trip for a key: alive, within its rate limit, last use due?"""
        tag = self.tag(digest_tag)
        keys = (tag + "k", rate_key(tag, "k"))
        limit, window = (rate.limit, rate.window) if rate is not None else (0, 0)
        args = (repr(now), LAST_USE_INTERVAL, limit, window)
        if self.pipelined is not None:
            raw = await self.pipelined.run(self._check_sha, self._check_source, keys, args)
        else:
            raw = await self._scripts["api_key"](keys=list(keys), args=list(args))
        reply = _text(raw)
        what = reply[0]
        if what == "ok":
            return KeyLive(reply[2], reply[3], reply[4], reply[5], sync_due=reply[1] == "1")
        if what == "limited":
            return Limited(int(reply[1]))
        if what == "ended":
            return KeyEnded(reply[1])
        if what == "none":
            return KeyUnknown()
        return KeyMiss(reply[1] if len(reply) > 1 else "")

    async def load(
        self, digest_tag: str, version: str, fields: Mapping[str, Any], *, expire_at: int
    ) -> bool:
        """Put a key's state rebuilt from SQL; ``False`` if it moved since the check that missed."""
        flat = [str(part) for item in fields.items() for part in item]
        script = self._scripts["api_key_load"]
        loaded = await script(keys=[self.state_key(digest_tag)], args=[version, expire_at, *flat])
        return bool(loaded)

    async def mark(self, digest_tag: str, *, revoked: bool, why: str, expire_at: int) -> None:
        """Mark a key revoked (``why``: revoked, leaked) or stale (its user changed)."""
        script = self._scripts["api_key_mark"]
        state = "revoked" if revoked else "stale"
        await script(keys=[self.state_key(digest_tag)], args=[state, why, expire_at])


__all__ = ["KeyEnded", "KeyLive", "KeyMiss", "KeyUnknown", "RedisApiKeyStore"]
