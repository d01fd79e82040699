"""Helpers for the end-to-end session tests: services kept for a module, HTTP calls."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.support import bearer as bearer
from tests.support import start_service as start_service

PASSWORD = "correct horse"
TIMEOUT = httpx.Timeout(30.0)


def new_name(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def error_of(r: httpx.Response) -> str:
    """The contract's error code of a failed response (which must describe itself)."""
    body = r.json()
    assert body["error_description"], body
    return str(body["error"])


def outcome(r: httpx.Response) -> int | str:
    """The status for a success, else the contract's error code."""
    return r.status_code if r.status_code in (200, 204) else error_of(r)


def register(http: httpx.Client, username: str, password: str = PASSWORD) -> None:
    r = http.post("/auth/register", json={"username": username, "password": password})
    assert r.status_code == 201, r.text


def new_user(base_url: str, password: str = PASSWORD) -> str:
    """Register a user with a fresh name at ``base_url``; return the name."""
    name = new_name()
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as http:
        register(http, name, password)
    return name


def login_attempt(
    http: httpx.Client,
    username: str,
    password: str = PASSWORD,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    """``POST /auth/login``, whatever it answers; ``extra`` goes in the body (``device``)."""
    body = {"username": username, "password": password, **extra}
    return http.post("/auth/login", json=body, headers=headers)


def login_response(
    http: httpx.Client,
    username: str,
    password: str = PASSWORD,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    """A successful login's response (for its cookies); ``extra`` goes in the body (``device``)."""
    r = login_attempt(http, username, password, headers=headers, **extra)
    assert r.status_code == 200, r.text
    return r


def login(http: httpx.Client, username: str, password: str = PASSWORD, **extra: Any) -> dict:
    """Log in; the token pair. ``extra`` goes in the body (``device``)."""
    pair: dict[str, Any] = login_response(http, username, password, **extra).json()
    return pair


async def login_async(
    http: httpx.AsyncClient, username: str, password: str = PASSWORD, **extra: Any
) -> dict[str, Any]:
    """:func:`login` with an ``httpx.AsyncClient``: the token pair."""
    body = {"username": username, "password": password, **extra}
    r = await http.post("/auth/login", json=body)
    assert r.status_code == 200, r.text
    pair: dict[str, Any] = r.json()
    return pair


def me(http: httpx.Client, pair: dict[str, Any]) -> int | str:
    return outcome(http.get("/auth/me", headers=bearer(pair)))


def refresh(http: httpx.Client, token: str) -> dict[str, Any] | str:
    r = http.post("/auth/refresh", json={"refresh_token": token})
    return r.json() if r.status_code == 200 else error_of(r)
