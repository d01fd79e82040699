"""``GET /healthz``: can the service reach its database and its Redis?"""

from __future__ import annotations

import asyncio

from quart import Blueprint, Response, jsonify
from sqlalchemy import text

from ..errors import handle_exception
from ..guard import get_gate
from ..openapi import document
from . import schemas

health_bp = Blueprint("tokengate_health", __name__)
# Inside a host app too, anything these routes raise is contract JSON, and a
# Redis or database failure is 503 auth_unavailable.
health_bp.register_error_handler(Exception, handle_exception)

PROBE_TIMEOUT = 1.0


@health_bp.get("/healthz")
@document(responses={200: schemas.HealthOut, 503: schemas.HealthOut}, backend=False)
async def healthz() -> tuple[Response, int]:
    """``200`` when both backends answer, else ``503`` naming the one that did not."""
    gate = get_gate()

    async def database() -> None:
        async with gate.db() as db:
            await db.execute(text("SELECT 1"))

    async def redis() -> None:
        await gate.redis.ping()

    results = await asyncio.gather(
        asyncio.wait_for(database(), PROBE_TIMEOUT),
        asyncio.wait_for(redis(), PROBE_TIMEOUT),
        return_exceptions=True,
    )
    db_ok, redis_ok = (not isinstance(r, BaseException) for r in results)
    body = {
        "status": "ok" if db_ok and redis_ok else "unavailable",
        "database": "ok" if db_ok else "unavailable",
        "redis": "ok" if redis_ok else "unavailable",
    }
    return jsonify(body), 200 if db_ok and redis_ok else 503
