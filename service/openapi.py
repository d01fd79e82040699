"""The OpenAPI document, built once from the app's route table, and the ``/docs`` page.

A view says what it takes and answers with :func:`document`; the guard's
``login_required`` mark adds the bearer scheme and the guard's ``401``
answers; a body adds ``400``/``413``; every route that reaches Redis or the
database adds ``503``. The document is built on the first request for it and
kept: nothing here runs for any other request, so mounting the extension
costs a host app's own routes nothing.

A new route is documented by one decorator::

    @bp.post("/introspect")
    @document(form=IntrospectForm, responses={200: IntrospectOut}, errors={401: ["invalid_client"]})
    async def introspect(): ...

and a route that is not part of the API (a page, a static file) by
:func:`hidden`. ``tests/integration/test_openapi.py`` fails for a route that
is neither.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from quart import Quart
from werkzeug.routing import Rule

if TYPE_CHECKING:
    from .settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

OPENAPI_ATTR = "__tokengate_openapi__"
HIDDEN_ATTR = "__tokengate_hidden__"
OPENAPI_VERSION = "3.1.0"
STATIC_DIR = Path(__file__).resolve().parent / "static"

# The guard's 401 codes, as CONTRACT section 3 lists them.
GUARD_CODES = (
    "missing_token",
    "invalid_token",
    "token_expired",
    "token_revoked",
    "session_expired",
    "session_replaced",
)
# What a request sent with the DPoP scheme may also meet (RFC 9449 section 7.1).
DPOP_CODES = ("invalid_dpop_proof", "use_dpop_nonce")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A password field whose shortest length is TOKENGATE_PASSWORD_MIN_LENGTH.
PASSWORD_POLICY = "x-tokengate-password-policy"  # noqa: S105 - a schema key
# An API key's lifetime, whose longest is TOKENGATE_API_KEY_MAX_TTL.
KEY_LIFETIME = "x-tokengate-api-key-lifetime"

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No content",
    400: "Malformed request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    429: "Too many attempts",
    503: "Redis or the database cannot be reached; nothing changed",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
    }
}
# The IETF httpapi RateLimit header fields, on a 429 rate_limited.
_RATE_LIMIT = {
    name: {"description": what, "schema": {"type": "string"}}
    for name, what in (
        ("RateLimit-Policy", 'The quota: "credential";q=<requests>;w=<seconds>.'),
        ("RateLimit", 'What is left: "credential";r=0;t=<seconds until the window ends>.'),
    )
}
# Schemes a route may name in ``document(security=...)``.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "introspection_client": {
        "type": "http",
        "scheme": "basic",
        "description": (
            "A resource server of TOKENGATE_INTROSPECTION_CLIENTS: its id and secret "
            "(RFC 7662 section 2.1)."
        ),
    },
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": (
            'RFC 6750: Bearer realm="tokengate", and the error code if any '
            '(Basic realm="tokengate" where a client authenticates with HTTP Basic).'
        ),
        "required": True,
        "schema": {"type": "string"},
    }
}


@dataclass
class Operation:
    """What :func:`document` recorded on a view."""

    summary: str | None = None
    body: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    body_required: bool = True
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: dict[int, list[str]] = field(default_factory=dict)
    headers: dict[int, dict[str, Any]] = field(default_factory=dict)
    # False for a route that never touches Redis or the database (no 503).
    backend: bool = True
    tags: list[str] = field(default_factory=list)
    # Security requirements of a route that is not behind the guard.
    security: list[dict[str, list[str]]] | None = None


def document(
    *,
    body: type[BaseModel] | None = None,
    form: type[BaseModel] | None = None,
    body_required: bool = True,
    responses: Mapping[int, type[BaseModel] | None] | None = None,
    errors: Mapping[int, Sequence[str]] | None = None,
    headers: Mapping[int, Mapping[str, Any]] | None = None,
    backend: bool = True,
    tags: Iterable[str] = (),
    summary: str | None = None,
    security: Sequence[Mapping[str, Sequence[str]]] | None = None,
) -> Callable[[F], F]:
    """Record a view's part of the OpenAPI document.

    ``body``: the JSON body's model (``form``: the same fields as a form,
    also accepted); ``responses``: success statuses and their body models
    (``None``: no body, as for ``204``); ``errors``: the error codes the view
    itself can answer, by status (the guard's, ``400``/``413`` for a body and
    ``503`` are added); ``headers``: response headers by status; ``security``:
    the requirements of a route that authenticates its caller itself (a name
    of :data:`SECURITY_SCHEMES`); the summary defaults to the docstring's
    first line.
    """

    def mark(view: F) -> F:
        op = Operation(
            summary=summary,
            body=body,
            form=form,
            body_required=body_required,
            responses=dict(responses or {}),
            errors={status: list(codes) for status, codes in (errors or {}).items()},
            headers={status: dict(h) for status, h in (headers or {}).items()},
            backend=backend,
            tags=list(tags),
            security=(
                None
                if security is None
                else [{name: list(s) for name, s in r.items()} for r in security]
            ),
        )
        setattr(view, OPENAPI_ATTR, op)
        return view

    return mark


def hidden(view: F) -> F:
    """Keep a route (a page, a static file) out of the OpenAPI document."""
    setattr(view, HIDDEN_ATTR, True)
    return view


def operation_of(view: Callable[..., Any]) -> Operation | None:
    """The :class:`Operation` recorded on ``view`` (through ``functools.wraps`` layers)."""
    while view is not None:
        op = getattr(view, OPENAPI_ATTR, None)
        if op is not None:
            return op  # type: ignore[no-any-return]
        view = getattr(view, "__wrapped__", None)  # type: ignore[assignment]
    return None


@dataclass(frozen=True)
class Requirement:
    """What ``login_required`` asks of a request, as the document states it."""

    scopes: tuple[str, ...] = ()
    fresh: bool = False
    optional: bool = False
    api_key: bool = True


def requirement_of(view: Callable[..., Any]) -> Requirement | None:
    """The guard's requirement marked on ``view``, or ``None`` for an open route."""
    from .guard import REQUIRED_ATTR

    mark = getattr(view, REQUIRED_ATTR, None)
    if not mark:
        return None
    return Requirement(
        scopes=tuple(getattr(mark, "scopes", ()) or ()),
        fresh=bool(getattr(mark, "fresh", False)),
        optional=bool(getattr(mark, "optional", False)),
        api_key=bool(getattr(mark, "api_key", True)),
    )


def is_hidden(view: Callable[..., Any]) -> bool:
    return bool(getattr(view, HIDDEN_ATTR, False))


# -- the document --------------------------------------------------------------


_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")


def _path_of(rule: Rule) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path template of ``rule`` and its path parameters."""
    params: list[dict[str, Any]] = []

    def swap(match: re.Match[str]) -> str:
        name, converter = match["name"], match["converter"] or "default"
        schema: dict[str, Any] = {"type": "string", "minLength": 1}
        if converter == "int":
            schema = {"type": "integer", "minimum": 0}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
        return "{" + name + "}"

    return _ARGUMENT.sub(swap, rule.rule), params


def _error_schema(codes: Iterable[str]) -> dict[str, Any]:
    return {
        "allOf": [
            {"$ref": "#/components/schemas/Error"},
            {"properties": {"error": {"enum": sorted(set(codes))}}},
        ]
    }


class _Builder:
    def __init__(self, app: Quart, settings: Settings, info: Mapping[str, Any]) -> None:
        self.app = app
        self.settings = settings
        self.info = dict(info)
        self.models: dict[str, type[BaseModel]] = {}
        self.refs: dict[tuple[type[BaseModel], str], str] = {}
        self.wanted: list[tuple[type[BaseModel], str]] = []
        # The schemes of SECURITY_SCHEMES that some route names.
        self.schemes: set[str] = set()

    def ref(self, model: type[BaseModel], mode: str) -> dict[str, Any]:
        key = (model, mode)
        if key not in self.wanted:
            self.wanted.append(key)
        return {"$ref": f"__model__:{mode}:{id(model)}"}

    def build(self) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        for rule in sorted(self.app.url_map.iter_rules(), key=lambda r: r.rule):
            view = self.app.view_functions.get(rule.endpoint)
            if view is None or is_hidden(view):
                continue
            op = operation_of(view)
            if op is None:
                continue
            path, params = _path_of(rule)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                entry = self.operation(view, op, method, params)
                if "tags" not in entry and "." in rule.endpoint:
                    # Grouped by blueprint: tokengate_auth.login -> "auth".
                    entry["tags"] = [rule.endpoint.split(".")[0].removeprefix("tokengate_")]
                paths.setdefault(path, {})[method.lower()] = entry
        return self.finish(paths)

    def operation(
        self, view: Callable[..., Any], op: Operation, method: str, params: list[dict[str, Any]]
    ) -> dict[str, Any]:
        doc = (view.__doc__ or "").strip()
        summary, _, description = doc.partition("\n")
        out: dict[str, Any] = {
            "operationId": view.__name__,
            "summary": op.summary or summary.strip() or view.__name__,
        }
        if description.strip():
            out["description"] = description.strip()
        if op.tags:
            out["tags"] = op.tags
        if params:
            out["parameters"] = params
        errors: dict[int, set[str]] = {s: set(c) for s, c in op.errors.items()}
        headers: dict[int, dict[str, Any]] = {s: dict(h) for s, h in op.headers.items()}
        if op.body is not None or op.form is not None:
            content: dict[str, Any] = {}
            if op.body is not None:
                content["application/json"] = {"schema": self.ref(op.body, "validation")}
            if op.form is not None:
                content["application/x-www-form-urlencoded"] = {
                    "schema": self.ref(op.form, "validation")
                }
            out["requestBody"] = {"required": op.body_required, "content": content}
            errors.setdefault(400, set()).add("invalid_request")
            errors.setdefault(413, set()).add("request_too_large")
        requirement = requirement_of(view)
        if requirement is not None:
            schemes: list[dict[str, list[str]]] = []
            if self.settings.use_headers and self.settings.dpop != "required":
                schemes.append({"bearer": list(requirement.scopes)})
            if self.settings.dpop != "off":
                schemes.append({"dpop": list(requirement.scopes)})
            if self.settings.use_cookies:
                schemes.append({"cookie": list(requirement.scopes)})
            if requirement.optional:
                schemes.append({})
            out["security"] = schemes
            errors.setdefault(401, set()).update(GUARD_CODES)
            if self.settings.dpop != "off":
                errors[401].update(DPOP_CODES)
            if requirement.fresh:
                errors[401].add("fresh_login_required")
            if requirement.scopes:
                errors.setdefault(403, set()).add("insufficient_scope")
            if not requirement.api_key:
                errors.setdefault(403, set()).add("api_key_not_allowed")
            if self.settings.rate_limit is not None:
                errors.setdefault(429, set()).add("rate_limited")
            if self.settings.use_cookies and method in UNSAFE_METHODS:
                errors.setdefault(403, set()).add("csrf_failed")
        elif op.security is not None:
            out["security"] = op.security
            self.schemes.update(name for r in op.security for name in r)
        if op.backend:
            errors.setdefault(503, set()).add("auth_unavailable")
        responses: dict[str, Any] = {}
        for status, model in sorted(op.responses.items()):
            entry: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "Success")}
            if model is not None:
                entry["content"] = {
                    "application/json": {"schema": self.ref(model, "serialization")}
                }
            if status in headers:
                entry["headers"] = headers[status]
            responses[str(status)] = entry
        for status, codes in sorted(errors.items()):
            entry = {
                "description": f"{_STATUS_TEXT.get(status, 'Error')}: {', '.join(sorted(codes))}",
                "content": {"application/json": {"schema": _error_schema(codes)}},
            }
            status_headers = dict(headers.get(status, {}))
            if status == 401:
                status_headers.update(_WWW_AUTHENTICATE)
            if status in (429, 503):
                status_headers.update(_RETRY_AFTER)
            if "rate_limited" in codes:
                status_headers.update(_RATE_LIMIT)
            if status_headers:
                entry["headers"] = status_headers
            responses[str(status)] = entry
        out["responses"] = responses
        return out

    def finish(self, paths: dict[str, Any]) -> dict[str, Any]:
        from .api.schemas import ErrorOut

        self.ref(ErrorOut, "serialization")
        keyed = [(model, mode) for model, mode in self.wanted]
        mapping, defs = models_json_schema(
            keyed,  # type: ignore[arg-type]
            ref_template="#/components/schemas/{model}",
        )
        components = defs.get("$defs", {})
        # The contract's name for the error body.
        error_ref = mapping[(ErrorOut, "serialization")]["$ref"]
        error_name = error_ref.rsplit("/", 1)[1]
        components["Error"] = components.pop(error_name)
        components["Error"]["title"] = "Error"
        replacements = {
            f"__model__:{mode}:{id(model)}": mapping[(model, mode)]["$ref"]  # type: ignore[index]
            for model, mode in keyed
        }
        replacements[f"__model__:serialization:{id(ErrorOut)}"] = "#/components/schemas/Error"
        for ref, target in list(replacements.items()):
            if target == error_ref:
                replacements[ref] = "#/components/schemas/Error"
        document: dict[str, Any] = {
            "openapi": OPENAPI_VERSION,
            "info": self.info,
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": self.security_schemes(),
            },
        }
        resolved: dict[str, Any] = _resolve(
            document, replacements, self.settings.password_min_length,
            self.settings.api_key_max_ttl,
        )  # fmt: skip
        return resolved

    def security_schemes(self) -> dict[str, Any]:
        schemes: dict[str, Any] = {}
        if self.settings.use_headers:
            schemes["bearer"] = {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": (
                    "An access token from /auth/login or /auth/refresh, or an API key (tgk_...)."
                ),
            }
        if self.settings.dpop != "off":
            schemes["dpop"] = {
                "type": "http",
                "scheme": "DPoP",
                "bearerFormat": "JWT",
                "description": (
                    "A DPoP-bound access token (RFC 9449): 'Authorization: DPoP <token>' with a "
                    "'DPoP' header holding a fresh proof signed by the key the token is bound to "
                    f"(algorithms: {' '.join(self.settings.dpop_algorithms)})."
                ),
            }
        if self.settings.use_cookies:
            schemes["cookie"] = {
                "type": "apiKey",
                "in": "cookie",
                "name": "access_token",
                "description": (
                    "Cookie mode: the access_token cookie; unsafe methods also send "
                    "X-CSRF-Token with the csrf_token cookie's value."
                ),
            }
        for name in sorted(self.schemes):
            schemes[name] = SECURITY_SCHEMES[name]
        return schemes


def _resolve(node: Any, refs: Mapping[str, str], password_min: int, key_max_ttl: int) -> Any:
    """Swap placeholder refs for component refs; apply the password and key-lifetime policy."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value in refs:
                out[key] = refs[value]
            elif key in (PASSWORD_POLICY, KEY_LIFETIME):
                continue
            else:
                out[key] = _resolve(value, refs, password_min, key_max_ttl)
        if node.get(PASSWORD_POLICY):
            out["minLength"] = password_min
            out["description"] = (
                f"At least {password_min} characters (TOKENGATE_PASSWORD_MIN_LENGTH), "
                "at most 1024; no control characters."
            )
        if node.get(KEY_LIFETIME):
            for option in out.get("anyOf", [out]):
                if option.get("type") == "integer":
                    option["maximum"] = key_max_ttl
        return out
    if isinstance(node, list):
        return [_resolve(v, refs, password_min, key_max_ttl) for v in node]
    return node


def build_document(
    app: Quart, settings: Settings, info: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The OpenAPI document of every documented route of ``app``."""
    return _Builder(app, settings, info or {"title": "tokengate", "version": _version()}).build()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("quart-tokengate")
    except PackageNotFoundError:
        return "0.0.0"
