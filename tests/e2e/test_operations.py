"""Operating the real service: its log, /metrics, the home page, 204s, the embedded Redis."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import SECRET, ServiceProcess, service_env, wait_for

from .session_helpers import PASSWORD, TIMEOUT, login

NEW_PASSWORD = "battery staple"
RESET_PASSWORD = "purple monkey dishwasher"


def post(base: str, path: str, body: dict[str, Any] | None = None, token: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(base + path, json=body, headers=headers, timeout=10)


@pytest.fixture
def http_for() -> Iterator[Callable[[str], httpx.Client]]:
    """``http_for(base_url)``: an ``httpx.Client`` on that service, closed after the test."""
    with contextlib.ExitStack() as clients:
        yield lambda base: clients.enter_context(httpx.Client(base_url=base, timeout=TIMEOUT))


def log_lines(service: ServiceProcess) -> list[str]:
    return service.log.read_text().splitlines()


def test_the_json_log_has_start_access_and_security_lines_and_no_secret(service_factory, http_for):
    service = service_factory(
        log_format="json", refresh_grace=0, login_max_failures=2, token_location="headers"
    )
    base = service.base_url
    http = http_for(base)
    assert post(base, "/auth/register", {"username": "alice", "password": PASSWORD}).status_code
    secrets = [SECRET, PASSWORD, NEW_PASSWORD, RESET_PASSWORD, "wrong-password-xyz"]

    assert post(base, "/auth/login", {"username": "alice", "password": "wrong-password-xyz"})
    first = login(http, "alice")
    me = httpx.get(
        base + "/auth/me?access_token=query-secret-xyz",
        headers={"Authorization": f"Bearer {first['access_token']}"},
    )
    assert me.status_code == 200
    secrets.append("query-secret-xyz")
    second = post(base, "/auth/refresh", {"refresh_token": first["refresh_token"]}).json()
    reused = post(base, "/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert reused.json()["error"] == "refresh_reused"
    third = login(http, "alice")
    assert post(base, "/auth/logout", token=third["access_token"]).status_code == 204
    fourth = login(http, "alice")
    changed = post(
        base,
        "/auth/password",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        token=fourth["access_token"],
    )
    assert changed.status_code == 204
    assert post(base, "/auth/password-reset/request", {"username": "alice"}).status_code == 202
    outbox = service.workdir / "instance" / "outbox"
    # The message is written in the background, after the answer.
    wait_for(lambda: list(outbox.glob("*.json")), what="the reset message")
    (message,) = [json.loads(p.read_text()) for p in outbox.glob("*.json")]
    reset = post(
        base,
        "/auth/password-reset/confirm",
        {"token": message["token"], "new_password": RESET_PASSWORD},
    )
    assert reset.status_code == 204
    for _ in range(3):  # past TOKENGATE_LOGIN_MAX_FAILURES=2: throttled
        post(base, "/auth/login", {"username": "alice", "password": "wrong-password-xyz"})
    for pair in (first, second, third, fourth):
        secrets += [pair["access_token"], pair["refresh_token"]]
    secrets.append(message["token"])

    service.stop()  # every line written, uvicorn's shutdown lines too
    lines = log_lines(service)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"].startswith("uvicorn") for r in records)

    (start,) = [r for r in records if r.get("address")]
    assert start["address"] == base
    assert start["workers"] == 1 and start["token_location"] == "headers"
    assert start["redis"].startswith("redis://") and start["signing_key"] == "TOKENGATE_SECRET_KEY"

    access = [r for r in records if r["logger"] == "tokengate.access"]
    me_line = next(r for r in access if r["path"] == "/auth/me")
    assert me_line["method"] == "GET" and me_line["status"] == 200
    assert me_line["duration_ms"] >= 0
    assert me_line["user_id"] == 1 and me_line["session_id"] == first["session_id"]
    assert [r["status"] for r in access if r["path"] == "/auth/refresh"] == [200, 401]
    assert any(r["path"] == "/auth/logout" and r["status"] == 204 for r in access)

    events = [r for r in records if r["logger"] == "tokengate.security"]
    by_event: dict[str, list[dict[str, Any]]] = {}
    for r in events:
        by_event.setdefault(r["event"], []).append(r)
    assert by_event["login_failed"][0]["username"] == "alice"
    assert by_event["login_throttled"][0]["retry_after"] >= 1
    assert by_event["refresh_reused"][0]["session_id"] == first["session_id"]
    reasons = {r["reason"] for r in by_event["session_ended"]}
    assert {"refresh_reused", "logout", "password_changed", "password_reset"} <= reasons
    assert by_event["password_changed"][0]["session_id"] == fourth["session_id"]
    assert by_event["password_reset"][0]["user_id"] == "1"

    text = service.log.read_text()
    for secret in secrets:
        assert secret not in text


def test_the_text_log_is_one_line_a_record_with_key_value_fields(service_factory):
    service = service_factory()
    base = service.base_url
    post(base, "/auth/login", {"username": "bob", "password": "nope-nope"})
    httpx.get(base + "/?next=secret-in-query")
    service.stop()
    lines = log_lines(service)
    assert not any(line.startswith("{") for line in lines)
    (start,) = [line for line in lines if "tokengate serving on" in line]
    assert f"address={base}" in start and "workers=1" in start
    assert any(" tokengate.access: GET / 200 duration_ms=" in line for line in lines)
    (failed,) = [line for line in lines if "login_failed" in line]
    assert failed.endswith(" INFO tokengate.security: login_failed username=bob ip=127.0.0.1")
    assert "secret-in-query" not in service.log.read_text()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(base + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_add_up_across_two_workers(service_factory, http_for):
    prometheus = Path("instance") / "prometheus"
    service = service_factory(workers=2, refresh_grace=0)
    base = service.base_url
    assert (service.workdir / prometheus).is_dir()
    post(base, "/auth/register", {"username": "alice", "password": PASSWORD})
    post(base, "/auth/login", {"username": "alice", "password": "wrong-password"})
    pair = login(http_for(base), "alice")
    for _ in range(12):  # a new connection each: the workers share them out
        r = httpx.get(
            base + "/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"}
        )
        assert r.status_code == 200
        assert httpx.get(base + "/auth/me").status_code == 401
    post(base, "/auth/refresh", {"refresh_token": pair["refresh_token"]})
    post(base, "/auth/refresh", {"refresh_token": pair["refresh_token"]})

    scrapes = [scrape(base) for _ in range(4)]
    for samples in scrapes:
        me = "/auth/me"
        assert (
            value(samples, "tokengate_requests_total", route=me, method="GET", status="200") == 12
        )
        assert (
            value(samples, "tokengate_requests_total", route=me, method="GET", status="401") == 12
        )
        assert (
            value(samples, "tokengate_request_duration_seconds_count", route=me, method="GET") == 24
        )
        assert value(samples, "tokengate_guard_total", outcome="ok") == 12
        assert value(samples, "tokengate_guard_total", outcome="missing_token") == 12
        assert value(samples, "tokengate_logins_total", outcome="ok") == 1
        assert value(samples, "tokengate_logins_total", outcome="invalid_credentials") == 1
        assert value(samples, "tokengate_refreshes_total", outcome="ok") == 1
        assert value(samples, "tokengate_refreshes_total", outcome="refresh_reused") == 1
        assert value(samples, "tokengate_refresh_reuse_total") == 1
        assert value(samples, "tokengate_redis_roundtrip_seconds_count") >= 12
    # Each worker writes its own file, and every scrape adds them all up.
    files = service.workdir / prometheus
    wait_for(lambda: httpx.get(base + "/healthz") and len(list(files.glob("counter_*.db"))) == 2)


def test_metrics_count_redis_errors_and_a_restart_starts_from_zero(
    private_redis, tmp_path, http_for
):
    redis = private_redis
    env = service_env(tmp_path, redis.url)
    stale = tmp_path / "instance" / "prometheus" / "counter_999999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier run")
    service = ServiceProcess(env, tmp_path)
    try:
        service.start()
        assert not stale.exists()  # cleaned at start
        post(service.base_url, "/auth/register", {"username": "alice", "password": PASSWORD})
        pair = login(http_for(service.base_url), "alice")
        redis.stop()
        r = httpx.get(
            service.base_url + "/auth/me",
            headers={"Authorization": f"Bearer {pair['access_token']}"},
        )
        assert r.status_code == 503
        samples = scrape(service.base_url)
        assert value(samples, "tokengate_backend_errors_total", backend="redis") >= 1
        assert value(samples, "tokengate_guard_total", outcome="auth_unavailable") == 1
    finally:
        service.stop()


def test_the_home_page_and_a_204_without_content_type(service, http_for):
    r = httpx.get(service.base_url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'href="/account"' in r.text and 'href="/docs"' in r.text
    assert "0." in r.text  # the version
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    post(service.base_url, "/auth/register", {"username": "alice", "password": PASSWORD})
    pair = login(http_for(service.base_url), "alice")
    r = post(service.base_url, "/auth/logout", token=pair["access_token"])
    assert r.status_code == 204
    assert "content-type" not in r.headers and "content-length" not in r.headers
    assert r.content == b""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


def test_the_embedded_redis_left_by_a_killed_service_is_stopped(tmp_path):
    env = {"TOKENGATE_SECRET_KEY": SECRET}  # no TOKENGATE_REDIS_URL: the embedded server
    redis_dir = tmp_path / "instance" / "redis"
    first = ServiceProcess(env, tmp_path)
    first.start()
    orphan = int((redis_dir / "redis.pid").read_text())
    second = None
    try:
        assert _alive(orphan)
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGKILL)  # the service alone, not its group
        first.process.wait()
        first.process = None
        assert _alive(orphan)  # what kill -9 leaves behind

        second = ServiceProcess(env, tmp_path)
        second.start()
        wait_for(lambda: not _alive(orphan))
        fresh = int((redis_dir / "redis.pid").read_text())
        assert fresh != orphan and _alive(fresh)
        assert "left running by a dead service" in second.log.read_text()
        second.stop()
        second = None
        assert not _alive(fresh)
        assert not (redis_dir / "redis.pid").exists()
    finally:
        if second is not None:
            second.stop()
        if _alive(orphan):
            os.kill(orphan, signal.SIGKILL)
