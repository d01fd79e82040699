"""The service's log lines: text or one JSON object a line, access log, security events.

Three loggers, all under ``tokengate`` so one logging configuration covers them:

- ``tokengate``: start-up, warnings, errors;
- ``tokengate.access``: one line per request (method, path without the query
  string, status, duration, user and session when known);
- ``tokengate.security``: failed logins, throttling, refresh reuse, sessions
  ended and why, passwords changed or reset.

Structured fields travel on the record as ``record.fields``: the text format
shows them as ``key=value`` after the message, the JSON format as keys of
the object. No caller passes a token, a password or a key: the fields are
names, ids, codes and numbers only.

``serve`` hands :func:`logging_config` to uvicorn, which applies it in every
worker, so uvicorn's own lines come out in the same format.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")

log = logging.getLogger("tokengate")
access_log = logging.getLogger("tokengate.access")
security_log = logging.getLogger("tokengate.security")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields the message itself already says, left out of the text line's pairs.
_IN_MESSAGE = frozenset({"event", "method", "path", "status"})


_PLAIN = re.compile(r"[\w.:/<>@+*(),-]*")


def _value(value: Any) -> str:
    # Quoted and escaped unless plainly safe: a username with a newline or a
    # space cannot forge a line or a field.
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text, ensure_ascii=True)


def _pairs(fields: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={_value(v)}" for k, v in fields.items() if v is not None and k not in _IN_MESSAGE
    )


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line = f"{line} {_pairs(fields)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time``, ``level``, ``logger``, ``message`` and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update({k: v for k, v in fields.items() if v is not None})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def logging_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the service and uvicorn, in ``log_format``."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"tokengate": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "tokengate",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            # uvicorn's own loggers print through the root handler, in our format,
            **{
                name: {"handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi")
            },
            # but for its access log: tokengate.access replaces it (with the user
            # and session, and never the query string, which may carry secrets).
            "uvicorn.access": {"handlers": [], "propagate": False},
            # alembic's per-run chatter (plugins, dialect, each step): `serve` logs
            # the revisions it applied itself, in one line each.
            "alembic": {"level": "WARNING"},
        },
    }


def ensure_output(log_format: str) -> None:
    """Print the service's lines on standard error when no logging is set up.

    ``tokengate serve`` configures logging (:func:`logging_config`). An app
    served another way (``uvicorn app:app``) with no configuration of its
    own would print warnings only, through Python's last-resort handler, and
    the access log and security events would go nowhere. Then the
    ``tokengate`` logger gets a handler of its own, at ``INFO``, in
    ``log_format``. An app that sets up logging before it starts serving (a
    handler on the root logger or on ``tokengate``) keeps its own.
    """
    if logging.getLogger().handlers or log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def security_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one security event (``login_failed``, ``session_ended``...) with its fields."""
    if security_log.isEnabledFor(level):
        security_log.log(level, event, extra={"fields": {"event": event, **fields}})


def log_access(
    method: str,
    path: str,
    status: int,
    started: float,
    remote: str | None,
    user_id: int | None,
    session_id: str | None,
) -> None:
    """The access log line of one request; ``path`` never includes the query string."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    access_log.info(
        "%s %s %s",
        method,
        path,
        status,
        extra={
            "fields": {
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": duration_ms,
                "remote": remote,
                "user_id": user_id,
                "session_id": session_id,
            }
        },
    )
