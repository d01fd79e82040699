"""The shipped revisions written out in ``db/migrate.py`` are alembic's, and reading a
database's place against them loads no alembic."""

from __future__ import annotations

import itertools
import subprocess
import sys

from alembic.script import ScriptDirectory

from quart_tokengate.service.db.migrate import REVISIONS, alembic_config, head_revisions


def test_revisions_are_the_migrations_alembic_finds_oldest_first():
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    walked = [script.revision for script in scripts.walk_revisions()]  # newest first
    assert tuple(reversed(walked)) == REVISIONS, (
        "a migration was added or removed: write its id into REVISIONS in db/migrate.py"
    )
    assert set(scripts.get_heads()) == head_revisions() == {REVISIONS[-1]}
    # One line of history: each revision follows the one before it.
    for older, newer in itertools.pairwise(REVISIONS):
        assert scripts.get_revision(newer).down_revision == older


def test_the_app_and_its_schema_check_load_no_alembic():
    code = (
        "import sys\n"
        "import quart_tokengate.service.app, quart_tokengate.service.api.health\n"
        "import quart_tokengate.service.admin\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
