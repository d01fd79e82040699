"""Sessions: the pair's JWT ``iat`` is called ``iat``, not ``issued_at``.

Times named ``*_at`` are ``datetime`` values (the house style); this column is
the integer ``iat`` claim of the session's current pair, byte for byte.

Revision ID: 3e6b1f9a7d25
Revises: 8d1f3a7c2e90
Create Date: 2026-12-01 19:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op


revision: str = '3e6b1f9a7d25'
down_revision: str | None = '8d1f3a7c2e90'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sessions') as batch_op:
        batch_op.alter_column('issued_at', new_column_name='iat')


def downgrade() -> None:
    with op.batch_alter_table('sessions') as batch_op:
        batch_op.alter_column('iat', new_column_name='issued_at')
