"""Prometheus metrics with the official ``prometheus-client``, and ``GET /metrics``.

The metrics are made on first use, not at import: ``prometheus-client``
chooses between one process and multiprocess mode when it is imported
(``PROMETHEUS_MULTIPROC_DIR``), and ``serve`` sets that variable before
anything imports it. Under ``serve`` every worker writes its values to files in
``<instance>/prometheus/`` and ``/metrics`` adds them up, whichever worker
answers; an app run some other way keeps them in the process.

Per request the cost is a counter and a histogram update (plus one histogram
update per Redis command); nothing here does I/O on the hot path.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from quart import Blueprint, Response
from redis.asyncio import Redis

from .openapi import hidden

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latencies of an auth service: a guarded request is a millisecond or two,
# a login (argon2id) a few hundred.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


@dataclass(frozen=True, slots=True)
class Metrics:
    """Every metric the service records; names are prefixed ``tokengate_``."""

    requests: Any
    request_seconds: Any
    guard: Any
    logins: Any
    refreshes: Any
    refresh_reuse: Any
    backend_errors: Any
    redis_seconds: Any
    # The children of ``requests`` and ``request_seconds`` by (route, method, status).
    request_children: dict[tuple[str, str, int], tuple[Any, Any]] = field(default_factory=dict)
    # The children of ``guard`` by outcome.
    guard_children: dict[str, Any] = field(default_factory=dict)


@functools.cache
def metrics() -> Metrics:
    """The process's metrics, made once on first use (see the module docstring)."""
    from prometheus_client import Counter, Histogram

    return Metrics(
        requests=Counter(
            "tokengate_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
        ),
        request_seconds=Histogram(
            "tokengate_request_duration_seconds",
            "Time to answer an HTTP request, by route and method.",
            ["route", "method"],
            buckets=REQUEST_BUCKETS,
        ),
        guard=Counter(
            "tokengate_guard",
            "Outcomes of the access-token check: ok, or the error code.",
            ["outcome"],
        ),
        logins=Counter(
            "tokengate_logins",
            "Password logins by outcome: ok, invalid_credentials, too_many_attempts...",
            ["outcome"],
        ),
        refreshes=Counter(
            "tokengate_refreshes",
            "Refresh-token exchanges by outcome: ok, or the error code.",
            ["outcome"],
        ),
        refresh_reuse=Counter(
            "tokengate_refresh_reuse",
            "Retired refresh tokens presented after the grace window (each ends a session).",
        ),
        backend_errors=Counter(
            "tokengate_backend_errors",
            "Redis and database errors (connection, timeout, failover).",
            ["backend"],
        ),
        redis_seconds=Histogram(
            "tokengate_redis_roundtrip_seconds",
            "Round-trip time of each Redis command the service sends.",
            buckets=REDIS_BUCKETS,
        ),
    )


def observe_redis_call(seconds: float, exc: BaseException | None) -> None:
    """Record one Redis round trip, and count it as a backend error if it failed as one."""
    m = metrics()
    if exc is not None:
        from .errors import is_infrastructure_failure

        if is_infrastructure_failure(exc):
            m.backend_errors.labels("redis").inc()
    m.redis_seconds.observe(seconds)


class TimedRedis(Redis):
    """``redis.asyncio.Redis`` that records each command's round trip and failures."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        started = time.perf_counter()
        try:
            reply = await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except Exception as exc:
            observe_redis_call(time.perf_counter() - started, exc)
            raise
        observe_redis_call(time.perf_counter() - started, None)
        return reply


def count_database_error(context: Any) -> None:
    """SQLAlchemy ``handle_error`` listener: count connection-level failures."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if context.is_disconnect or isinstance(
        context.sqlalchemy_exception, OperationalError | InterfaceError
    ):
        metrics().backend_errors.labels("database").inc()


def _exposition() -> tuple[bytes, str]:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
    )
    from prometheus_client.multiprocess import MultiProcessCollector

    metrics()  # so that a scrape before any request still lists every metric
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


metrics_bp = Blueprint("tokengate_metrics", __name__)


@metrics_bp.get("/metrics")
@hidden
async def metrics_page() -> Response:
    """The Prometheus text exposition (protect it as docs/operations.md says)."""
    # Multiprocess mode reads every worker's files: off the event loop.
    body, content_type = await asyncio.to_thread(_exposition)
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
