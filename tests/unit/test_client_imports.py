"""The client stands alone: importing it loads nothing of the server."""

import subprocess
import sys

SERVER_PACKAGES = ("quart", "quart_schema", "sqlalchemy", "redis", "alembic", "asyncpg")


def test_importing_the_client_loads_no_server_package():
    probe = (
        "import sys, quart_tokengate.client, quart_tokengate.client.__main__\n"
        f"server = {SERVER_PACKAGES!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in server))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert r.stdout.strip() == "[]"
