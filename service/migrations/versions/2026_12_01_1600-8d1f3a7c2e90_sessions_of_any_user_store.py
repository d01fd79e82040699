"""Sessions and purpose tokens of users kept anywhere: no foreign key to users.

An application may bring its own user store (TokenGate(app, user_store=...)),
whose users are not rows of tokengate's users table; their sessions still
live here, keyed by the user's id.

Revision ID: 8d1f3a7c2e90
Revises: 5b2e9d0a4c11
Create Date: 2026-12-01 16:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '8d1f3a7c2e90'
down_revision: str | None = '5b2e9d0a4c11'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('sessions', 'purpose_tokens')
# SQLite keeps the initial foreign keys unnamed; batch mode names them by this.
NAMING = {'fk': 'fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s'}


def _user_fk(table: str) -> str | None:
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        return f'fk_{table}_user_id_users'
    for fk in sa.inspect(bind).get_foreign_keys(table):
        if fk['referred_table'] == 'users':
            return fk['name']
    return None


def upgrade() -> None:
    for table in TABLES:
        name = _user_fk(table)
        if name is None:
            continue
        with op.batch_alter_table(table, naming_convention=NAMING) as batch_op:
            batch_op.drop_constraint(name, type_='foreignkey')


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, naming_convention=NAMING) as batch_op:
            batch_op.create_foreign_key(
                f'fk_{table}_user_id_users', 'users', ['user_id'], ['id'], ondelete='CASCADE'
            )
