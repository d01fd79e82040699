"""A small notes API behind tokengate: the app that test_notes.py tests."""

from quart import Quart, request

from quart_tokengate.service import TokenGate, current_identity, login_required


def create_notes_app() -> Quart:
    app = Quart(__name__)
    TokenGate(app)  # the /auth routes, the guard; settings from TOKENGATE_* variables
    notes: dict[str, list[str]] = {}

    @app.get("/notes")
    @login_required
    async def list_notes() -> dict[str, object]:
        me = current_identity()
        return {"owner": me.username, "notes": notes.get(me.username, [])}

    @app.post("/notes")
    @login_required
    async def add_note() -> tuple[dict[str, object], int]:
        me = current_identity()
        body = await request.get_json()
        notes.setdefault(me.username, []).append(str(body["text"]))
        return {"owner": me.username, "count": len(notes[me.username])}, 201

    return app
