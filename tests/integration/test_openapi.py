"""The OpenAPI document: complete, built from the route table, and free for the host app."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode

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
            # TOKENGATE_DPOP=allowed (the default): a bound token works wherever a bearer does.
            assert op["security"] == [{"bearer": []}, {"dpop": []}], key
            unauthorized = op["responses"]["401"]
            assert "WWW-Authenticate" in unauthorized["headers"], key
            codes = unauthorized["content"]["application/json"]["schema"]["allOf"][1]
            assert "token_revoked" in codes["properties"]["error"]["enum"], key
            assert "invalid_dpop_proof" in codes["properties"]["error"]["enum"], key
        elif key == ("post", "/auth/introspect"):
            assert op["security"] == [{"introspection_client": []}], op
        else:
            assert "security" not in op, key
        # Every operation answers 503 (with Retry-After) when a backend is down,
        # except /healthz, which says so in its own body.
        if key != ("get", "/healthz"):
            assert "Retry-After" in op["responses"]["503"]["headers"], key
        if "requestBody" in op:
            assert {"400", "413"} <= set(op["responses"]), key


async def test_the_dpop_scheme_follows_tokengate_dpop(make_app):
    for mode, schemes in (
        ("off", [{"bearer": []}]), ("required", [{"dpop": []}]),
    ):  # fmt: skip
        doc = await document(await make_app(dpop=mode))
        assert doc["paths"]["/auth/me"]["get"]["security"] == schemes, mode
        assert ("dpop" in doc["components"]["securitySchemes"]) is (mode != "off"), mode


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


# -- the document and the service agree --------------------------------------------

MAX_BODY_BYTES = 64 * 1024
# Characters a generator may pick, each costing more than the last in some encoding.
CANDIDATES = ["a", '"', "&", "\u00e9", "\U0001f600"]


def _schema(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _costliest(doc: dict[str, Any], schema: dict[str, Any], encode: Any) -> Any:
    """The costliest value ``schema`` admits in ``encode``'s encoding: its longest
    string, its largest integer, or its longest array of the costliest items."""
    options = [schema, *schema.get("anyOf", [])]
    arrays = [o for o in options if o.get("type") == "array"]
    if arrays:
        item = _costliest(doc, _schema(doc, arrays[0]["items"]), encode)
        return [item] * arrays[0]["maxItems"]
    integers = [o for o in options if o.get("type") == "integer"]
    if integers:
        return integers[0]["maximum"]
    strings = [o for o in options if o.get("type") == "string"]
    assert strings, schema
    string = strings[0]
    if "const" in string:  # one value only (a grant_type, an assertion type)
        return str(string["const"])
    pattern = string.get("pattern")
    allowed = [c for c in CANDIDATES if pattern is None or re.search(pattern, c)]
    worst = max(allowed, key=lambda c: len(encode({"x": c})))
    return worst * string["maxLength"]


async def test_no_body_the_document_admits_is_over_the_body_limit(app):
    # A body the document calls valid must never be refused as too large
    # (413): every string has a maxLength, and the characters it may hold
    # keep the longest one inside the service's 64 KiB.
    doc = await document(app)
    encoders = {
        "application/json": lambda body: json.dumps(body).encode(),
        "application/x-www-form-urlencoded": lambda body: urlencode(body).encode(),
    }
    checked = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for media, content in op.get("requestBody", {}).get("content", {}).items():
                schema = _schema(doc, content["schema"])
                encode = encoders[media]
                body = {
                    name: _costliest(doc, _schema(doc, prop), encode)
                    for name, prop in schema["properties"].items()
                }
                size = len(encode(body))
                assert size <= MAX_BODY_BYTES, (method, path, media, size)
                checked.append((method, path, media))
    assert ("post", "/auth/revoke", "application/x-www-form-urlencoded") in checked


async def test_the_longest_token_the_document_admits_is_answered_not_refused(app):
    # The costliest token the form's schema admits: 8192 characters, each
    # three bytes once form-encoded. Refused for its size before; now a
    # dead token like any other.
    doc = await document(app)
    form = _schema(doc, doc["components"]["schemas"]["RevokeForm"])
    token = _costliest(doc, form["properties"]["token"], lambda body: urlencode(body).encode())
    r = await app.test_client().post(
        "/auth/revoke",
        data=urlencode({"token": token}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, await r.get_data()


async def test_oauth_forms_ignore_parameters_they_do_not_know_and_say_so(app):
    # RFC 6749 section 3.2: unrecognized parameters are ignored; the document
    # must not call such a form invalid.
    doc = await document(app)
    for name in ("TokenForm", "RevokeForm"):
        assert doc["components"]["schemas"][name].get("additionalProperties", True) is not False
    r = await app.test_client().post(
        "/auth/revoke",
        data="token=abc&client_id=someone&unknown=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, await r.get_data()


async def test_a_token_with_a_control_character_is_refused_as_the_document_says(make_app):
    app = await make_app(introspection_clients=(("api", "api-secret"),))
    doc = await document(app)
    token_schema = _schema(doc, doc["components"]["schemas"]["TokenForm"])["properties"]["token"]
    token = "eyJ\u0001abc"
    assert not re.search(token_schema["pattern"], token)
    r = await app.test_client().post(
        "/auth/introspect",
        form={"token": token},
        headers={"Authorization": "Basic YXBpOmFwaS1zZWNyZXQ="},  # api:api-secret
    )
    assert r.status_code == 400, await r.get_data()
    assert (await r.get_json())["error"] == "invalid_request"


async def test_a_reset_username_reads_alike_in_the_documents_dialect_and_pythons(app):
    # ECMA-262, the document's regex dialect, reads \w, \d and \s as ASCII;
    # Python as Unicode. re.ASCII is the document's reading.
    doc = await document(app)
    reset = _schema(doc, doc["paths"]["/auth/password-reset/request"]["post"]["requestBody"]
                    ["content"]["application/json"]["schema"])  # fmt: skip
    pattern = reset["properties"]["username"]["pattern"]
    client = app.test_client()
    for name in ["\u00e5lice", "\u0430lice", "\u540d\u524d", "a b", "alice"]:
        python, ecma = re.search(pattern, name), re.search(pattern, name, re.ASCII)
        assert bool(python) == bool(ecma), (pattern, name)
        r = await client.post("/auth/password-reset/request", json={"username": name})
        assert (r.status_code == 202) == bool(python), (name, r.status_code)


async def test_introspection_declares_its_http_basic_scheme(app):
    doc = await document(app)
    op = doc["paths"]["/auth/introspect"]["post"]
    assert op["security"] == [{"introspection_client": []}]
    scheme = doc["components"]["securitySchemes"]["introspection_client"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "basic")
    assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
