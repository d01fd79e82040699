"""The hello app ``bench.servers`` runs under each ASGI server: one route, no middleware."""

from __future__ import annotations

from quart import Quart

app = Quart("bench-hello")


@app.get("/hello")
async def hello() -> dict[str, bool]:
    return {"ok": True}
