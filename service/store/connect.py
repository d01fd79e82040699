"""Building the Redis client: one server or a Redis Cluster, every call bounded.

A hung Redis (a frozen process, a black-holed network) must turn into a
``503`` within a second, so connecting and every read and write have a
timeout (:data:`REDIS_TIMEOUT`), and a timeout is never retried: one wait at
most per call. A connection error (refused, reset: these come at once) is
retried once, so a pooled connection that died with a restarted server, or a
cluster node that was replaced by its replica, is reached again on the same
request; on a cluster the retry reloads the slot map first. ``CLUSTERDOWN``
is not retried: while the cluster says it is down, the answer is ``503`` at
once.

There is deliberately no wall-clock deadline around a whole call: on a busy
machine it would also fire while the reply sat ready behind other work, and
answer ``503`` for a Redis that was fine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeAlias, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

# Connecting and each read or write on a socket.
# Every key tokengate keeps in Redis starts with this.
KEY_PREFIX = "tg:"
REDIS_TIMEOUT = 0.5
# How long a background reload of a cluster's slot map may take.
RELOAD_DEADLINE = 5.0
# Connections per server (per cluster node), per process.
MAX_CONNECTIONS = 200
CLUSTER_SLOTS = 16384

AnyRedis: TypeAlias = "Redis | RedisCluster"
T = TypeVar("T")


def build_redis(url: str, *, cluster: bool = False) -> AnyRedis:
    """A client for ``url``: one server, or (``cluster``) the cluster that node belongs to."""
    common: dict[str, Any] = {
        "socket_timeout": REDIS_TIMEOUT,
        "socket_connect_timeout": REDIS_TIMEOUT,
        "max_connections": MAX_CONNECTIONS,
    }
    if not cluster:
        return Redis.from_url(
            url, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), **common
        )
    return _Cluster.from_url(url, retry=Retry(NoBackoff(), 1), **common)


class _Cluster(RedisCluster):
    """redis-py's cluster client, retrying only what fails fast (see the module doc)."""

    ERRORS_ALLOW_RETRY = (RedisConnectionError,)  # type: ignore[assignment]

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except (RuntimeError, AttributeError) as exc:
            # During a failover redis-py may send on a connection that a slot-map
            # reload just closed ("handler is closed", a transport of None): the
            # connection was lost, which is what the caller is told.
            raise RedisConnectionError(f"connection closed under a command: {exc}") from exc


async def bounded(call: Awaitable[T], deadline: float) -> T:
    """Await ``call`` for at most ``deadline`` seconds (``TimeoutError`` after that)."""
    async with asyncio.timeout(deadline):
        return await call


def is_cluster(client: AnyRedis) -> bool:
    return isinstance(client, RedisCluster)


class RedisUnhealthy(Exception):
    """The probe reached Redis, and Redis is not fit to serve: why, in one line."""


async def probe(client: AnyRedis) -> None:
    """Check that Redis can serve every request; raise if it cannot.

    One server: it answers, and it is not a cluster node (a plain client on a
    cluster node would meet ``MOVED`` on most keys). A cluster: every primary
    the client knows answers and reports ``cluster_state:ok`` with all 16384
    slots served. After a failed probe the slot map is reloaded, so a failover
    is followed even while no request arrives.
    """
    if isinstance(client, RedisCluster):
        try:
            await asyncio.gather(*(_probe_primary(client, node) for node in client.get_primaries()))
        except Exception:
            # Off the probe's clock: the next probe or request finds the new map.
            task = asyncio.ensure_future(_reload_slots(client))
            _reloads.add(task)
            task.add_done_callback(_reloads.discard)
            raise
        return
    info = await client.info("cluster")
    if info.get("cluster_enabled") in (1, "1"):
        raise RedisUnhealthy("a cluster node: set TOKENGATE_REDIS_CLUSTER=true")


_reloads: set[asyncio.Future[None]] = set()


async def _reload_slots(client: RedisCluster) -> None:
    with contextlib.suppress(Exception):
        await bounded(client.nodes_manager.initialize(), RELOAD_DEADLINE)


async def _probe_primary(client: RedisCluster, node: ClusterNode) -> None:
    info = await client.execute_command("CLUSTER INFO", target_nodes=node)
    if isinstance(info, dict) and node.name in info:  # some versions key replies by node
        info = info[node.name]
    state = info.get("cluster_state") if isinstance(info, dict) else None
    served = int(info.get("cluster_slots_ok", 0)) if isinstance(info, dict) else 0
    if state != "ok" or served != CLUSTER_SLOTS:
        raise RedisUnhealthy(f"{node.name}: cluster_state={state}, {served} slots served")
