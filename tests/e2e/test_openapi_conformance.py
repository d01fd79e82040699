"""Schemathesis against the running service's own ``/openapi.json``.

Every operation is called with generated data, valid and invalid, with a live
access token where the route needs one: no answer may be a ``5xx``, and each
must match the document (status, body schema, content type, required
headers). The number of examples is bounded so the whole run stays well
under a minute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from quart_tokengate.service.testing import PrivateRedis
from tests.support import ServiceProcess, start_service

# Examples per operation and mode; an operation with no input has little to vary,
# and each example that ends the session costs a password login to replace it.
EXAMPLES, FEW_EXAMPLES = 6, 2
USERNAME, PASSWORD = "conformance", "conformance-password"


@pytest.fixture(scope="module")
def conformance_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    redis_server = PrivateRedis()
    redis_server.start()
    workdir: Path = tmp_path_factory.mktemp("conformance")
    # A generous failure limit: generated logins with wrong passwords must not
    # lock the test's own user out.
    service = start_service(workdir, redis_server.url, login_max_failures=1000)
    r = httpx.post(
        service.base_url + "/auth/register", json={"username": USERNAME, "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    yield service
    service.stop()
    redis_server.close()


class Tokens:
    """A live access token, renewed by a new login when a case ended its session."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.token = ""

    def live(self) -> str:
        if self.token:
            me = httpx.get(
                self.base_url + "/auth/me", headers={"Authorization": f"Bearer {self.token}"}
            )
            if me.status_code == 200:
                return self.token
        r = httpx.post(
            self.base_url + "/auth/login", json={"username": USERNAME, "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        self.token = r.json()["access_token"]
        return self.token


@pytest.fixture(scope="module")
def tokens(conformance_service: ServiceProcess) -> Tokens:
    return Tokens(conformance_service.base_url)


@pytest.fixture(scope="module")
def api_schema(conformance_service: ServiceProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(conformance_service.base_url + "/openapi.json")


def exercise(
    operation: Any, mode: GenerationMode, base_url: str, tokens: Tokens
) -> Callable[[], None]:
    """A Hypothesis test of one operation: generated cases, each sent and validated."""
    raw = operation.definition.raw
    secured = bool(raw.get("security"))
    has_input = bool(raw.get("parameters")) or "requestBody" in raw

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES if has_input else FEW_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: schemathesis.Case) -> None:
        headers = {"Authorization": f"Bearer {tokens.live()}"} if secured else {}
        case.call_and_validate(base_url=base_url, headers=headers)

    return call


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_every_answer_matches_the_document(
    api_schema: schemathesis.BaseSchema,
    conformance_service: ServiceProcess,
    tokens: Tokens,
    mode: GenerationMode,
) -> None:
    tested = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        raw = operation.definition.raw
        try:
            exercise(operation, mode, conformance_service.base_url, tokens)()
        except Unsatisfiable:
            # Nothing to make invalid: no parameter and no body (GET /auth/me).
            assert mode is GenerationMode.NEGATIVE
            assert not raw.get("parameters") and "requestBody" not in raw
        tested.append(operation.method.upper() + " " + operation.path)
    # Every documented operation was exercised.
    assert len(tested) >= 12, tested
