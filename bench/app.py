"""The service app plus one unauthenticated route, for ``bench.auth_overhead``.

Run with ``uvicorn bench.app:create --factory``. ``GET /bench/bare`` goes
through the same app, hooks (the guard's ``before_request`` sees it is not
``login_required`` and returns) and server as ``GET /auth/me``; only the token
check and the session's Redis round trip are missing.
"""

from __future__ import annotations

from quart import Quart

from quart_tokengate.service import create_app


def create() -> Quart:
    app = create_app()

    @app.get("/bench/bare")
    async def bench_bare() -> dict[str, bool]:
        return {"ok": True}

    return app
