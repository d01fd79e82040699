"""A Quart app of your own with tokengate inside: its routes, guard and storage.

    pip install "quart-tokengate[server]"
    uvicorn notes_app:app                # http://127.0.0.1:8000

With no settings it keeps everything in ``./instance/`` (an SQLite file that
it migrates itself, and a private redis-server). On a database of your own
(``TOKENGATE_DATABASE_URL``), run ``tokengate db upgrade`` once first.
Then register and log in at ``/auth/register`` and ``/auth/login``, and send
the access token to ``/notes``.
"""

from __future__ import annotations

from collections import defaultdict

from quart import Quart, request

from quart_tokengate.service import TokenGate, current_identity, login_required

app = Quart(__name__)
TokenGate(app)  # settings from the environment (TOKENGATE_*)

# Kept in memory for the example; your app has its own storage.
NOTES: defaultdict[int, list[str]] = defaultdict(list)


@app.get("/")
async def index() -> dict[str, str]:
    return {"app": "notes", "login": "/auth/login"}


@app.get("/notes")
@login_required
async def list_notes() -> dict[str, object]:
    me = current_identity()
    return {"owner": me.username, "notes": NOTES[me.user_id]}


@app.post("/notes")
@login_required
async def add_note() -> tuple[dict[str, object], int]:
    me = current_identity()
    body = await request.get_json(silent=True)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        return {"error": "invalid_request", "error_description": 'Send {"text": "..."}.'}, 400
    NOTES[me.user_id].append(text)
    return {"owner": me.username, "notes": NOTES[me.user_id]}, 201
