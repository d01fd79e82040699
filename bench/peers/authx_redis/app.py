"""A peer: authx on FastAPI, access tokens with a Redis blocklist callback.

Set up as authx's documentation shows it (``AuthXConfig`` with the token in
the ``Authorization`` header, ``auth.access_token_required`` as the route's
dependency, a token blocklist callback), served by uvicorn
(``uvicorn[standard]``) from ``bench/peers/authx_redis/.venv``; never imported
by tokengate. Every protected request asks Redis whether the token is revoked
(the async callback, one ``GET``) and verifies the JWT (HS256): one JWT check
and one Redis round trip, like tokengate's guard.

    GET  /protected   the auth-only route: the user's id and the token's id
    GET  /io          protected, then awaits 50 ms (an upstream call)
    POST /login       a token for the bench (no password check: not measured)
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Annotated, Any

import redis.asyncio
from authx import AuthX, AuthXConfig, TokenPayload
from fastapi import Depends, FastAPI

config = AuthXConfig(
    JWT_ALGORITHM="HS256",
    JWT_SECRET_KEY=os.environ["PEER_SECRET_KEY"],
    JWT_TOKEN_LOCATION=["headers"],
    JWT_ACCESS_TOKEN_EXPIRES=timedelta(hours=1),
)
auth = AuthX(config=config)
# redis-py 8's asyncio pool refuses a command (MaxConnectionsError) once 100 connections
# are in use, instead of waiting for one; the bench keeps 200 requests in flight.
blocklist = redis.asyncio.from_url(
    os.environ["PEER_REDIS_URL"], decode_responses=True, max_connections=1024
)


async def is_revoked(token: str, **kwargs: Any) -> bool:
    return await blocklist.get("authx:revoked:" + token) is not None


auth.set_callback_token_blocklist(is_revoked)

app = FastAPI()
auth.handle_errors(app)


@app.post("/login")
async def login() -> dict[str, str]:
    return {"access_token": auth.create_access_token(uid="1")}


@app.get("/protected")
async def protected(
    payload: Annotated[TokenPayload, Depends(auth.access_token_required)],
) -> dict[str, Any]:
    return {"id": int(payload.sub), "token_id": payload.jti}


@app.get("/io")
async def io(
    payload: Annotated[TokenPayload, Depends(auth.access_token_required)],
) -> dict[str, Any]:
    await asyncio.sleep(0.05)
    return {"id": int(payload.sub), "waited_ms": 50}
