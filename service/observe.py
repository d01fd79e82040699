"""The extension's two app hooks, and what they observe: the access log and request metrics.

``TokenGate`` registers one ``before_request`` and one ``after_request`` hook
on the app. Every route of the app runs them, the host's own unguarded routes
too, so they are kept close to free there: one ``RequestAuth`` per request
(which also holds the start time), one ``g`` access in each hook, one
``request`` lookup, and the metric children of each (route, method, status)
looked up once and kept.

- ``before_request`` notes the time, then runs the guard
  (:func:`guard.guard_view`) for a view marked ``login_required``.
- ``after_request`` hands out re-issued tokens or clears dead cookies
  (:func:`guard.finish_response`) when the guard left anything to do, then
  counts the request, times it and writes the access log line. The route label
  is the URL rule (``/auth/sessions/<session_id>``), never the raw path, so the
  number of series stays bounded whatever paths clients send.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, g, request

from .cookies import STATE_ATTR, RequestAuth
from .guard import finish_response, guard_view, response_work
from .logs import access_log, log_access
from .metrics import metrics

if TYPE_CHECKING:
    from .app import TokenGate

UNMATCHED = "<unmatched>"
# Any other method a client invents is counted as OTHER: labels stay bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestHooks:
    """The ``before_request`` and ``after_request`` hooks of one app."""

    def __init__(self, gate: TokenGate, app: Quart) -> None:
        self.gate = gate
        self.view_functions = app.view_functions

    async def before_request(self) -> None:
        state = RequestAuth(started=time.perf_counter())
        setattr(g, STATE_ATTR, state)
        endpoint = request.endpoint
        view = self.view_functions.get(endpoint) if endpoint else None
        if view is not None:
            await guard_view(self.gate, view, state)

    async def after_request(self, response: Response) -> Response:
        state: RequestAuth | None = g.get(STATE_ATTR)
        if state is not None and response_work(state):
            response = await finish_response(response, self.gate, state)
        req = request._get_current_object()  # type: ignore[attr-defined]
        started = state.started if state is not None else time.perf_counter()
        rule = req.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        method = req.method if req.method in METHODS else "OTHER"
        counter, histogram = request_metrics(route, method, response.status_code)
        counter.inc()
        histogram.observe(time.perf_counter() - started)
        if access_log.isEnabledFor(logging.INFO):
            identity = state.identity if state is not None else None
            log_access(
                req.method,
                req.path,
                response.status_code,
                started,
                req.remote_addr,
                identity.user_id if identity is not None else None,
                identity.session_id if identity is not None else None,
            )
        return response


def request_metrics(route: str, method: str, status: int) -> tuple[Any, Any]:
    """The request counter's and the latency histogram's children for these labels.

    ``labels()`` converts, validates and takes a lock on every call; the
    children of each label set are kept instead (a bounded set: rules,
    methods, statuses).
    """
    m = metrics()
    key = (route, method, status)
    children = m.request_children.get(key)
    if children is None:
        children = (
            m.requests.labels(route, method, str(status)),
            m.request_seconds.labels(route, method),
        )
        m.request_children[key] = children
    return children
