"""Accounts: disabled flag and scopes; signing keys kept in the database.

Revision ID: 5b2e9d0a4c11
Revises: c7f4af665137
Create Date: 2026-12-01 15:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '5b2e9d0a4c11'
down_revision: str | None = 'c7f4af665137'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('disabled', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('scopes', sa.String(length=1000), server_default='', nullable=False))

    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('algorithm', sa.String(length=16), nullable=False),
    sa.Column('secret', sa.Text(), nullable=False),
    sa.Column('public_key', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('kid')
    )


def downgrade() -> None:
    op.drop_table('signing_keys')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('scopes')
        batch_op.drop_column('disabled')
