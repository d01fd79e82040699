"""``GET /healthz``: can the service reach its database and its Redis, and is the schema current?"""

from __future__ import annotations

import asyncio

from quart import Blueprint, Response, jsonify

from ..db.migrate import schema_state
from ..errors import register_error_handler
from ..guard import get_gate
from ..openapi import document
from ..store.connect import probe
from . import schemas

health_bp = Blueprint("tokengate_health", __name__)
# Inside a host app too, anything these routes raise is contract JSON, and a
# Redis or database failure is 503 auth_unavailable.
register_error_handler(health_bp, everything=True)

PROBE_TIMEOUT = 0.8


@health_bp.get("/healthz")
@document(responses={200: schemas.HealthOut, 503: schemas.HealthOut}, backend=False)
async def healthz() -> tuple[Response, int]:
    """``200`` when both backends answer and the schema is current, else ``503``.

    ``schema`` is ``ok`` (at this version's latest revision), ``missing`` or
    ``behind`` (run ``tokengate db upgrade``), ``ahead`` (a newer version
    migrated the database; still served) or ``unknown`` (the database did
    not answer).
    """
    gate = get_gate()

    async def database() -> str:
        async with gate.db() as db:
            conn = await db.connection()
            state, _ = await conn.run_sync(schema_state)
            return state

    async def redis() -> None:
        await probe(gate.redis)

    db_result, redis_result = await asyncio.gather(
        asyncio.wait_for(database(), PROBE_TIMEOUT),
        asyncio.wait_for(redis(), PROBE_TIMEOUT),
        return_exceptions=True,
    )
    db_ok = not isinstance(db_result, BaseException)
    redis_ok = not isinstance(redis_result, BaseException)
    schema = db_result if isinstance(db_result, str) else "unknown"
    healthy = db_ok and redis_ok and schema in ("ok", "ahead")
    body = {
        "status": "ok" if healthy else "unavailable",
        "database": "ok" if db_ok else "unavailable",
        "redis": "ok" if redis_ok else "unavailable",
        "schema": schema,
    }
    return jsonify(body), 200 if healthy else 503
