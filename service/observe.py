"""Per-request observation: the access log line and the request metrics.

Two app hooks: ``start_request`` (the first ``before_request``) notes the
time; ``observe_request`` (the last ``after_request``) writes the access log
line and updates the request counter and latency histogram. The route label
is the URL rule (``/auth/sessions/<session_id>``), never the raw path, so
the number of series stays bounded whatever paths clients send.
"""

from __future__ import annotations

import time

from quart import Response, g, request

from .cookies import request_auth
from .logs import log_access
from .metrics import metrics

UNMATCHED = "<unmatched>"
# Any other method a client invents is counted as OTHER: labels stay bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def start_request() -> None:
    g.tokengate_started = time.perf_counter()


async def observe_request(response: Response) -> Response:
    started: float = getattr(g, "tokengate_started", None) or time.perf_counter()
    rule = request.url_rule
    route = rule.rule if rule is not None else UNMATCHED
    status = response.status_code
    method = request.method if request.method in METHODS else "OTHER"
    m = metrics()
    m.requests.labels(route, method, str(status)).inc()
    m.request_seconds.labels(route, method).observe(time.perf_counter() - started)
    identity = request_auth().identity
    log_access(
        request.method,
        request.path,
        status,
        started,
        request.remote_addr,
        identity.user_id if identity is not None else None,
        identity.session_id if identity is not None else None,
    )
    return response
