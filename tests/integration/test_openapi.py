"""The OpenAPI document: complete, built from the route table, and free for the host app."""

from __future__ import annotations

import re

from quart import Quart, jsonify

from quart_tokengate.service import TokenGate, create_app
from quart_tokengate.service.openapi import is_hidden, operation_of
from quart_tokengate.service.settings import Settings
from tests.support import SECRET

GUARDED = {
    ("get", "/auth/me"), ("post", "/auth/logout"), ("post", "/auth/logout-all"),
    ("get", "/auth/sessions"), ("delete", "/auth/sessions/{session_id}"),
    ("post", "/auth/password"), ("post", "/auth/api-keys"), ("get", "/auth/api-keys"),
    ("delete", "/auth/api-keys/{key_id}"),
}  # fmt: skip
NO_CONTENT = {
    ("post", "/auth/logout"), ("post", "/auth/logout-all"),
    ("delete", "/auth/sessions/{session_id}"), ("post", "/auth/password"),
    ("post", "/auth/password-reset/confirm"), ("delete", "/auth/api-keys/{key_id}"),
}  # fmt: skip


async def document(app: Quart) -> dict:
    r = await app.test_client().get("/openapi.json")
    assert r.status_code == 200
    return await r.get_json()


def test_every_route_of_the_service_is_documented_or_hidden():
    app = create_app(Settings(secret_key=SECRET))
    undocumented = [
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        and operation_of(app.view_functions[rule.endpoint]) is None
        and not is_hidden(app.view_functions[rule.endpoint])
    ]
    assert undocumented == [], "use openapi.document(...) or openapi.hidden on these routes"


async def test_the_bearer_scheme_and_the_guards_answers_are_declared(app):
    doc = await document(app)
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": (
            "An access token from /auth/login or /auth/refresh, or an API key (tgk_...)."
        ),
    }  # fmt: skip
    operations = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    for key, op in operations.items():
        if key in GUARDED:
            assert op["security"] == [{"bearer": []}], key
            unauthorized = op["responses"]["401"]
            assert "WWW-Authenticate" in unauthorized["headers"], key
            codes = unauthorized["content"]["application/json"]["schema"]["allOf"][1]
            assert "token_revoked" in codes["properties"]["error"]["enum"], key
        else:
            assert "security" not in op, key
        # Every operation answers 503 (with Retry-After) when a backend is down,
        # except /healthz, which says so in its own body.
        if key != ("get", "/healthz"):
            assert "Retry-After" in op["responses"]["503"]["headers"], key
        if "requestBody" in op:
            assert {"400", "413"} <= set(op["responses"]), key


async def test_no_content_answers_are_documented_as_such(app):
    doc = await document(app)
    for method, path in NO_CONTENT:
        response = doc["paths"][path][method]["responses"]["204"]
        assert "content" not in response, (method, path)


async def test_request_schemas_state_the_real_limits(make_app):
    app = await make_app(password_min_length=12)
    schemas = (await document(app))["components"]["schemas"]
    registration = schemas["Registration"]["properties"]
    assert registration["password"]["minLength"] == 12
    assert registration["password"]["maxLength"] == 1024
    assert registration["username"]["maxLength"] == 150
    assert re.fullmatch(registration["username"]["pattern"], "alice.b+c@d-e_f")
    assert not re.fullmatch(registration["username"]["pattern"], "alice smith")
    assert schemas["PasswordChange"]["properties"]["new_password"]["minLength"] == 12
    assert schemas["ResetConfirm"]["properties"]["new_password"]["minLength"] == 12
    # Logging in checks a password set under any earlier policy: no minimum there.
    assert schemas["LoginRequest"]["properties"]["password"]["minLength"] == 1
    for name in ("Registration", "LoginRequest", "PasswordChange"):
        assert schemas[name]["additionalProperties"] is False, name


async def test_the_docs_page_and_its_assets_come_from_this_service(app):
    client = app.test_client()
    page = await client.get("/docs")
    assert page.status_code == 200
    html = (await page.get_data()).decode()
    assert "<script>" not in html  # the page runs under a CSP without inline script
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) == 4
    for asset in assets:
        assert asset.startswith("/docs/static/"), asset
        r = await client.get(asset)
        assert r.status_code == 200, asset
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "connect-src 'self';" in csp
    assert (await client.get("/docs/static/../openapi.py")).status_code == 404
    assert (await client.get("/docs/static/swagger-editor.js")).status_code == 404


def host_app() -> Quart:
    app = Quart("host")

    @app.get("/dict")
    async def as_dict() -> dict:
        return {"ok": True}

    @app.get("/jsonify")
    async def as_jsonify():
        return jsonify(ok=True)

    return app


async def test_mounting_the_extension_leaves_the_hosts_responses_alone():
    plain, mounted = host_app(), host_app()
    TokenGate(mounted, settings=Settings(secret_key=SECRET))
    # No wrapper around make_response, the same JSON provider: a host route's
    # response is built exactly as it was without the extension.
    assert type(mounted).make_response is type(plain).make_response
    assert "make_response" not in vars(mounted)
    assert type(mounted.json) is type(plain.json)
    assert mounted.test_client_class is plain.test_client_class
    for path in ("/dict", "/jsonify"):
        a = await plain.test_client().get(path)
        b = await mounted.test_client().get(path)
        assert (a.status_code, await a.get_data()) == (b.status_code, await b.get_data())
