"""The peer: Flask-JWT-Extended with a Redis blocklist, as its documentation shows it.

Served by gunicorn (sync or gthread workers) from ``bench/peers/.venv``; never
imported by tokengate. Every protected request verifies the JWT (HS256) and
asks Redis whether its ``jti`` is revoked: one JWT check and one Redis round
trip, like tokengate's guard.

    GET  /protected   the auth-only route: the same body as tokengate's /auth/me
    GET  /io          protected, then waits 50 ms (an upstream call)
    POST /login       a token for the bench (no password check: not measured)
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import redis
from flask import Flask, jsonify
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    get_jwt,
    get_jwt_identity,
    jwt_required,
)

app = Flask(__name__)
app.config["JWT_SECRET_KEY"] = os.environ["PEER_SECRET_KEY"]
app.config["JWT_ACCESS_TOKEN_EXPIRES"] = timedelta(hours=1)
jwt = JWTManager(app)
blocklist = redis.Redis.from_url(os.environ["PEER_REDIS_URL"], decode_responses=True)


@jwt.token_in_blocklist_loader
def revoked(jwt_header: dict, jwt_payload: dict) -> bool:
    return blocklist.get("peer:revoked:" + jwt_payload["jti"]) is not None


@app.post("/login")
def login():
    return jsonify(
        access_token=create_access_token(identity="1", additional_claims={"name": "bench-user"})
    )


@app.get("/protected")
@jwt_required()
def protected():
    return jsonify(
        {
            "id": int(get_jwt_identity()),
            "username": get_jwt()["name"],
            "session_id": get_jwt()["jti"],
        }
    )


@app.get("/io")
@jwt_required()
def io():
    time.sleep(0.05)
    return jsonify({"id": int(get_jwt_identity()), "waited_ms": 50})
