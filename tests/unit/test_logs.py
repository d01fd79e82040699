"""The log formats, without a server: one line a record, fields that cannot be forged."""

import json
import logging

from quart_tokengate.service.logs import JsonFormatter, TextFormatter, logging_config


def record(message: str, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("tokengate.security", logging.INFO, __file__, 1, message, (), None)
    rec.fields = {"event": message, **fields}
    return rec


def test_text_fields_are_quoted_unless_plain():
    line = TextFormatter().format(record("login_failed", username='eve" ip=6.6.6.6\nX', ip="::1"))
    assert "\n" not in line
    assert line.endswith('login_failed username="eve\\" ip=6.6.6.6\\nX" ip=::1')
    plain = TextFormatter().format(record("login", username="a.b@c+d", user_id=3, gone=None))
    assert plain.endswith("login username=a.b@c+d user_id=3")


def test_json_is_one_object_a_line_with_the_fields():
    rec = record("session_ended", reason="logout", user_id=1, session_id=None)
    out = JsonFormatter().format(rec)
    assert "\n" not in out
    data = json.loads(out)
    assert data["logger"] == "tokengate.security" and data["level"] == "INFO"
    assert data["message"] == "session_ended" and data["event"] == "session_ended"
    assert data["reason"] == "logout" and data["user_id"] == 1 and "session_id" not in data
    assert data["time"].endswith("+00:00")


def test_the_config_sends_uvicorns_lines_through_the_same_formatter():
    config = logging_config("json")
    assert config["formatters"]["tokengate"]["()"].endswith("logs.JsonFormatter")
    assert config["loggers"]["uvicorn.error"]["propagate"] is True
    assert config["loggers"]["uvicorn.access"]["propagate"] is False
    assert logging_config("text")["formatters"]["tokengate"]["()"].endswith("TextFormatter")
